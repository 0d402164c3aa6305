/* Segments: the segment map, mapping and unmapping segments, and the state of
 * each OS page inside them (live counts, purged and touched bits; see
 * ta_segbits_t in types.h). Callers hold the lock of the span that owns the
 * pages: the bin lock for a slab, the arena lock otherwise. */
#include "internal.h"

#include <errno.h>

/* One bit per segment-sized slot of the address space (8 MiB of .bss below
 * 2^48; only the words that are written ever become resident). */
_Atomic uint64_t ta_segmap[TA_SEGMAP_WORDS];
static _Atomic uint64_t segments_live;
size_t ta_ospage_shift = 12;
static _Atomic int64_t active_now;
static _Atomic uint64_t active_peak;
_Atomic uint64_t ta_meta_bytes;
static _Atomic uint64_t locked_ms; /* the last purge that failed (mlock), or 0 */

bool ta_purge_blocked(void) {
  uint64_t t = ta_relaxed_load(&locked_ms);
  return t && ta_prim_clock_ms() - t < TA_LOCKED_RETRY_MS;
}

/* `active` (OS pages holding a live block, and huge blocks) as it changes,
 * and its high-water mark: every change of an arena's resident or dirty page
 * counts goes through ta_pagedelta_apply (once per batch), except purges and
 * segment maps and unmaps, which leave resident - dirty - headers as it was. */

void ta_active_add(int64_t delta) {
  int64_t now = atomic_fetch_add_explicit(&active_now, delta, memory_order_relaxed) + delta;
  uint64_t peak = ta_relaxed_load(&active_peak);
  while (now > 0 && (uint64_t)now > peak &&
         !atomic_compare_exchange_weak_explicit(&active_peak, &peak, (uint64_t)now, memory_order_relaxed,
                                                memory_order_relaxed)) {
  }
}

uint64_t ta_active_peak(void) {
  return ta_relaxed_load(&active_peak);
}

void ta_addrmap_set(_Atomic uint64_t *map, const void *p, bool on) {
  uintptr_t i = (uintptr_t)p >> TA_SEGMENT_SHIFT;
  uint64_t bit = (uint64_t)1 << (i % 64);
  if (on) atomic_fetch_or_explicit(&map[i / 64], bit, memory_order_release);
  else atomic_fetch_and_explicit(&map[i / 64], ~bit, memory_order_release);
}

void ta_segmap_set(const ta_segment_t *s, bool on) {
  ta_addrmap_set(ta_segmap, s, on);
}

uint64_t ta_segments_live(void) {
  return ta_relaxed_load(&segments_live);
}

/* Bytes of slice 0 that the header and bitmaps cover, in whole OS pages. */
size_t ta_segment_header_bytes(void) {
  size_t ps = (size_t)1 << ta_ospage_shift;
  return (TA_SEGBITS_OFFSET + sizeof(ta_segbits_t) + ps - 1) & ~(ps - 1);
}

/* The OS pages that lie wholly in a segment's free bitmap (none at 64 KiB
 * pages): their first byte, and their count. An empty segment's bitmap is
 * all zero, so they may go back to the OS while it waits to be unmapped. */
size_t ta_segment_bits_pages(ta_segment_t *s, uint8_t **first) {
  size_t ps = (size_t)1 << ta_ospage_shift;
  uintptr_t lo = (uintptr_t)ta_segbits(s)->free, hi = lo + sizeof(ta_segbits(s)->free);
  lo = (lo + ps - 1) & ~(uintptr_t)(ps - 1);
  hi &= ~(uintptr_t)(ps - 1);
  *first = (uint8_t *)lo;
  return hi > lo ? (hi - lo) >> ta_ospage_shift : 0;
}

static inline bool bit_get(_Atomic uint64_t *w, size_t i) {
  return (ta_relaxed_load(&w[i / 64]) >> (i % 64)) & 1;
}
static inline void bit_set(_Atomic uint64_t *w, size_t i) {
  atomic_fetch_or_explicit(&w[i / 64], (uint64_t)1 << (i % 64), memory_order_relaxed);
}
static inline void bit_clear(_Atomic uint64_t *w, size_t i) {
  atomic_fetch_and_explicit(&w[i / 64], ~((uint64_t)1 << (i % 64)), memory_order_relaxed);
}

/* Huge-page segments (issue 17, 8(h)): the kernel faults a huge page in
 * whole at its first touch, so the OS pages counted resident in it (not
 * purged) are fewer than what it holds: one small block made 2 MiB resident
 * and 8 KiB counted. Each huge page past the header's with a page not purged
 * is flagged (ta_segbits_t.thp_resident) and stats' resident counts it
 * whole: thp_flagged huge pages less the thp_unpurged pages in them already
 * counted. An upper bound: a huge page the kernel did not give (no free 2 MiB
 * of memory) or that a purge of part of it split counts whole too. A flag is
 * cleared only with every page of its huge page purged, and set again if a
 * page came back meanwhile (under another bin's lock). */
static _Atomic int64_t thp_flagged, thp_unpurged;

static inline size_t thp_per(const ta_segment_t *s) {
  return s->thp ? ta_prim_hugepage_size() >> ta_ospage_shift : 0;
}

static void thp_flag(ta_segbits_t *bits, size_t h) {
  uint64_t bit = (uint64_t)1 << h;
  if (!(atomic_fetch_or(&bits->thp_resident, bit) & bit)) atomic_fetch_add(&thp_flagged, 1);
}

/* Page p of s is no longer purged. */
static void thp_unpurge(ta_segment_t *s, size_t p) {
  size_t per = thp_per(s);
  if (!per || p < per) return;
  atomic_fetch_add(&thp_unpurged, 1);
  thp_flag(ta_segbits(s), p / per);
}

/* Pages [first, first + n) were purged: a huge page now wholly purged is
 * no longer counted. */
static void thp_purged(ta_segment_t *s, size_t first, size_t n) {
  size_t per = thp_per(s);
  if (!per || first + n <= per) return;
  ta_segbits_t *bits = ta_segbits(s);
  size_t lo = first < per ? per : first;
  for (size_t h = lo / per; h <= (first + n - 1) / per; h++) {
    uint64_t bit = (uint64_t)1 << h;
    if (ta_pages_unpurged(s, h * per, per)) continue;
    if (atomic_fetch_and(&bits->thp_resident, ~bit) & bit) {
      atomic_fetch_sub(&thp_flagged, 1);
      if (ta_pages_unpurged(s, h * per, per)) thp_flag(bits, h); /* a page came back meanwhile */
    }
  }
}

int64_t ta_thp_hidden_pages(void) {
  size_t per = ta_prim_hugepage_size() >> ta_ospage_shift;
  int64_t extra = atomic_load(&thp_flagged) * (int64_t)per - atomic_load(&thp_unpurged);
  return extra > 0 ? extra : 0;
}

ta_segment_t *ta_segment_new(ta_arena_t *a) {
  void *p;
  if (ta_prim_map(TA_SEGMENT_SIZE, TA_SEGMENT_SIZE, &p) != 0) return NULL;
  ta_segment_t *s = p; /* zeroed by the OS */
  ta_segbits_t *bits = ta_segbits(s);
  /* Huge pages for a heap past its first two segments (8 MiB): a fault then
   * brings in 2 MiB at once, while a small program stays on 4 KiB pages. */
  /* Not the huge page that holds the header: the header is written now and
   * stays live, so that huge page would be faulted in whole at once and
   * kept as long as the segment, 2 MiB resident of which the page counts
   * below saw the header's (v2: about 1.9 MiB per segment that neither the
   * stats nor a trim saw). */
  size_t hp = ta_prim_hugepage_size();
  if (ta_opt(TA_OPT_THP) && hp && hp <= TA_SEGMENT_SIZE / 2 && ta_relaxed_load(&segments_live) >= 2) {
    ta_prim_hugepage((uint8_t *)p + hp, TA_SEGMENT_SIZE - hp);
    s->thp = 1;
  }
  /* Past the header, no access until a span takes the slices (a huge page
   * needs its whole range alike: a THP segment stays read-write). */
  if (s->thp || ta_prim_protect((uint8_t *)p + TA_SLICE_SIZE, TA_SEGMENT_SIZE - TA_SLICE_SIZE, false) != 0)
    bits->rw_slices = ~(uint64_t)0;
  else
    bits->rw_slices = 1;
  size_t hdr_pages = ta_segment_header_bytes() >> ta_ospage_shift;
  size_t pages = TA_SEGMENT_SIZE >> ta_ospage_shift, slice0 = TA_SLICE_SIZE >> ta_ospage_shift;
  s->arena = a;
  s->map_size = TA_SEGMENT_SIZE;
  s->empty_since_ms = ta_prim_clock_ms();
  s->spans[0].kind = TA_SPAN_META;
  s->spans[0].cls = TA_NO_CLASS;
  ta_relaxed_store(&s->spans[0].fast_free_below, 0);
  s->spans[0].slices = 1;
  for (size_t i = 0; i < slice0; i++) bits->live[i] = 1; /* the header is never purged */
  for (size_t i = slice0; i < pages; i++) bit_set(bits->purged, i); /* fresh: not resident */
  s->next = a->segments;
  if (a->segments) a->segments->prev = s;
  a->segments = s;
  ta_relaxed_add(&a->empty_segments, 1);
  ta_relaxed_add(&a->resident_pages, (int64_t)hdr_pages);
  ta_segmap_set(s, true);
  ta_relaxed_add(&segments_live, 1);
  return s;
}

/* One mprotect when a span first reaches slices past those in use so far
 * (they then stay read-write: at most one call per slice of a segment's
 * life, and the read-write part stays one mapping). */
bool ta_segment_commit(ta_segment_t *s, size_t idx, size_t n) {
  uint64_t mask = (n >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << n) - 1)) << idx;
  ta_segbits_t *bits = ta_segbits(s);
  if (ta_likely((bits->rw_slices & mask) == mask)) return true;
  if (ta_prim_protect((uint8_t *)s + idx * TA_SLICE_SIZE, n * TA_SLICE_SIZE, true) != 0) return false;
  bits->rw_slices |= mask;
  return true;
}

void ta_segment_unlink(ta_arena_t *a, ta_segment_t *s) {
  ta_segbits_t *bits = ta_segbits(s);
  size_t pages = TA_SEGMENT_SIZE >> ta_ospage_shift, slice0 = TA_SLICE_SIZE >> ta_ospage_shift;
  uint8_t *unused;
  int64_t resident = (int64_t)(ta_segment_header_bytes() >> ta_ospage_shift), dirty = 0;
  if (s->bits_out) resident -= (int64_t)ta_segment_bits_pages(s, &unused);
  for (size_t i = slice0; i < pages; i++)
    if (!bit_get(bits->purged, i)) resident++, dirty++;
  size_t per = thp_per(s);
  for (size_t h = 1; per && h < (TA_SEGMENT_SIZE >> ta_ospage_shift) / per; h++) { /* out of the huge-page counts */
    atomic_fetch_sub(&thp_unpurged, (int64_t)ta_pages_unpurged(s, h * per, per));
    if (atomic_load(&bits->thp_resident) & ((uint64_t)1 << h)) atomic_fetch_sub(&thp_flagged, 1);
  }
  if (s->prev) s->prev->next = s->next;
  else a->segments = s->next;
  if (s->next) s->next->prev = s->prev;
  ta_segmap_set(s, false);
  ta_relaxed_sub(&a->resident_pages, resident);
  ta_relaxed_sub(&a->dirty_pages, dirty);
  ta_relaxed_sub(&a->empty_segments, 1);
  ta_relaxed_sub(&segments_live, 1);
}

/* Pages' live counts four at a time, as the uint16_t lanes of a word (a
 * block of 1-256 KiB spans up to 64 pages: one at a time, the counts were
 * 20% of bench/large_mix.c's instructions). A lane is 0 iff bit 15 of
 * ~(((x & 0x7fff...) + 0x7fff...) | x | 0x7fff...) is set (no carry leaves
 * a lane); the multiply sums the four flags into the top lane. Counts stay
 * far below 0xffff (blocks a page holds), so adding or taking 1 in every
 * lane never carries or borrows across lanes. */
#define LANES_ONE 0x0001000100010001ull
#define LANES_LOW 0x7fff7fff7fff7fffull
static inline unsigned lanes_zero(uint64_t x) {
  uint64_t z = ~(((x & LANES_LOW) + LANES_LOW) | x | LANES_LOW);
  return (unsigned)(((z >> 15) * LANES_ONE) >> 48);
}

/* Adds delta (+1 or -1) to live[first .. first + n) and returns how many
 * counts were 0 before (+1) or are 0 after (-1). */
static inline size_t live_add(uint16_t *live, size_t first, size_t n, int delta) {
  size_t i = first, end = first + n, zero = 0;
  for (; i + 4 <= end; i += 4) {
    uint64_t x;
    memcpy(&x, live + i, sizeof x);
    if (delta > 0) zero += lanes_zero(x), x += LANES_ONE;
    else x -= LANES_ONE, zero += lanes_zero(x);
    memcpy(live + i, &x, sizeof x);
  }
  for (; i < end; i++) {
    if (delta > 0) zero += live[i]++ == 0;
    else zero += --live[i] == 0;
  }
  return zero;
}

/* ta_pages_live's other calls: several pages, or one that is purged. */
static __attribute__((noinline)) void pages_live_range(ta_segment_t *s, size_t first, size_t n, uint16_t *dirty,
                                                       ta_pagedelta_t *d) {
  ta_segbits_t *bits = ta_segbits(s);
  int64_t undirty = 0;
  if (!n) return;
  if (!ta_pages_any_purged(bits, first, first + n - 1)) { /* all resident: the counts alone */
    undirty = (int64_t)live_add(bits->live, first, n, 1);
  } else {
    for (size_t i = first; i < first + n; i++) {
      if (bits->live[i]++ != 0) continue;
      if (bit_get(bits->purged, i)) {
        bit_clear(bits->purged, i);
        if (s->thp) thp_unpurge(s, i);
        d->resident++;
        if (bit_get(bits->touched, i)) d->refault += (size_t)1 << ta_ospage_shift;
        else bit_set(bits->touched, i);
      } else {
        undirty++;
      }
    }
  }
  *dirty = (uint16_t)(*dirty - undirty);
  d->dirty -= undirty;
}

/* Most calls are for one to four resident pages: a slab page's first block
 * going live (a refill), or a block across pages (17k calls in 4 Python
 * tasks, three in four of them for 2-3 pages). That case is a leaf of a few
 * instructions, without the range function's register saves and word loop
 * (82 instructions a call before, under callgrind). put_run counts the
 * pages of the blocks it puts back itself, inline. */
static inline bool few_purged(ta_segbits_t *bits, size_t first, size_t n) { /* 1 <= n <= 4 */
  size_t w = first / 64, o = first % 64;
  uint64_t x = ta_relaxed_load(&bits->purged[w]) >> o;
  if (o + n > 64) x |= ta_relaxed_load(&bits->purged[w + 1]) << (64 - o);
  return x & (((uint64_t)1 << n) - 1);
}

void ta_pages_live(ta_segment_t *s, size_t first, size_t n, uint16_t *dirty, ta_pagedelta_t *d) {
  ta_segbits_t *bits = ta_segbits(s);
  if (ta_likely(n - 1 < 4 && !few_purged(bits, first, n))) {
    size_t undirty = live_add(bits->live, first, n, 1);
    *dirty = (uint16_t)(*dirty - undirty);
    d->dirty -= (int64_t)undirty;
    return;
  }
  pages_live_range(s, first, n, dirty, d);
}

void ta_pages_dead(ta_segment_t *s, size_t first, size_t n, uint16_t *dirty, ta_pagedelta_t *d) {
  ta_segbits_t *bits = ta_segbits(s);
#ifdef TA_DEBUG
  for (size_t i = first; i < first + n; i++) ta_assert(bits->live[i] > 0);
#endif
  int64_t k = (int64_t)live_add(bits->live, first, n, -1);
  *dirty = (uint16_t)(*dirty + k);
  d->dirty += k;
}

size_t ta_pages_populate(ta_segment_t *s, size_t first, size_t n, uint16_t *dirty, ta_pagedelta_t *d) {
  ta_segbits_t *bits = ta_segbits(s);
  size_t end = first + n, pages = 0;
  for (size_t i = first; i < end;) {
    if (bits->live[i] || !bit_get(bits->purged, i)) {
      i++;
      continue;
    }
    size_t j = i + 1;
    while (j < end && !bits->live[j] && bit_get(bits->purged, j)) j++;
    if (ta_prim_populate((uint8_t *)s + (i << ta_ospage_shift), (j - i) << ta_ospage_shift)) {
      for (size_t k = i; k < j; k++) {
        bit_clear(bits->purged, k);
        if (s->thp) thp_unpurge(s, k);
        if (bit_get(bits->touched, k)) d->refault += (size_t)1 << ta_ospage_shift;
        else bit_set(bits->touched, k);
      }
      d->resident += (int64_t)(j - i);
      d->dirty += (int64_t)(j - i);
      *dirty = (uint16_t)(*dirty + (j - i));
      pages += j - i;
    }
    i = j;
  }
  return pages;
}

size_t ta_pages_refaults(ta_segment_t *s, size_t first, size_t n, ta_pagerun_t *runs, size_t max) {
  ta_segbits_t *bits = ta_segbits(s);
  size_t count = 0;
  for (size_t i = first; i < first + n && count < max;) {
    uint64_t w = (ta_relaxed_load(&bits->purged[i / 64]) & ta_relaxed_load(&bits->touched[i / 64])) >> (i % 64);
    if (!w) { /* a word at a time: a span with nothing to refault costs a few loads */
      i = (i / 64 + 1) * 64;
      continue;
    }
    i += (size_t)__builtin_ctzll(w);
    if (i >= first + n) break;
    size_t j = i + 1;
    while (j < first + n && bit_get(bits->purged, j) && bit_get(bits->touched, j)) j++;
    runs[count].first = (uint32_t)i;
    runs[count].n = (uint32_t)(j - i);
    count++;
    i = j;
  }
  return count;
}

/* Faults the runs in, each in one call (no lock needed: the pages are the
 * caller's block). */
void ta_pages_populate_runs(ta_segment_t *s, const ta_pagerun_t *runs, size_t count) {
  for (size_t r = 0; r < count; r++)
    ta_prim_populate((uint8_t *)s + ((size_t)runs[r].first << ta_ospage_shift), (size_t)runs[r].n << ta_ospage_shift);
}

void ta_pagedelta_apply(ta_arena_t *a, ta_pagedelta_t *d) {
  if (d->dirty) ta_relaxed_add(&a->dirty_pages, d->dirty);
  if (d->resident) ta_relaxed_add(&a->resident_pages, d->resident);
  if (d->resident != d->dirty) ta_active_add((d->resident - d->dirty) * ((int64_t)1 << ta_ospage_shift));
  if (d->refault) ta_delay_refault(&a->delay, 0);
  d->dirty = d->resident = 0;
  d->refault = 0;
}

size_t ta_pages_purge_plan(ta_segment_t *s, size_t first, size_t n, ta_pagerun_t *runs, size_t max) {
  ta_segbits_t *bits = ta_segbits(s);
  size_t count = 0, end = first + n;
  for (size_t i = first; i < end && count < max;) {
    if (bits->live[i] || bit_get(bits->purged, i)) {
      i++;
      continue;
    }
    size_t j = i + 1;
    while (j < end && !bits->live[j] && !bit_get(bits->purged, j)) j++;
    runs[count].first = (uint32_t)i;
    runs[count].n = (uint32_t)(j - i);
    count++;
    i = j;
  }
  return count;
}

void ta_pages_purge_runs(ta_segment_t *s, ta_pagerun_t *runs, size_t count) {
  ta_segbits_t *bits = ta_segbits(s);
  for (size_t r = 0; r < count; r++) {
    size_t i = runs[r].first, j = i + runs[r].n, len = (size_t)runs[r].n << ta_ospage_shift;
    uint8_t *at = (uint8_t *)s + (i << ta_ospage_shift);
    if (len >= TA_SLICE_SIZE) { /* pages in use but never written (a large block's tail) were not */
      unsigned char vec[TA_OSPAGES_MAX]; /* resident: taking them back is no refault */
      if (ta_prim_resident(at, len, vec) == 0)
        for (size_t k = i; k < j; k++)
          if (!(vec[k - i] & 1)) bit_clear(bits->touched, k);
    }
    int err = ta_prim_purge(at, len);
    if (err == EINVAL) { /* locked (mlock, mlockall): nothing here can be purged */
      ta_relaxed_store(&locked_ms, ta_prim_clock_ms() | 1);
      for (; r < count; r++) runs[r].n = 0;
      break;
    }
    if (err) runs[r].n = 0;
    else if (ta_relaxed_load(&locked_ms)) ta_relaxed_store(&locked_ms, 0); /* unlocked again */
  }
}

size_t ta_pages_purge_end(ta_arena_t *a, ta_segment_t *s, const ta_pagerun_t *runs, size_t count, uint16_t *dirty) {
  ta_segbits_t *bits = ta_segbits(s);
  int64_t pages = 0;
  for (size_t r = 0; r < count; r++) {
    int64_t newly = 0;
    for (size_t k = runs[r].first; k < (size_t)runs[r].first + runs[r].n; k++) {
      ta_assert(!bits->live[k]); /* kept out of use since the plan */
      uint64_t bit = (uint64_t)1 << (k % 64); /* a whole huge page's run holds purged pages too */
      int now = !(atomic_fetch_or_explicit(&bits->purged[k / 64], bit, memory_order_relaxed) & bit);
      newly += now;
      if (now && s->thp && k >= thp_per(s)) atomic_fetch_sub(&thp_unpurged, 1);
    }
    if (s->thp && runs[r].n) thp_purged(s, runs[r].first, runs[r].n);
    pages += newly;
  }
  if (pages) {
    *dirty = (uint16_t)(*dirty - pages);
    ta_relaxed_sub(&a->dirty_pages, pages);
    ta_relaxed_sub(&a->resident_pages, pages);
    ta_relaxed_add(&a->purges, 1);
    ta_relaxed_add(&a->purged_bytes, (uint64_t)pages << ta_ospage_shift);
  }
  return (size_t)pages << ta_ospage_shift;
}

/* The plan (ta_pages_purge_plan) of free range [first, first + n) of a
 * huge-page segment: each huge page wholly inside it that holds a dirty
 * page, whole, as one run; with split, the dirty runs of the rest too. Whole,
 * not its dirty runs: the kernel faulted the huge page in whole at its first
 * touch, so pages counted as purged (never touched) are resident too, and
 * returning only the dirty runs split it and kept them (v2 kept up to 2 MiB
 * less a page per huge page that neither the stats nor a trim saw); and
 * without split the rest stays dirty, as returning part of a huge page
 * splits it (what is faulted back in then comes 4 KiB at a time). Pages
 * counted as purged stay so; the dirty ones become so (ta_pages_purge_end).
 * A touched bit stays: taking the page back is a refault. */
size_t ta_pages_purge_plan_whole(ta_segment_t *s, size_t first, size_t n, bool split, ta_pagerun_t *runs, size_t max) {
  size_t per = ta_prim_hugepage_size() >> ta_ospage_shift, end = first + n, count = 0;
  if (!per || !s->thp) return ta_pages_purge_plan(s, first, n, runs, max);
  if (ta_purge_blocked()) return 0;
  size_t lo = (first + per - 1) / per * per, hi = lo;
  if (lo + per > end) return split ? ta_pages_purge_plan(s, first, n, runs, max) : 0;
  if (split) count += ta_pages_purge_plan(s, first, lo - first, runs, max);
  for (; hi + per <= end && count < max; hi += per)
    if (ta_pages_unpurged(s, hi, per)) {
      runs[count].first = (uint32_t)hi;
      runs[count].n = (uint32_t)per;
      count++;
    }
  if (split && count < max) count += ta_pages_purge_plan(s, hi, end - hi, runs + count, max - count);
  return count;
}

/* Invariants of one segment (the arena lock held; tests call it through
 * trimalloc_check). Spans tile slices 1..63, free neighbours are coalesced,
 * used_slices counts slabs and large spans, every free or large span's dirty
 * count matches its pages, and no live page is purged. */
bool ta_segment_is_valid(ta_segment_t *s) {
  if (!ta_segmap_contains(s) || s->huge) return false;
  ta_segbits_t *bits = ta_segbits(s);
  size_t per_slice = TA_SLICE_SIZE >> ta_ospage_shift;
  uint32_t used = 0;
  for (size_t i = 1; i < TA_SLICES;) {
    ta_span_t *sp = &s->spans[i];
    if (sp->head_off != 0 || sp->slices == 0 || i + sp->slices > TA_SLICES) return false;
    for (size_t k = 1; k < sp->slices; k++)
      if (s->spans[i + k].head_off != k) return false;
    size_t first = i * per_slice, n = sp->kind == TA_SPAN_SLAB ? 0 : sp->slices * per_slice, dirty = 0;
    for (size_t p = first; p < first + n; p++) { /* a slab's pages are its bin's: ta_slab_is_valid */
      if (bits->live[p] && bit_get(bits->purged, p)) return false;
      if (!bits->live[p] && !bit_get(bits->purged, p)) dirty++;
    }
    if (sp->kind == TA_SPAN_SLAB || sp->kind == TA_SPAN_LARGE) used += sp->slices;
    else if (sp->kind != TA_SPAN_FREE) return false;
    if (sp->kind != TA_SPAN_SLAB && dirty != sp->dirty) return false;
    if (sp->kind == TA_SPAN_FREE && i + sp->slices < TA_SLICES && s->spans[i + sp->slices].kind == TA_SPAN_FREE)
      return false;
    i += sp->slices;
  }
  return used == s->used_slices;
}

/* Resident pages among [first, first + n) (used for free spans, whose pages
 * all have live == 0: there, resident means dirty). */
size_t ta_pages_unpurged(ta_segment_t *s, size_t first, size_t n) {
  ta_segbits_t *bits = ta_segbits(s);
  size_t count = 0, last = first + n - 1;
  /* a word at a time, the range's ends masked: a slab carved from the head
   * of a free span counts the tail's pages here (slices start every 16
   * pages, so the tail rarely starts on a word; bit by bit, this was 2.5% of
   * the allocator's instructions in bench/py_tasks.py) */
  if (!n) return 0;
  for (size_t w = first / 64; w <= last / 64; w++)
    count += (size_t)__builtin_popcountll(~ta_relaxed_load(&bits->purged[w]) & ta_pages_mask(w, first, last));
  return count;
}
