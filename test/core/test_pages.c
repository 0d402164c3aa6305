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
 * The free bitmap's pages are written for every carved range (slab.c,
 * ta_slab_touch_bitmap): a block's bit is first written when it comes back,
 * and without that a thread cache's flush faulted bitmap pages in under the
 * bin lock, a trim's flush included (test_fuzz saw a trim raise RSS by 36
 * KiB, and by 4 KiB while the touch stepped by words past a page it left
 * as the zero page). */
#include <fcntl.h>
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

/* Is the page at p resident and written by this process? /proc/self/pagemap:
 * present and exclusively mapped (bits 63 and 56, shown without
 * privileges). A page only read maps the shared zero page, which mincore
 * calls resident: writing it later adds a page (the missed bitmap page of
 * touch_bitmap's step by words was such a page). Natively only: under
 * qemu-user the pagemap is the host's, and neither it nor mincore tells a
 * guest page's residency reliably. */
static bool page_written(const void *p, size_t ps) {
  const void *page = (const void *)((uintptr_t)p & ~(uintptr_t)(ps - 1));
  int fd = open("/proc/self/pagemap", O_RDONLY);
  uint64_t e = 0;
  bool ok = fd >= 0 && pread(fd, &e, sizeof e, (off_t)((uintptr_t)page / ps * sizeof e)) == (ssize_t)sizeof e;
  if (fd >= 0) close(fd);
  return ok && (e >> 63 & 1) && (e >> 56 & 1);
}

/* ta_slab_touch_bitmap, as ta_slab_take calls it for a carved range: every
 * page of the free bitmap that holds a bit of the range is written (not only
 * read), over ranges that end on each of the first and last words of every
 * bitmap page and start up to three pages before. The bitmap starts 64
 * bytes into a page (TA_SEGBITS_OFFSET): a step by 512 words missed a
 * range's last page when it ended in that page's first 8 words, and a trim's
 * flush then wrote it (test_fuzz: a trim raised RSS by 4 KiB). */
static void test_touch_bitmap_writes_every_page_of_a_range(void) {
  trimalloc_free(trimalloc_malloc(1)); /* the page size is known */
  size_t bytes = TA_SEGBITS_OFFSET + sizeof(ta_segbits_t), ps = (size_t)sysconf(_SC_PAGESIZE);
  ta_segment_t *s = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (!CHECK(s != MAP_FAILED, "a mapping for the segment header")) return;
  uint64_t *free = ta_segbits(s)->free;
  size_t per = 1u << TA_GRANULE_SHIFT << 6; /* segment bytes a word covers */
  size_t cases = 0, missed = 0, first_lo = 0, first_hi = 0;
  for (size_t w = 1; w < TA_FREE_WORDS; w++) {
    uintptr_t a = (uintptr_t)&free[w];
    bool near_end = (a & (ps - 1)) < 8 * sizeof *free || ((a + sizeof *free) & (ps - 1)) == 0;
    if (!near_end) continue; /* the first 8 words of a page, or its last */
    for (size_t back = 1; back <= 3 * ps / sizeof *free && back <= w; back += 61) {
      size_t lo = (w - back) * per, hi = w * per + per - 1;
      madvise(s, bytes, MADV_DONTNEED); /* every bitmap page absent again */
      ta_slab_touch_bitmap(s, lo, hi);
      cases++;
      for (uintptr_t p = (uintptr_t)&free[w - back] & ~(uintptr_t)(ps - 1); p <= a; p += ps)
        if (!page_written((void *)p, ps) && !missed++) first_lo = w - back, first_hi = w;
    }
  }
  CHECK(cases > 100, "%zu ranges tried", cases);
  CHECK(missed == 0, "%zu pages of carved ranges' bitmap words left unwritten, first of words [%zu, %zu]",
        missed, first_lo, first_hi);
  munmap(s, bytes);
}

int main(void) {
  RUN(test_counts_match_the_model);
  if (test_runner())
    SKIP(test_touch_bitmap_writes_every_page_of_a_range,
         "under an emulator no page's residency is the guest's");
  else
    RUN(test_touch_bitmap_writes_every_page_of_a_range);
  return check_summary();
}
