/* Transfer caches: the batches a thread cache flushes wait in a stack per
 * arena and class (256 KiB of blocks), which grows past its inline slots into
 * a mapping of its own.
 *  - 20,000 blocks of 16 B freed in a row fill the stack with hundreds of
 *    batches: the heap stays valid (trimalloc_check walks every batch), the
 *    next 20,000 mallocs hand out the same blocks (no new memory) with their
 *    contents intact until written, and a trim leaves nothing free and
 *    resident (dirty 0: the batches went back to their slabs and were
 *    purged).
 *  - Two threads pass batches through the stacks: one frees what the other
 *    allocated, round after round, the other allocates again; every block is
 *    stamped and checked, none is handed out twice. */
#include <pthread.h>
#include <sys/mman.h>

#include "check.h"

#define U(x) ((unsigned long long)(x))
enum { N = 20000 };

static int cmp_ptr(const void *a, const void *b) {
  uintptr_t x = (uintptr_t)*(void *const *)a, y = (uintptr_t)*(void *const *)b;
  return x < y ? -1 : x > y;
}

static void test_stack_grows_and_drains(void) {
  static void *first[N], *second[N];
  trimalloc_trim();
  trimalloc_stats_t s0 = stats_now();
  for (int i = 0; i < N; i++) {
    first[i] = trimalloc_malloc(16);
    memset(first[i], (int)(i & 0xff), 16);
  }
  for (int i = 0; i < N; i++) trimalloc_free(first[i]);
  CHECK(trimalloc_check(), "heap invariants with %d blocks of 16 B in transfer batches", N);
  trimalloc_stats_t s1 = stats_now();
  for (int i = 0; i < N; i++) second[i] = trimalloc_malloc(16);
  trimalloc_stats_t s2 = stats_now();
  CHECK(s2.resident <= s1.resident, "resident grew %llu -> %llu KiB: the freed blocks were not reused",
        U(s1.resident / KiB), U(s2.resident / KiB));
  qsort(first, N, sizeof first[0], cmp_ptr);
  int fresh = 0, twice = 0;
  qsort(second, N, sizeof second[0], cmp_ptr);
  for (int i = 0; i < N; i++) {
    if (!bsearch(&second[i], first, N, sizeof first[0], cmp_ptr)) fresh++;
    if (i && second[i] == second[i - 1]) twice++;
  }
  CHECK(twice == 0, "%d blocks handed out twice", twice);
  CHECK(fresh <= N / 50, "%d of %d blocks were not among those just freed", fresh, N);
  for (int i = 0; i < N; i++) trimalloc_free(second[i]);
  trimalloc_trim();
  trimalloc_stats_t s3 = stats_now();
  CHECK(s3.dirty == 0, "%llu bytes free and resident after a trim", U(s3.dirty));
  CHECK(s3.allocated <= s0.allocated, "allocated %llu -> %llu bytes", U(s0.allocated), U(s3.allocated));
  CHECK(trimalloc_check(), "heap invariants after the trim");
}

/* Round r: the allocator thread fills `blocks` and stamps them, the freeing
 * thread checks and frees them all. */
typedef struct {
  pthread_mutex_t lock;
  pthread_cond_t cv;
  int round, done; /* round: filled by the allocator; done: freed by the other */
  void *blocks[N];
  int bad;
} relay_t;

static void stamp(void *p, size_t n) {
  uint64_t v = (uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ull;
  memcpy(p, &v, 8);
  memcpy((uint8_t *)p + n - 8, &v, 8);
}
static int stamped(const void *p, size_t n) {
  uint64_t v = (uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ull, a, b;
  memcpy(&a, p, 8);
  memcpy(&b, (const uint8_t *)p + n - 8, 8);
  return a == v && b == v;
}
static size_t size_of(int i) {
  return 16 + (size_t)(i % 8) * 48; /* 16-352 B: several classes */
}

#define ROUNDS (test_slow() ? 6 : 20)

static void *allocator_main(void *arg) {
  relay_t *r = arg;
  for (int round = 1; round <= ROUNDS; round++) {
    pthread_mutex_lock(&r->lock);
    while (r->done != round - 1) pthread_cond_wait(&r->cv, &r->lock);
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < N; i++) {
      r->blocks[i] = trimalloc_malloc(size_of(i));
      stamp(r->blocks[i], size_of(i));
    }
    pthread_mutex_lock(&r->lock);
    r->round = round;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->lock);
  }
  return NULL;
}

static void *freer_main(void *arg) {
  relay_t *r = arg;
  for (int round = 1; round <= ROUNDS; round++) {
    pthread_mutex_lock(&r->lock);
    while (r->round != round) pthread_cond_wait(&r->cv, &r->lock);
    pthread_mutex_unlock(&r->lock);
    for (int i = 0; i < N; i++) {
      if (!stamped(r->blocks[i], size_of(i))) r->bad++;
      trimalloc_free(r->blocks[i]);
    }
    pthread_mutex_lock(&r->lock);
    r->done = round;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->lock);
  }
  return NULL;
}

static void test_batches_between_threads(void) {
  static relay_t r = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0, 0, {0}, 0};
  pthread_t a, f;
  CHECK(pthread_create(&a, NULL, allocator_main, &r) == 0, "pthread_create");
  CHECK(pthread_create(&f, NULL, freer_main, &r) == 0, "pthread_create");
  pthread_join(a, NULL);
  pthread_join(f, NULL);
  CHECK(r.bad == 0, "%d blocks lost their stamp between the threads", r.bad);
  CHECK(trimalloc_check(), "heap invariants after %d rounds", ROUNDS);
  trimalloc_trim();
}

/* Memory one phase frees serves the next, whatever its sizes: 64 MiB of
 * 64 B-2 KiB blocks freed, then 64 MiB of 2.5-4 KiB allocated, peaks at
 * most 16 MiB above the first phase (76 MiB against 70 here). Transfer
 * caches of 4 MiB a bin and 32 MiB an arena (tried in session 21, with no
 * rule giving them back as the arena grows) held the first phase's blocks
 * until the purger drained them: 105 MiB. The purger is kept out. */
static void test_phase_change_gives_back(void) {
  enum { MAX = 1 << 20 };
  void **p = mmap(NULL, MAX * sizeof *p, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) abort();
  long long bg = option_swap("background", 0), delay = option_swap("purge_delay_ms", 60000);
  trimalloc_trim();
  uint64_t r = 1;
  size_t n = 0, bytes = 0;
  while (bytes < (64u << 20)) {
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    size_t sz = 64 + (size_t)((r >> 33) % 31) * 64;
    p[n] = trimalloc_malloc(sz);
    memset(p[n++], 1, sz);
    bytes += sz;
  }
  trimalloc_stats_t s1 = stats_now();
  for (size_t i = 0; i < n; i++) trimalloc_free(p[i]);
  n = bytes = 0;
  while (bytes < (64u << 20)) {
    r = r * 6364136223846793005ull + 1442695040888963407ull;
    size_t sz = 2500 + (size_t)((r >> 33) % 1500);
    p[n] = trimalloc_malloc(sz);
    memset(p[n++], 2, sz);
    bytes += sz;
  }
  trimalloc_stats_t s2 = stats_now();
  fprintf(stdout, "   resident %llu KiB after the first phase, %llu after the second\n", U(s1.resident / KiB),
          U(s2.resident / KiB));
  CHECK(s2.resident <= s1.resident + 16 * MiB, "the second phase grew resident %llu -> %llu KiB: the first "
        "phase's blocks stayed in the transfer caches", U(s1.resident / KiB), U(s2.resident / KiB));
  for (size_t i = 0; i < n; i++) trimalloc_free(p[i]);
  trimalloc_trim();
  munmap(p, MAX * sizeof *p);
  option_swap("background", bg);
  option_swap("purge_delay_ms", delay);
}

int main(void) {
  RUN(test_stack_grows_and_drains);
  RUN(test_batches_between_threads);
  RUN(test_phase_change_gives_back);
  return check_summary();
}
