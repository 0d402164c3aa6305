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
 *    480 bytes allocated for ever).
 *  - Started from a thread pinned to one CPU with SCHED_BATCH, the purger
 *    runs with SCHED_OTHER on every CPU the process had at start (v2: the
 *    starting thread's policy and CPU).
 *  - A huge buffer freed and taken again every ~60 ms while the arenas are
 *    idle stays in the huge cache: its pages are still resident at each
 *    malloc in at least 15 of 19 rounds (v2 emptied the whole cache at every
 *    tick once the arenas had been idle half a second: 8 hits in 19). */
#include <dirent.h>
#include <pthread.h>
#include <sched.h>
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

/* ---- the purger's scheduling and CPUs ---- */
/* The kernel id of the thread named `name`, or 0. */
static long thread_named(const char *name) {
  DIR *d = opendir("/proc/self/task");
  long found = 0;
  for (struct dirent *e; d && !found && (e = readdir(d));) {
    char path[300], comm[64];
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    if (read_proc(path, comm, sizeof comm) && !strncmp(comm, name, strlen(name))) found = atol(e->d_name);
  }
  if (d) closedir(d);
  return found;
}

static cpu_set_t start_cpus;
static atomic_int starter_done;

static void *pinned_starter(void *arg) {
  (void)arg;
  cpu_set_t one;
  CPU_ZERO(&one);
  for (int c = 0; c < CPU_SETSIZE; c++)
    if (CPU_ISSET(c, &start_cpus)) {
      CPU_SET(c, &one);
      break;
    }
  struct sched_param p = {0};
  int a = sched_setaffinity(0, sizeof one, &one), b = pthread_setschedparam(pthread_self(), SCHED_BATCH, &p);
  CHECK(a == 0 && b == 0, "pinning the starting thread: affinity %d, SCHED_BATCH %d", a, b);
  CHECK(kick_until_running(2.0, 20), "the purger did not start"); /* from this thread */
  atomic_store(&starter_done, 1);
  return NULL;
}

static void test_purger_scheduling(void) {
  CHECK(sched_getaffinity(0, sizeof start_cpus, &start_cpus) == 0);
  trimalloc_option_set("background", 0); /* stopped and gone: the next start is the pinned thread's */
  trimalloc_option_set("background", 1);
  CHECK(stats_now().background == 0, "the purger runs with background just set back to 1");
  pthread_t t;
  pthread_create(&t, NULL, pinned_starter, NULL);
  pthread_join(t, NULL);
  long tid = 0;
  for (double t0 = now_s(); !tid && now_s() - t0 < 2.0; usleep(10 * 1000)) {
    trimalloc_free(trimalloc_malloc(16 * MiB)); /* keeps it busy (it leaves when idle) */
    tid = thread_named("trimalloc-purge");
  }
  if (!CHECK(tid, "no thread named trimalloc-purge")) return;
  cpu_set_t got;
  CPU_ZERO(&got);
  int policy = (int)syscall(SYS_sched_getscheduler, tid); /* musl's sched_getscheduler is ENOSYS */
  CHECK(sched_getaffinity((pid_t)tid, sizeof got, &got) == 0);
  CHECK(policy == SCHED_OTHER, "the purger's policy is %d (SCHED_OTHER %d, the starter's SCHED_BATCH %d)", policy,
        SCHED_OTHER, SCHED_BATCH);
  CHECK(CPU_EQUAL(&got, &start_cpus), "the purger may run on %d CPUs, the process on %d", CPU_COUNT(&got),
        CPU_COUNT(&start_cpus));
  trimalloc_trim();
}

int main(void) {
  RUN(test_failed_start_retried); /* first: the purger has not run yet */
  RUN(test_exit_flush_starts_purger);
  RUN(test_huge_cache_by_age);
  RUN(test_purger_scheduling);
  return check_summary();
}
