/* Independent threads, sizes 1 B..64 KiB with realloc growth: `--threads`
 * threads (2) each keep `--blocks` blocks (2,000) of their own and do
 * `--ops` operations (2,000,000 in all, split between the threads): pick a
 * block at random; an empty slot gets malloc(1 B..64 KiB, log-uniform), a
 * block under 64 KiB grows with realloc by up to half again (a buffer being
 * appended to), a block that has grown enough is freed. Every block's first
 * and last bytes are written and checked. No thread touches another's
 * blocks: two threads on two CPUs should finish no later than one thread
 * doing the same total work (--threads 1), unless they queue on a lock. */
#include "common.h"

#include <pthread.h>

typedef struct {
  long long ops;
  size_t blocks;
  uint64_t seed, sum;
  int failed;
} worker_t;

static void *work(void *arg) {
  worker_t *w = arg;
  bench_rng_t rng = {w->seed};
  char **p = bench_xmalloc(w->blocks * sizeof *p);
  size_t *len = bench_xmalloc(w->blocks * sizeof *len), *target = bench_xmalloc(w->blocks * sizeof *target);
  memset(p, 0, w->blocks * sizeof *p);
  for (long long i = 0; i < w->ops; i++) {
    size_t k = (size_t)(bench_rand(&rng) % w->blocks);
    if (!p[k]) {
      len[k] = bench_log_range(&rng, 1, 65536);
      target[k] = len[k] * 2 < 65536 ? len[k] * 2 : 65536;
      p[k] = malloc(len[k]);
      if (!p[k]) return w->failed = 1, NULL;
      p[k][0] = (char)k;
      p[k][len[k] - 1] = (char)k;
    } else if (len[k] < target[k]) {
      size_t n = len[k] + 1 + bench_range(&rng, 0, len[k] / 2);
      char *q = realloc(p[k], n);
      if (!q || q[0] != (char)k || q[len[k] - 1] != (char)k) return w->failed = 1, NULL;
      p[k] = q;
      len[k] = n;
      q[n - 1] = (char)k;
    } else {
      w->sum += (unsigned char)p[k][0] + (unsigned char)p[k][len[k] - 1];
      free(p[k]);
      p[k] = NULL;
    }
  }
  for (size_t k = 0; k < w->blocks; k++) free(p[k]);
  free(p);
  free(len);
  free(target);
  return NULL;
}

int main(int argc, char **argv) {
  long long threads = bench_opt(argc, argv, "--threads", 2);
  long long ops = bench_opt(argc, argv, "--ops", 2000000);
  long long blocks = bench_opt(argc, argv, "--blocks", 2000);
  if (threads < 1 || threads > 64 || ops < threads || blocks < 1) {
    fprintf(stderr, "mt_mix: bad --threads/--ops/--blocks\n");
    return 2;
  }
  worker_t w[64];
  pthread_t t[64];
  double t0 = bench_now(), c0 = bench_cpu();
  for (long long i = 0; i < threads; i++) {
    w[i] = (worker_t){ops / threads, (size_t)blocks, 0x9E3779B97F4A7C15ULL * (uint64_t)(i + 1), 0, 0};
    if (pthread_create(&t[i], NULL, work, &w[i]) != 0) {
      fprintf(stderr, "mt_mix: pthread_create failed\n");
      return 2;
    }
  }
  uint64_t sum = 0;
  int failed = 0;
  for (long long i = 0; i < threads; i++) {
    pthread_join(t[i], NULL);
    sum += w[i].sum;
    failed |= w[i].failed;
  }
  double t1 = bench_now(), c1 = bench_cpu();
  if (failed) {
    fprintf(stderr, "mt_mix: allocation failed or content lost\n");
    return 1;
  }
  bench_sink = sum;
  bench_json_t j;
  bench_json_begin(&j, "mt-mix");
  bench_json_num(&j, "threads", (double)threads);
  bench_json_num(&j, "ops", (double)ops);
  bench_json_num(&j, "check", (double)sum);
  bench_json_num(&j, "loop_s", t1 - t0);
  bench_json_num(&j, "loop_cpu_s", c1 - c0);
  bench_json_end(&j);
  return 0;
}
