/* Larger sizes: a working set of `--slots` blocks of 1 KiB..256 KiB
 * (log-uniform, so every power of two in between is equally common); each
 * step replaces one block at random and writes one byte in every 4 KiB of
 * it, so that pages the allocator hands out are really faulted in (the cost
 * of an allocator that unmaps and remaps large blocks shows). */
#include "common.h"

int main(int argc, char **argv) {
  long long ops = bench_opt(argc, argv, "--ops", 1000000);
  long long slots = bench_opt(argc, argv, "--slots", 256);
  bench_rng_t rng = {0xA4093822299F31D0ULL};
  unsigned char **ws = bench_xmalloc((size_t)slots * sizeof *ws);
  size_t *len = bench_xmalloc((size_t)slots * sizeof *len);
  uint64_t sum = 0;

  for (long long i = 0; i < slots; i++) {
    len[i] = bench_log_range(&rng, 1024, 262144);
    ws[i] = bench_xmalloc(len[i]);
    for (size_t o = 0; o < len[i]; o += 4096) ws[i][o] = 1;
    ws[i][len[i] - 1] = 1;
  }
  double t0 = bench_now();
  for (long long i = 0; i < ops; i++) {
    size_t k = (size_t)(bench_rand(&rng) % (uint64_t)slots);
    sum += ws[k][0] + ws[k][len[k] - 1];
    free(ws[k]);
    len[k] = bench_log_range(&rng, 1024, 262144);
    ws[k] = bench_xmalloc(len[k]);
    for (size_t o = 0; o < len[k]; o += 4096) ws[k][o] = (unsigned char)i;
    ws[k][len[k] - 1] = 1;
  }
  double t1 = bench_now();
  for (long long i = 0; i < slots; i++) free(ws[i]);
  free(ws);
  free(len);
  bench_sink = sum;

  bench_json_t j;
  bench_json_begin(&j, "large");
  bench_json_num(&j, "check", (double)sum);
  bench_json_num(&j, "ops", (double)ops);
  bench_json_num(&j, "loop_s", t1 - t0);
  bench_json_end(&j);
  return 0;
}
