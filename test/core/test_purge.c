/* The delayed purge, with default options and no trim call: after a burst of
 * a few hundred MB of small blocks is freed, RSS falls to within 64 MiB of the
 * baseline within about a second of further small allocation activity. */
#include <sys/mman.h>

#include "check.h"

static const size_t BURST = TEST_SANITIZED ? 160 * MiB : 320 * MiB;

static void test_delayed_purge_without_trim(void) {
  size_t cap = BURST / 16;
  uint8_t **p = mmap(NULL, cap * sizeof *p, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) abort();
  memset(p, 0, cap * sizeof *p);
  /* Warm up the small classes the activity loop uses, then take the baseline. */
  for (int i = 0; i < 1000; i++) trimalloc_free(trimalloc_malloc(16 + (size_t)(i % 16) * 16));
  size_t rss0 = memory_now();
  trimalloc_stats_t s0 = stats_now();
  size_t count = 0, bytes = 0;
  uint64_t rng = 1;
  while (bytes < BURST && count < cap) {
    size_t n = 16 + rng_next(&rng) % 1009;
    p[count] = trimalloc_malloc(n);
    if (!p[count]) break;
    memset(p[count], 0x5A, n);
    bytes += n;
    count++;
  }
  size_t rss_peak = memory_now();
  trimalloc_stats_t speak = stats_now();
  CHECK(bytes >= BURST && rss_peak > rss0 + BURST / 2, "burst: %zu bytes, RSS %zu -> %zu KiB", bytes,
        rss0 / KiB, rss_peak / KiB);
  for (size_t i = 0; i < count; i++) trimalloc_free(p[i]);
  /* Further activity: small blocks allocated and freed for a second. */
  double t0 = now_s(), under_at = -1;
  void *keep[64] = {0};
  unsigned k = 0;
  while (now_s() - t0 < 1.0) {
    for (int i = 0; i < 64; i++) {
      trimalloc_free(keep[k % 64]);
      keep[k % 64] = trimalloc_malloc(16 + (k % 16) * 16);
      k++;
    }
    if (under_at < 0 && memory_now() <= rss0 + 64 * MiB) under_at = now_s() - t0;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  size_t rss1 = memory_now();
  trimalloc_stats_t s1 = stats_now();
  for (int i = 0; i < 64; i++) trimalloc_free(keep[i]);
  fprintf(stdout, "   RSS baseline %zu KiB, peak %zu KiB, after 1 s %zu KiB (under +64 MiB at %.3f s)\n",
          rss0 / KiB, rss_peak / KiB, rss1 / KiB, under_at);
  CHECK(rss1 <= rss0 + 64 * MiB, "RSS %zu KiB one second after the burst, baseline %zu KiB", rss1 / KiB,
        rss0 / KiB);
  CHECK(s1.trims == s0.trims, "something called trim");
  CHECK(s1.resident <= s0.resident + 64 * MiB, "stats: resident %llu KiB, baseline %llu KiB",
        (unsigned long long)s1.resident / KiB, (unsigned long long)s0.resident / KiB);
  CHECK(s1.purged_bytes > speak.purged_bytes || s1.mapped < speak.mapped,
        "the delayed purge is not in the stats: purged_bytes %llu -> %llu, mapped %llu -> %llu",
        (unsigned long long)speak.purged_bytes, (unsigned long long)s1.purged_bytes,
        (unsigned long long)speak.mapped, (unsigned long long)s1.mapped);
  munmap(p, cap * sizeof *p);
}

int main(void) {
  RUN(test_delayed_purge_without_trim);
  return check_summary();
}
