/* The cost of a trim with nothing to release: a live heap of `--mb` MiB of
 * small blocks (half allocated by a second thread that stays alive, so there
 * are two heaps or arenas), one trim to release whatever is free, then
 * `--calls` trims timed one by one:
 *   idle    back to back, nothing freed in between
 *   churn   after 100 small blocks are allocated and freed before each call
 *           (a trim after every GC or task sees a little churn)
 *   holes   after every other block of the live heap is freed (as a GC
 *           leaves it: many free blocks, few or no whole free pages) and
 *           one trim has released what it could
 * Reports median, 90th percentile and max, in microseconds. */
#include "common.h"

#include <pthread.h>

static size_t live_mb;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int stage; /* 1 allocated, 2 exit */

static void **fill(size_t bytes, uint64_t seed, size_t *count) {
  bench_rng_t rng = {seed};
  size_t cap = bytes / 16 + 1, n = 0, got = 0;
  void **p = bench_xmalloc(cap * sizeof *p);
  while (got < bytes) {
    size_t k = bench_range(&rng, 16, 512);
    p[n] = bench_xmalloc(k);
    memset(p[n], 7, k);
    n++;
    got += k;
  }
  *count = n;
  return p;
}

static void *worker(void *arg) {
  (void)arg;
  size_t n;
  void **p = fill(live_mb * 1024 * 1024 / 2, 0x7777, &n);
  pthread_mutex_lock(&mu);
  stage = 1;
  pthread_cond_broadcast(&cv);
  while (stage < 2) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);
  for (size_t i = 0; i < n; i++) free(p[i]);
  free(p);
  return NULL;
}

static int cmp(const void *a, const void *b) {
  double x = *(const double *)a, y = *(const double *)b;
  return x < y ? -1 : x > y;
}

static void summarize(bench_json_t *j, const char *key, double *us, int n) {
  char k[64];
  qsort(us, (size_t)n, sizeof *us, cmp);
  snprintf(k, sizeof k, "%s_median_us", key);
  bench_json_num(j, k, us[n / 2]);
  snprintf(k, sizeof k, "%s_p90_us", key);
  bench_json_num(j, k, us[(n * 9) / 10]);
  snprintf(k, sizeof k, "%s_max_us", key);
  bench_json_num(j, k, us[n - 1]);
}

int main(int argc, char **argv) {
  live_mb = (size_t)bench_opt(argc, argv, "--mb", 64);
  int calls = (int)bench_opt(argc, argv, "--calls", 1000);
  if (calls < 1) calls = 1;
  bench_trim_t trim = bench_trim_lookup();
  bench_rng_t rng = {0x3F84D5B5B5470917ULL};
  pthread_t t;
  pthread_create(&t, NULL, worker, NULL);
  size_t n;
  void **p = fill(live_mb * 1024 * 1024 / 2, 0x8888, &n);
  pthread_mutex_lock(&mu);
  while (stage < 1) pthread_cond_wait(&cv, &mu);
  pthread_mutex_unlock(&mu);

  bench_trim(&trim);
  double *idle = bench_xmalloc((size_t)calls * sizeof *idle);
  double *churn = bench_xmalloc((size_t)calls * sizeof *churn);
  long f0 = bench_minflt();
  for (int i = 0; i < calls; i++) {
    double a = bench_now();
    bench_trim(&trim);
    idle[i] = (bench_now() - a) * 1e6;
  }
  long f1 = bench_minflt();
  void *tmp[100];
  for (int i = 0; i < calls; i++) {
    for (int k = 0; k < 100; k++) tmp[k] = bench_xmalloc(bench_range(&rng, 16, 512));
    for (int k = 0; k < 100; k++) free(tmp[k]);
    double a = bench_now();
    bench_trim(&trim);
    churn[i] = (bench_now() - a) * 1e6;
  }
  long f2 = bench_minflt();
  for (size_t i = 1; i < n; i += 2) {
    free(p[i]);
    p[i] = NULL;
  }
  bench_trim(&trim);
  double *holes = bench_xmalloc((size_t)calls * sizeof *holes);
  for (int i = 0; i < calls; i++) {
    double a = bench_now();
    bench_trim(&trim);
    holes[i] = (bench_now() - a) * 1e6;
  }
  long f3 = bench_minflt();

  bench_json_t j;
  bench_json_begin(&j, "trim-noop");
  bench_json_str(&j, "trim_fn", trim.name);
  bench_json_num(&j, "live_mb", (double)live_mb);
  bench_json_num(&j, "calls", calls);
  summarize(&j, "idle", idle, calls);
  summarize(&j, "churn", churn, calls);
  summarize(&j, "holes", holes, calls);
  bench_json_num(&j, "flt_idle", (double)(f1 - f0));
  bench_json_num(&j, "flt_churn", (double)(f2 - f1));
  bench_json_num(&j, "flt_holes", (double)(f3 - f2));
  bench_json_num(&j, "rss", (double)bench_rss());
  bench_json_end(&j);

  pthread_mutex_lock(&mu);
  stage = 2;
  pthread_cond_broadcast(&cv);
  pthread_mutex_unlock(&mu);
  pthread_join(t, NULL);
  for (size_t i = 0; i < n; i++) free(p[i]);
  free(p);
  free(idle);
  free(churn);
  free(holes);
  return 0;
}
