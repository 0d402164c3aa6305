/* The segment header's per-page state.
 *
 * The OS pages' live counts (ta_pages_live, ta_pages_dead; core/segment.c)
 * against a model, page by page, on a segment header of our own (a zeroed
 * mapping: no span, no huge pages):
 *  - ranges of 1 to 20 pages starting anywhere in the first 300 pages, so
 *    the short-range paths (1-4 pages, a bitmap word read or two) and the
 *    long ones (four counts at a time) both meet ranges that straddle the
 *    64-page words of the purged bitmap;
 *  - random purged pages among those with no live block (a live page is
 *    never purged), some touched before: a page that goes live is resident
 *    again, counted as a refault when touched before, and leaves `dirty`
 *    alone; a resident one going from 0 to 1 leaves `dirty`; one going back
 *    to 0 joins it.
 * The slabs reach purged pages on this path only where MADV_POPULATE_WRITE
 * is missing (kernels before 5.14, qemu-user), so the other tests do not
 * see a short range's purged-page test go wrong on this machine.
 *
 * The free bitmap's pages are resident for every carved block (slab.c,
 * touch_bitmap): a block's bit is first written when it comes back, and
 * without that a thread cache's flush faulted bitmap pages in under the bin
 * lock, a trim's flush included (test_fuzz saw a trim raise RSS by 36 KiB). */
#include <stdio.h>
#include <sys/mman.h>
#include <unistd.h>

#include "check.h"
#include "../../core/internal.h"

enum { PAGES = 300, ROUNDS = 20000 };

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint64_t next_rand(void) {
  rng ^= rng << 13;
  rng ^= rng >> 7;
  rng ^= rng << 17;
  return rng;
}

static int get(_Atomic uint64_t *w, size_t i) { return (int)((atomic_load(&w[i / 64]) >> (i % 64)) & 1); }
static void put(_Atomic uint64_t *w, size_t i, int v) {
  uint64_t bit = (uint64_t)1 << (i % 64);
  if (v) atomic_fetch_or(&w[i / 64], bit);
  else atomic_fetch_and(&w[i / 64], ~bit);
}

static void test_counts_match_the_model(void) {
  size_t bytes = TA_SEGBITS_OFFSET + sizeof(ta_segbits_t);
  ta_segment_t *s = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  CHECK(s != MAP_FAILED, "a mapping for the segment header");
  if (s == MAP_FAILED) return;
  ta_segbits_t *bits = ta_segbits(s);
  static uint16_t live[PAGES];
  static int purged[PAGES], touched[PAGES];
  size_t page = (size_t)1 << ta_ospage_shift, wrong = 0, purged_seen = 0;
  for (size_t i = 0; i < PAGES; i++) { /* a start: every page purged, half touched before */
    purged[i] = 1;
    touched[i] = (int)(next_rand() & 1);
    put(bits->purged, i, 1);
    put(bits->touched, i, touched[i]);
  }
  uint16_t dirty = 0, want_dirty = 0;
  int rounds = 0;
  for (int r = 0; r < ROUNDS && !wrong; r++) {
    size_t n = 1 + (size_t)(next_rand() % (next_rand() & 1 ? 4 : 20));
    size_t first = (size_t)(next_rand() % (PAGES - n));
    ta_pagedelta_t d = {0};
    int64_t want_resident = 0, want_d_dirty = 0;
    size_t want_refault = 0;
    int dead_op = 1;
    for (size_t i = first; i < first + n; i++) dead_op &= live[i] > 0;
    dead_op = dead_op && next_rand() % 4 != 0;
    if (dead_op) {
      ta_pages_dead(s, first, n, &dirty, &d);
      for (size_t i = first; i < first + n; i++)
        if (--live[i] == 0) want_dirty++, want_d_dirty++;
    } else {
      for (size_t i = first; i < first + n; i++) purged_seen += (size_t)purged[i];
      ta_pages_live(s, first, n, &dirty, &d);
      for (size_t i = first; i < first + n; i++) {
        if (live[i]++ != 0) continue;
        if (!purged[i]) {
          want_dirty--, want_d_dirty--;
          continue;
        }
        purged[i] = 0, want_resident++;
        if (touched[i]) want_refault += page;
        touched[i] = 1;
      }
    }
    for (size_t i = 0; i < PAGES; i++) /* now and then a free resident page is purged */
      if (!live[i] && !purged[i] && next_rand() % 64 == 0) {
        purged[i] = 1, want_dirty--, dirty--; /* as the purger does */
        put(bits->purged, i, 1);
      }
    for (size_t i = 0; i < PAGES; i++)
      if (bits->live[i] != live[i] || get(bits->purged, i) != purged[i] || get(bits->touched, i) != touched[i])
        wrong++;
    if (dirty != want_dirty || d.resident != want_resident || d.dirty != want_d_dirty || d.refault != want_refault)
      wrong++;
    if (wrong)
      fprintf(stdout,
              "   round %d, %s of pages [%zu, +%zu): span dirty %u (model %u), delta resident %lld dirty %lld"
              " refault %zu (model %lld %lld %zu), %zu differences\n",
              r, dead_op ? "dead" : "live", first, n, (unsigned)dirty, (unsigned)want_dirty, (long long)d.resident,
              (long long)d.dirty, d.refault, (long long)want_resident, (long long)want_d_dirty, want_refault, wrong);
    rounds++;
  }
  CHECK(wrong == 0 && rounds == ROUNDS, "the counts, bits and deltas match the model in every round (%d of %d)",
        rounds - (wrong != 0), ROUNDS);
  CHECK(purged_seen > ROUNDS / 10, "the rounds met purged pages (%zu)", purged_seen);
  fprintf(stdout, "   %d rounds, %zu purged pages taken back\n", ROUNDS, purged_seen);
  munmap(s, bytes);
}

static void test_carved_blocks_have_their_bitmap_resident(void) {
  enum { N = 4096, SIZE = 1000 }; /* 4 MiB of fresh blocks, never freed before the check */
  static void *b[N];
  size_t ps = (size_t)sysconf(_SC_PAGESIZE), missing = 0;
  for (int i = 0; i < N; i++) b[i] = trimalloc_malloc(SIZE);
  for (int i = 0; i < N; i++) {
    ta_segment_t *s = ta_segment_of(b[i]);
    size_t g = (size_t)((uint8_t *)b[i] - (uint8_t *)s) >> TA_GRANULE_SHIFT;
    uintptr_t word = (uintptr_t)&ta_segbits(s)->free[g / 64];
    unsigned char vec = 0;
    if (mincore((void *)(word & ~(uintptr_t)(ps - 1)), ps, &vec) != 0 || !(vec & 1)) missing++;
  }
  CHECK(missing == 0, "%zu of %d carved blocks have their free bitmap's page not resident", missing, N);
  for (int i = 0; i < N; i++) trimalloc_free(b[i]);
}

int main(void) {
  RUN(test_counts_match_the_model);
  RUN(test_carved_blocks_have_their_bitmap_resident);
  return check_summary();
}
