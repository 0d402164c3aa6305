/* Larger sizes: a working set of `--slots` blocks of `--min`..`--max` bytes
 * (1 KiB..256 KiB; log-uniform, so every power of two in between is equally
 * common, or with `--uniform 1` uniform); each step replaces one block at
 * random and writes one byte in every 4 KiB of it, so that pages the
 * allocator hands out are really faulted in (the cost of an allocator that
 * unmaps and remaps large blocks shows), or with `--fill 1` fills the whole
 * block with memset. `bench/run`'s `large-blocks` runs it with 2 slots of
 * 1..32 MiB, uniform, filled: one or two blocks live at a time.
 * Reports the loop's wall and CPU time and minor faults, and RSS (baseline,
 * peak: VmHWM, after everything is freed, and `--idle-ms` ms later: asleep,
 * no allocator call; 0, the default: no idle time). */
#include "common.h"

static size_t pick(bench_rng_t *rng, size_t lo, size_t hi, int uniform) {
  return uniform ? bench_range(rng, lo, hi) : bench_log_range(rng, lo, hi);
}

static void touch(unsigned char *p, size_t n, unsigned char v, int fill) {
  if (fill) {
    memset(p, v, n);
  } else {
    for (size_t o = 0; o < n; o += 4096) p[o] = v;
    p[n - 1] = 1;
  }
}

int main(int argc, char **argv) {
  long long ops = bench_opt(argc, argv, "--ops", 1000000);
  long long slots = bench_opt(argc, argv, "--slots", 256);
  size_t lo = (size_t)bench_opt(argc, argv, "--min", 1024);
  size_t hi = (size_t)bench_opt(argc, argv, "--max", 262144);
  int uniform = (int)bench_opt(argc, argv, "--uniform", 0);
  int fill = (int)bench_opt(argc, argv, "--fill", 0);
  bench_rng_t rng = {0xA4093822299F31D0ULL};
  if (slots < 1 || lo < 1 || hi < lo) return 2;
  uint64_t baseline = bench_rss();
  unsigned char **ws = bench_xmalloc((size_t)slots * sizeof *ws);
  size_t *len = bench_xmalloc((size_t)slots * sizeof *len);
  uint64_t sum = 0;

  for (long long i = 0; i < slots; i++) {
    len[i] = pick(&rng, lo, hi, uniform);
    ws[i] = bench_xmalloc(len[i]);
    touch(ws[i], len[i], 1, fill);
  }
  long f0 = bench_minflt();
  double c0 = bench_cpu();
  double t0 = bench_now();
  for (long long i = 0; i < ops; i++) {
    size_t k = (size_t)(bench_rand(&rng) % (uint64_t)slots);
    sum += ws[k][0] + ws[k][len[k] - 1];
    free(ws[k]);
    len[k] = pick(&rng, lo, hi, uniform);
    ws[k] = bench_xmalloc(len[k]);
    touch(ws[k], len[k], (unsigned char)i, fill);
  }
  double t1 = bench_now();
  double c1 = bench_cpu();
  long f1 = bench_minflt();
  for (long long i = 0; i < slots; i++) free(ws[i]);
  free(ws);
  free(len);
  uint64_t end = bench_rss_noalloc(); /* everything freed, no trim */
  long long idle_ms = bench_opt(argc, argv, "--idle-ms", 0);
  uint64_t idle = end;
  if (idle_ms > 0) { /* asleep, no allocator call */
    bench_sleep_ms((double)idle_ms);
    idle = bench_rss_noalloc();
  }
  bench_sink = sum;

  bench_json_t j;
  bench_json_begin(&j, "large");
  bench_json_num(&j, "check", (double)sum);
  bench_json_num(&j, "ops", (double)ops);
  bench_json_num(&j, "loop_s", t1 - t0);
  bench_json_num(&j, "cpu_s", c1 - c0);
  bench_json_num(&j, "minflt", (double)(f1 - f0));
  bench_json_num(&j, "baseline", (double)baseline);
  bench_json_num(&j, "peak", (double)bench_peak_rss());
  bench_json_num(&j, "rss_end", (double)end);
  bench_json_num(&j, "rss_idle", (double)idle);
  bench_json_num(&j, "idle_ms", (double)idle_ms);
  bench_json_end(&j);
  return 0;
}
