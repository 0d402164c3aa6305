/* fork in a multithreaded process: while other threads allocate, free and
 * trim, the process forks again and again; each child must find a working
 * allocator (it allocates, frees blocks of threads that do not exist in it,
 * starts a thread, exits 0). A child that deadlocks is killed by its alarm. */
#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#include "check.h"

enum { WORKERS = 3, FORKS = 50, STABLE = 2000 };

static atomic_int stop;
static atomic_long worker_bad, worker_steps;
static uint8_t *stable[STABLE]; /* owned by worker 0, live during the forks */
static size_t stable_n[STABLE];
static pthread_barrier_t ready;

static void *worker(void *arg) {
  long id = (long)arg;
  uint64_t rng = 77 + (uint64_t)id * 1000003;
  if (id == 0)
    for (int i = 0; i < STABLE; i++) {
      stable_n[i] = rng_size(&rng) % (64 * KiB) + 1;
      stable[i] = trimalloc_malloc(stable_n[i]);
      pattern_fill(stable[i], stable_n[i], pattern_seed(stable[i], stable_n[i]));
    }
  pthread_barrier_wait(&ready);
  uint8_t *slot[128] = {0};
  size_t slot_n[128] = {0};
  long steps = 0;
  while (!atomic_load(&stop)) {
    unsigned i = (unsigned)(rng_next(&rng) % 128);
    if (slot[i]) {
      if (!pattern_ok(slot[i], slot_n[i], pattern_seed(slot[i], slot_n[i]))) atomic_fetch_add(&worker_bad, 1);
      trimalloc_free(slot[i]);
      slot[i] = NULL;
    } else {
      slot_n[i] = rng_size(&rng);
      if (slot_n[i] > 64 * KiB && rng_next(&rng) % 4) slot_n[i] %= 64 * KiB;
      slot[i] = trimalloc_malloc(slot_n[i]);
      if (slot[i]) pattern_fill(slot[i], slot_n[i], pattern_seed(slot[i], slot_n[i]));
    }
    if (id == 2 && steps % 500 == 0) trimalloc_trim();
    if (id == 1 && steps % 500 == 0) (void)stats_now();
    steps++;
  }
  for (int i = 0; i < 128; i++) trimalloc_free(slot[i]);
  if (!heap_valid()) atomic_fetch_add(&worker_bad, 1);
  atomic_fetch_add(&worker_steps, steps);
  return NULL;
}

static void *child_thread(void *arg) {
  uint8_t **blocks = arg;
  int bad = 0;
  for (int i = 0; i < 64; i++) {
    if (!pattern_ok(blocks[i], 100 + (size_t)i * 37, pattern_seed(blocks[i], 100 + (size_t)i * 37))) bad++;
    trimalloc_free(blocks[i]); /* blocks of the child's main thread */
  }
  for (int i = 0; i < 20000; i++) {
    size_t n = (size_t)(i % 300) * 7 + 1;
    uint8_t *p = trimalloc_malloc(n);
    if (!p) return (void *)1;
    pattern_fill(p, n, 3);
    if (!pattern_ok(p, n, 3)) bad++;
    trimalloc_free(p);
  }
  return (void *)(intptr_t)bad;
}

/* The child's whole life. Exit codes say what went wrong. */
static void child_main(int nested) {
  alarm(20);
  /* Blocks of a thread that does not exist here: contents intact, freeable. */
  for (int i = 0; i < STABLE; i++)
    if (!pattern_ok(stable[i], stable_n[i], pattern_seed(stable[i], stable_n[i]))) _exit(10);
  for (int i = 0; i < STABLE; i++) trimalloc_free(stable[i]);
  uint8_t *blocks[64];
  for (int i = 0; i < 64; i++) {
    size_t n = 100 + (size_t)i * 37;
    blocks[i] = trimalloc_malloc(n);
    if (!blocks[i]) _exit(11);
    pattern_fill(blocks[i], n, pattern_seed(blocks[i], n));
  }
  uint8_t *huge = trimalloc_malloc(5 * MiB);
  if (!huge) _exit(12);
  memset(huge, 0x11, 5 * MiB);
  pthread_t t;
  if (pthread_create(&t, NULL, child_thread, blocks) != 0) _exit(13);
  void *res = (void *)1;
  pthread_join(t, &res);
  if (res != NULL) _exit(14);
  trimalloc_free(huge);
  trimalloc_trim();
  trimalloc_stats_t s = stats_now();
  if (s.version != TRIMALLOC_STATS_VERSION) _exit(15);
  if (!heap_valid()) _exit(17);
  if (nested) {
    pid_t g = fork();
    if (g == 0) {
      void *p = trimalloc_malloc(1000);
      _exit(p ? 0 : 1);
    }
    int st = 0;
    if (g < 0 || waitpid(g, &st, 0) != g || !WIFEXITED(st) || WEXITSTATUS(st) != 0) _exit(16);
  }
  exit(0);
}

static const char *describe(int st) {
  static char buf[64];
  if (WIFEXITED(st))
    snprintf(buf, sizeof buf, "exit %d", WEXITSTATUS(st));
  else if (WIFSIGNALED(st) && WTERMSIG(st) == SIGALRM)
    snprintf(buf, sizeof buf, "hung (killed by its alarm)");
  else if (WIFSIGNALED(st))
    snprintf(buf, sizeof buf, "signal %d", WTERMSIG(st));
  else
    snprintf(buf, sizeof buf, "status %d", st);
  return buf;
}

static int fork_and_wait(int nested, char *why, size_t whylen) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid < 0) {
    snprintf(why, whylen, "fork failed: %s", strerror(errno));
    return 0;
  }
  if (pid == 0) child_main(nested);
  int st = 0;
  if (waitpid(pid, &st, 0) != pid) {
    snprintf(why, whylen, "waitpid failed");
    return 0;
  }
  if (WIFEXITED(st) && WEXITSTATUS(st) == 0) return 1;
  snprintf(why, whylen, "%s", describe(st));
  return 0;
}

typedef struct {
  int ok;
  char why[128];
} fork_result_t;

static void *forking_thread(void *arg) {
  fork_result_t *r = arg;
  r->ok = fork_and_wait(0, r->why, sizeof r->why);
  return NULL;
}

static void test_fork_while_threads_allocate(void) {
  pthread_barrier_init(&ready, NULL, WORKERS + 1);
  pthread_t w[WORKERS];
  for (long i = 0; i < WORKERS; i++) pthread_create(&w[i], NULL, worker, (void *)i);
  pthread_barrier_wait(&ready);
  int failed = 0;
  char first[160] = "";
  for (int i = 0; i < FORKS; i++) {
    char why[128] = "";
    int ok;
    if (i % 5 == 4) {
      /* Fork from a thread that is not the main thread. */
      fork_result_t r = {0, ""};
      pthread_t t;
      pthread_create(&t, NULL, forking_thread, &r);
      pthread_join(t, NULL);
      ok = r.ok;
      snprintf(why, sizeof why, "%s", r.why);
    } else {
      ok = fork_and_wait(i % 10 == 1, why, sizeof why);
    }
    if (!ok && !failed++) snprintf(first, sizeof first, "fork %d: child %s", i, why);
    /* Let the workers run between forks, in the middle of their work. */
    for (volatile int k = 0; k < 20000; k++) {
    }
  }
  atomic_store(&stop, 1);
  for (int i = 0; i < WORKERS; i++) pthread_join(w[i], NULL);
  for (int i = 0; i < STABLE; i++) {
    if (!pattern_ok(stable[i], stable_n[i], pattern_seed(stable[i], stable_n[i])))
      atomic_fetch_add(&worker_bad, 1);
    trimalloc_free(stable[i]);
  }
  CHECK(failed == 0, "%d of %d children failed; first: %s", failed, FORKS, first);
  CHECK(atomic_load(&worker_bad) == 0, "%ld corrupt blocks in the parent's workers",
        atomic_load(&worker_bad));
  CHECK(atomic_load(&worker_steps) > 1000, "workers made only %ld steps", atomic_load(&worker_steps));
  pthread_barrier_destroy(&ready);
}

/* After all that, the parent's allocator still works, also for new threads. */
static void *parent_thread(void *arg) {
  (void)arg;
  void *p = trimalloc_malloc(12345);
  memset(p, 1, 12345);
  trimalloc_free(p);
  return p;
}

static void test_parent_still_works(void) {
  pthread_t t;
  void *r = NULL;
  pthread_create(&t, NULL, parent_thread, NULL);
  pthread_join(t, &r);
  CHECK(r != NULL);
  void *p = trimalloc_malloc(3 * MiB);
  CHECK(p != NULL);
  trimalloc_free(p);
}

int main(void) {
#if TEST_TSAN
  /* ThreadSanitizer cannot start threads in the child of a multithreaded
   * fork (die_after_fork), which is the point of this test. */
  SKIP(test_fork_while_threads_allocate, "TSan does not support threads after a multithreaded fork");
#else
  RUN(test_fork_while_threads_allocate);
#endif
  RUN(test_parent_still_works);
  return check_summary();
}
