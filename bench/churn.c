/* Single-thread small-object churn: a working set of `--slots` blocks of
 * random sizes 16..512 B; each step replaces one block at random, and every
 * 64 steps a batch of 64 short-lived temporaries is allocated and freed in
 * reverse (the pattern of an interpreter's temporaries). Every block is
 * written, so the allocator's memory is really used. */
#include "common.h"

int main(int argc, char **argv) {
  long long ops = bench_opt(argc, argv, "--ops", 20000000);
  long long slots = bench_opt(argc, argv, "--slots", 50000);
  bench_rng_t rng = {0x9E3779B97F4A7C15ULL};
  unsigned char **ws = bench_xmalloc((size_t)slots * sizeof *ws);
  size_t *len = bench_xmalloc((size_t)slots * sizeof *len);
  unsigned char *tmp[64];
  uint64_t sum = 0;

  for (long long i = 0; i < slots; i++) {
    len[i] = bench_range(&rng, 16, 512);
    ws[i] = bench_xmalloc(len[i]);
    ws[i][0] = (unsigned char)i;
    ws[i][len[i] - 1] = 1;
  }

  double t0 = bench_now();
  for (long long i = 0; i < ops; i++) {
    size_t k = (size_t)(bench_rand(&rng) % (uint64_t)slots);
    sum += ws[k][0] + ws[k][len[k] - 1];
    free(ws[k]);
    len[k] = bench_range(&rng, 16, 512);
    ws[k] = bench_xmalloc(len[k]);
    memset(ws[k], (int)i, len[k] < 64 ? len[k] : 64);
    ws[k][len[k] - 1] = 1;
    if ((i & 63) == 63) {
      for (int t = 0; t < 64; t++) {
        size_t n = bench_range(&rng, 16, 256);
        tmp[t] = bench_xmalloc(n);
        tmp[t][0] = (unsigned char)t;
        tmp[t][n - 1] = 2;
      }
      for (int t = 63; t >= 0; t--) {
        sum += tmp[t][0];
        free(tmp[t]);
      }
    }
  }
  double t1 = bench_now();

  for (long long i = 0; i < slots; i++) free(ws[i]);
  free(ws);
  free(len);
  bench_sink = sum;

  bench_json_t j;
  bench_json_begin(&j, "churn");
  bench_json_num(&j, "check", (double)sum);
  bench_json_num(&j, "ops", (double)ops);
  bench_json_num(&j, "loop_s", t1 - t0);
  bench_json_num(&j, "mops_per_s", (double)ops / (t1 - t0) / 1e6);
  bench_json_end(&j);
  return 0;
}
