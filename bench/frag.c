/* Fragmentation: allocate `--mb` MiB (requested bytes) of small blocks
 * (16..512 B, random), then free all but `--keep` percent of them, spread
 * evenly (keep 50: every other block; keep 10: one block in ten). Reports RSS
 * against the live bytes (the sum of the sizes still allocated: the floor no
 * allocator can go below):
 *   peak         RSS with every block live
 *   after_free   RSS once the others are freed (no trim)
 *   trim         RSS after an explicit trim of the loaded allocator
 *   refill       RSS after allocating as many bytes again (new random sizes):
 *                shows whether the holes are reused
 * RSS figures are reported as measured; bench/run subtracts the baseline.
 * Next to RSS, what the allocator says it has in use and holds
 * (common.h: bench_alloc_stats) at the peak, after the frees and after trim. */
#include "common.h"

#include <sys/mman.h>

static void *xmmap(size_t n) {
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) {
    perror("mmap");
    exit(2);
  }
  return p;
}

int main(int argc, char **argv) {
  size_t bytes = (size_t)bench_opt(argc, argv, "--mb", 256) * 1024 * 1024;
  int keep = (int)bench_opt(argc, argv, "--keep", 50);
  if (keep < 1 || keep > 100) {
    fprintf(stderr, "frag: --keep must be 1..100, got %d\n", keep);
    return 2;
  }
  int every = 100 / keep; /* keep block i when i % every == 0 */
  bench_trim_t trim = bench_trim_lookup();
  bench_rng_t rng = {0x452821E638D01377ULL};
  size_t cap = bytes / 16 + 1, count = 0, total = 0, live = 0;
  unsigned char **ptrs = xmmap(cap * sizeof *ptrs);
  unsigned char **more = xmmap(cap * sizeof *more);

  free(bench_xmalloc(64));
  uint64_t baseline = bench_rss();
  long f0 = bench_minflt();
  while (total < bytes) {
    size_t n = bench_range(&rng, 16, 512);
    ptrs[count] = bench_xmalloc(n);
    memset(ptrs[count], 0x44, n);
    count++;
    total += n;
  }
  uint64_t peak = bench_rss();
  long f1 = bench_minflt();
  bench_alloc_stats_t st_peak = bench_alloc_stats();
  size_t freed_bytes = 0;
  bench_rng_t replay = {0x452821E638D01377ULL};
  for (size_t i = 0; i < count; i++) {
    size_t n = bench_range(&replay, 16, 512);
    if (i % (size_t)every == 0) {
      live += n;
    } else {
      free(ptrs[i]);
      ptrs[i] = NULL;
      freed_bytes += n;
    }
  }
  uint64_t after_free = bench_rss();
  long f2 = bench_minflt();
  bench_alloc_stats_t st_free = bench_alloc_stats();
  bench_trim(&trim);
  uint64_t trimmed = bench_rss();
  long f3 = bench_minflt();
  bench_alloc_stats_t st_trim = bench_alloc_stats();

  size_t got = 0, nmore = 0;
  while (got < freed_bytes) {
    size_t n = bench_range(&rng, 16, 512);
    more[nmore] = bench_xmalloc(n);
    memset(more[nmore], 0x55, n);
    nmore++;
    got += n;
  }
  uint64_t refill = bench_rss();
  long f4 = bench_minflt();

  bench_json_t j;
  char name[32];
  snprintf(name, sizeof name, "frag-keep%d", keep);
  bench_json_begin(&j, name);
  bench_json_str(&j, "trim_fn", trim.name);
  bench_json_num(&j, "keep_pct", keep);
  bench_json_num(&j, "baseline", (double)baseline);
  bench_json_num(&j, "live", (double)live);
  bench_json_num(&j, "peak", (double)peak);
  bench_json_num(&j, "after_free", (double)after_free);
  bench_json_num(&j, "trim", (double)trimmed);
  bench_json_num(&j, "refill", (double)refill);
  bench_json_num(&j, "refill_live", (double)(live + got));
  bench_json_num(&j, "flt_alloc", (double)(f1 - f0));
  bench_json_num(&j, "flt_free", (double)(f2 - f1));
  bench_json_num(&j, "flt_trim", (double)(f3 - f2));
  bench_json_num(&j, "flt_refill", (double)(f4 - f3));
  bench_json_alloc_stats(&j, "st_peak", st_peak);
  bench_json_alloc_stats(&j, "st_free", st_free);
  bench_json_alloc_stats(&j, "st_trim", st_trim);
  bench_json_end(&j);

  for (size_t i = 0; i < count; i++) free(ptrs[i]);
  for (size_t i = 0; i < nmore; i++) free(more[i]);
  return 0;
}
