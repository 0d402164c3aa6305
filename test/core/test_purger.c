/* The background purger: what it keeps, when it starts, the thread it runs on.
 *  - A huge buffer freed and taken again every ~60 ms while the arenas are
 *    idle stays in the huge cache: its pages are still resident at each
 *    malloc in at least 15 of 19 rounds (v2 emptied the whole cache at every
 *    tick once the arenas had been idle half a second: 8 hits in 19). */
#include <pthread.h>
#include <sys/mman.h>

#include "check.h"

#define U(x) ((unsigned long long)(x))

/* Is the OS page holding p resident? */
static bool resident(const void *p) {
  size_t ps = page_size();
  unsigned char v = 0;
  void *a = (void *)((uintptr_t)p & ~(uintptr_t)(ps - 1));
  return mincore(a, ps, &v) == 0 && (v & 1);
}

/* ---- the huge cache keeps a buffer in use ---- */
static void test_huge_cache_by_age(void) {
  enum { ROUNDS = 20 };
  size_t n = 16 * MiB;
  int hits = 0;
  trimalloc_free(trimalloc_malloc(64)); /* an arena exists, and stays idle */
  for (int r = 0; r < ROUNDS; r++) {
    uint8_t *p = trimalloc_malloc(n);
    if (!CHECK(p, "malloc(16 MiB) round %d", r)) return;
    if (r > 0 && resident(p + n / 2)) hits++;
    memset(p, r, n);
    trimalloc_free(p); /* a huge free: no arena activity */
    usleep(60 * 1000);
  }
  printf("   resident at malloc in %d of %d rounds\n", hits, ROUNDS - 1);
  CHECK(hits >= ROUNDS - 5, "a 16 MiB buffer freed and taken again every ~60 ms came back resident %d times in %d",
        hits, ROUNDS - 1);
  trimalloc_trim();
}

int main(void) {
  RUN(test_huge_cache_by_age);
  return check_summary();
}
