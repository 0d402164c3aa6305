/* The background purger: what it keeps, when it starts, the thread it runs on.
 * The program is linked with -Wl,--wrap=pthread_create (Makefile), so a test
 * can make the purger's thread start fail, or allocate on the starting thread
 * as glibc's pthread_create does when the library is preloaded.
 *  - A failed start is tried again: the purger runs within 4 s once threads
 *    can start again, and is not retried at every free meanwhile (one try in
 *    0.5 s of frees that each kick it). v2 never started it again.
 *  - A thread whose exit flush starts the purger, the start allocating 8
 *    blocks on that thread and freeing them, leaves no cache and no block
 *    behind: allocated and heaps as before it (v2 refilled the dying cache:
 *    384 bytes allocated for ever).
 *  - A huge buffer freed and taken again every ~60 ms while the arenas are
 *    idle stays in the huge cache: its pages are still resident at each
 *    malloc in at least 15 of 19 rounds (v2 emptied the whole cache at every
 *    tick once the arenas had been idle half a second: 8 hits in 19). */
#include <pthread.h>
#include <sys/mman.h>
#include <sys/syscall.h>

#include "check.h"

#define U(x) ((unsigned long long)(x))

/* ---- pthread_create, wrapped ---- */
int __real_pthread_create(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg);
static atomic_int create_fail, create_calls;
static atomic_long inject_tid; /* this thread's starts allocate first */

int __wrap_pthread_create(pthread_t *t, const pthread_attr_t *attr, void *(*fn)(void *), void *arg) {
  atomic_fetch_add(&create_calls, 1);
  if (atomic_load(&create_fail)) return EAGAIN;
  if (atomic_load(&inject_tid) == (long)syscall(SYS_gettid)) {
    void *p[8];
    for (int i = 0; i < 8; i++) p[i] = trimalloc_malloc(48);
    for (int i = 0; i < 8; i++) trimalloc_free(p[i]);
  }
  return __real_pthread_create(t, attr, fn, arg);
}

/* Frees a huge block (it waits in the huge cache: 16 MiB left to purge, so
 * the free kicks the purger) every `gap_ms` for `seconds` or until the
 * purger runs; true if it ran. */
static bool kick_until_running(double seconds, unsigned gap_ms) {
  for (double t0 = now_s(); now_s() - t0 < seconds; usleep(gap_ms * 1000)) {
    trimalloc_free(trimalloc_malloc(16 * MiB));
    if (stats_now().background) return true;
  }
  return false;
}

/* ---- a failed start is tried again later ---- */
static void test_failed_start_retried(void) {
  CHECK(stats_now().background == 0, "the purger runs before the test");
  atomic_store(&create_fail, 1);
  int calls0 = atomic_load(&create_calls);
  kick_until_running(0.5, 20);
  int tries = atomic_load(&create_calls) - calls0;
  CHECK(tries == 1, "%d thread starts tried in 0.5 s of frees, the first one failed", tries);
  atomic_store(&create_fail, 0);
  CHECK(kick_until_running(4.0, 50), "no purger within 4 s of a failed start, threads starting again");
  trimalloc_trim();
}

/* ---- the exit flush starts the purger ---- */
static void *exit_flush_thread(void *arg) {
  (void)arg;
  void *p[2];
  for (int i = 0; i < 2; i++) p[i] = trimalloc_malloc(32 * KiB); /* cached at free, no flush before exit */
  for (int i = 0; i < 2; i++) trimalloc_free(p[i]);
  atomic_store(&inject_tid, (long)syscall(SYS_gettid)); /* the start from its exit flush allocates here */
  return NULL;
}

static void test_exit_flush_starts_purger(void) {
  long long delay = 0;
  trimalloc_option_get("purge_delay_ms", &delay);
  trimalloc_option_set("background", 0); /* stopped: the thread's exit flush starts it */
  trimalloc_option_set("purge_delay_ms", 60000);
  trimalloc_free(trimalloc_malloc(16 * MiB)); /* 16 MiB left to purge */
  trimalloc_stats_t s0 = stats_now();
  trimalloc_option_set("background", 1);
  pthread_t t;
  int calls0 = atomic_load(&create_calls);
  pthread_create(&t, NULL, exit_flush_thread, NULL);
  pthread_join(t, NULL);
  atomic_store(&inject_tid, 0);
  CHECK(atomic_load(&create_calls) - calls0 == 2, "thread starts: %d (the test's and the purger's)",
        atomic_load(&create_calls) - calls0);
  trimalloc_stats_t s = stats_now();
  CHECK(s.allocated == s0.allocated, "allocated %llu after the thread, %llu before", U(s.allocated),
        U(s0.allocated));
  CHECK(s.heaps == s0.heaps, "%llu thread caches after the thread, %llu before", U(s.heaps), U(s0.heaps));
  trimalloc_option_set("purge_delay_ms", delay);
  trimalloc_trim();
}

/* Is the OS page holding p resident? */
static bool resident(const void *p) {
  size_t ps = page_size();
  unsigned char v = 0;
  void *a = (void *)((uintptr_t)p & ~(uintptr_t)(ps - 1));
  return mincore(a, ps, &v) == 0 && (v & 1);
}

/* ---- the huge cache keeps a buffer in use ---- */
static void test_huge_cache_by_age(void) {
  enum { ROUNDS = 20 };
  size_t n = 16 * MiB;
  int hits = 0;
  trimalloc_free(trimalloc_malloc(64)); /* an arena exists, and stays idle */
  for (int r = 0; r < ROUNDS; r++) {
    uint8_t *p = trimalloc_malloc(n);
    if (!CHECK(p, "malloc(16 MiB) round %d", r)) return;
    if (r > 0 && resident(p + n / 2)) hits++;
    memset(p, r, n);
    trimalloc_free(p); /* a huge free: no arena activity */
    usleep(60 * 1000);
  }
  printf("   resident at malloc in %d of %d rounds\n", hits, ROUNDS - 1);
  CHECK(hits >= ROUNDS - 5, "a 16 MiB buffer freed and taken again every ~60 ms came back resident %d times in %d",
        hits, ROUNDS - 1);
  trimalloc_trim();
}

int main(void) {
  RUN(test_failed_start_retried); /* first: the purger has not run yet */
  RUN(test_exit_flush_starts_purger);
  RUN(test_huge_cache_by_age);
  return check_summary();
}
