/* Memory after a burst: allocate `--mb` MiB (requested bytes) of small blocks
 * (16..512 B, random), free them all, then measure what the allocator gives
 * back on its own and when asked:
 *   baseline     RSS before the burst
 *   peak         RSS with every block live
 *   freed        RSS right after the last free (no trim call)
 *   act_*        RSS during 1 s of light further allocation activity (every
 *                1 ms, 32 blocks of 16..512 B allocated and freed): shows a
 *                delayed purge; sampled at 100, 250, 500 and 1000 ms
 *   trim         RSS after one explicit trim of the loaded allocator
 *   trim_ms      what that trim call took
 * Next to RSS, what the allocator says it has in use and holds (common.h:
 * bench_alloc_stats) at the peak, after the frees, after 1 s and after trim.
 * Minor page faults (getrusage) are reported for each phase (burst = the
 * allocation, free = the frees, activity = the 1 s, trim = the trim call).
 *
 * With `--threads N`, N worker threads each allocate and free 1/N of the
 * burst and then stay alive and idle (a thread pool after a request); the
 * light activity and the trim run on the main thread. */
#include "common.h"

#include <pthread.h>
#include <sys/mman.h>

typedef struct {
  size_t bytes;
  uint64_t seed;
  void **ptrs;
  size_t count;
} share_t;

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int phase; /* 0 wait, 1 allocate, 2 free, 3 exit */
static int done;

static void *xmmap(size_t n) {
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(2);
  }
  return p;
}

/* Pointer arrays live in their own mapping, outside the allocator, and are
 * unmapped before the post-free measurements. */
static void share_alloc(share_t *s) {
  bench_rng_t rng = {s->seed};
  size_t cap = s->bytes / 16 + 1, got = 0;
  s->ptrs = xmmap(cap * sizeof(void *));
  s->count = 0;
  while (got < s->bytes && s->count < cap) {
    size_t n = bench_range(&rng, 16, 512);
    unsigned char *p = bench_xmalloc(n);
    memset(p, 0x33, n);
    s->ptrs[s->count++] = p;
    got += n;
  }
}

static void share_free(share_t *s) {
  for (size_t i = 0; i < s->count; i++) free(s->ptrs[i]);
  munmap(s->ptrs, (s->bytes / 16 + 1) * sizeof(void *));
  s->ptrs = NULL;
}

static void wait_phase(int want) {
  pthread_mutex_lock(&mu);
  while (phase < want) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);
}

static void set_phase(int p, int nthreads) {
  pthread_mutex_lock(&mu);
  phase = p;
  done = 0;
  pthread_cond_broadcast(&cv);
  while (done < nthreads && p != 3) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);
}

static void report_done(void) {
  pthread_mutex_lock(&mu);
  done++;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
}

static void *worker(void *arg) {
  share_t *s = arg;
  wait_phase(1);
  share_alloc(s);
  report_done();
  wait_phase(2);
  share_free(s);
  report_done();
  wait_phase(3); /* idle until the end */
  return NULL;
}

static void light_activity(bench_rng_t *rng) {
  void *p[32];
  for (int i = 0; i < 32; i++) {
    size_t n = bench_range(rng, 16, 512);
    p[i] = bench_xmalloc(n);
    memset(p[i], 1, n);
  }
  for (int i = 0; i < 32; i++) free(p[i]);
}

int main(int argc, char **argv) {
  size_t mb = (size_t)bench_opt(argc, argv, "--mb", 256);
  int nthreads = (int)bench_opt(argc, argv, "--threads", 0);
  bench_trim_t trim = bench_trim_lookup();
  bench_rng_t rng = {0xB7E151628AED2A6AULL};
  share_t shares[16];
  pthread_t tid[16];
  if (nthreads > 16) nthreads = 16;

  /* Let the allocator and stdio initialise before the baseline. */
  light_activity(&rng);
  for (int i = 0; i < nthreads; i++) {
    shares[i].bytes = mb * 1024 * 1024 / (size_t)nthreads;
    shares[i].seed = 0x1234567ULL + (uint64_t)i * 7919;
    pthread_create(&tid[i], NULL, worker, &shares[i]);
  }
  bench_sleep_ms(10);

  uint64_t baseline = bench_rss();
  long f0 = bench_minflt();
  double t0 = bench_now();
  share_t mine = {mb * 1024 * 1024, 0x1234567ULL, NULL, 0};
  if (nthreads == 0) share_alloc(&mine);
  else set_phase(1, nthreads);
  uint64_t peak = bench_rss();
  long f1 = bench_minflt();
  bench_alloc_stats_t st_peak = bench_alloc_stats();
  if (nthreads == 0) share_free(&mine);
  else set_phase(2, nthreads);
  double t1 = bench_now();
  uint64_t freed = bench_rss();
  long f2 = bench_minflt();
  bench_alloc_stats_t st_freed = bench_alloc_stats();

  static const int marks[] = {100, 250, 500, 1000};
  uint64_t act[4];
  double start = bench_now();
  for (int m = 0; m < 4; m++) {
    while ((bench_now() - start) * 1000.0 < marks[m]) {
      light_activity(&rng);
      bench_sleep_ms(1);
    }
    act[m] = bench_rss();
  }
  long f3 = bench_minflt();
  bench_alloc_stats_t st_act = bench_alloc_stats();

  double tt0 = bench_now();
  bench_trim(&trim);
  double tt1 = bench_now();
  uint64_t trimmed = bench_rss();
  long f4 = bench_minflt();
  bench_alloc_stats_t st_trim = bench_alloc_stats();

  bench_json_t j;
  bench_json_begin(&j, nthreads ? "burst-mt" : "burst");
  bench_json_str(&j, "trim_fn", trim.name);
  bench_json_num(&j, "mb", (double)mb);
  bench_json_num(&j, "threads", nthreads);
  bench_json_num(&j, "work_s", t1 - t0);
  bench_json_num(&j, "baseline", (double)baseline);
  bench_json_num(&j, "peak", (double)peak);
  bench_json_num(&j, "freed", (double)freed);
  bench_json_num(&j, "act_100ms", (double)act[0]);
  bench_json_num(&j, "act_250ms", (double)act[1]);
  bench_json_num(&j, "act_500ms", (double)act[2]);
  bench_json_num(&j, "act_1s", (double)act[3]);
  bench_json_num(&j, "trim", (double)trimmed);
  bench_json_num(&j, "trim_ms", (tt1 - tt0) * 1e3);
  bench_json_num(&j, "flt_burst", (double)(f1 - f0));
  bench_json_num(&j, "flt_free", (double)(f2 - f1));
  bench_json_num(&j, "flt_activity", (double)(f3 - f2));
  bench_json_num(&j, "flt_trim", (double)(f4 - f3));
  bench_json_num(&j, "peak_hwm", (double)bench_peak_rss());
  bench_json_alloc_stats(&j, "st_peak", st_peak);
  bench_json_alloc_stats(&j, "st_freed", st_freed);
  bench_json_alloc_stats(&j, "st_act_1s", st_act);
  bench_json_alloc_stats(&j, "st_trim", st_trim);
  bench_json_end(&j);

  if (nthreads > 0) {
    set_phase(3, nthreads);
    for (int i = 0; i < nthreads; i++) pthread_join(tid[i], NULL);
  }
  return 0;
}
