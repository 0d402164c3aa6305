/* Slabs: a span of blocks of one size class. Which blocks are free is the
 * segment's free bitmap (a bit per 16 bytes, set at a free block's start), so
 * free blocks hold nothing: an OS page whose blocks are all free can be purged
 * while the slab keeps live blocks elsewhere, and its contents are not needed
 * again. Blocks are carved lazily, in address order, so a fresh slab touches
 * only what is handed out. Every function here runs under the bin lock of the
 * slab's class in its arena. */
#include "internal.h"

uintptr_t ta_cookie = 0x7a3c5e1f9b2d4c61u;      /* both replaced by random values at init */
uintptr_t ta_link_secret = 0x3c1d9e5b7f2a4860u;

static inline size_t word_base(const ta_span_t *sp) {
  return ta_span_index(sp) * (TA_SLICE_SIZE >> TA_GRANULE_SHIFT >> 6);
}
static inline size_t word_count(const ta_span_t *sp) {
  return (size_t)sp->slices * (TA_SLICE_SIZE >> TA_GRANULE_SHIFT >> 6);
}

/* The first OS page wholly past the slab's last block. */
static size_t tail_page(const ta_span_t *sp) {
  size_t so = (size_t)(sp->start - (uint8_t *)ta_segment_of(sp)), ps = (size_t)1 << ta_ospage_shift;
  return (so + (size_t)sp->reserved * sp->bsize + ps - 1) >> ta_ospage_shift;
}

void ta_slab_init(ta_span_t *sp, size_t cls, ta_pagedelta_t *d) {
  sp->cls = (uint8_t)cls;
  sp->bsize = (uint32_t)ta_class_size(cls);
  sp->div_magic = ta_div_magic(sp->bsize);
  sp->reserved = (uint32_t)(sp->slices * TA_SLICE_SIZE / sp->bsize);
  sp->bucket_mul = ((uint32_t)TA_FULLNESS << 20) / sp->reserved;
  sp->carved = sp->used = 0;
  ta_relaxed_store(&sp->carved_bytes, 0);
  ta_relaxed_store(&sp->fast_free_below, 0);
  sp->scan = 0;
  sp->bucket = TA_BUCKET_NONE;
  sp->freed_ms = 0;
  /* Whole OS pages past the last block are never used. A resident one would
   * be dirty in a full slab, which is on no list, so it is pinned (live 1)
   * while the slab lives; a purged one stays purged. */
  ta_segment_t *s = ta_segment_of(sp);
  ta_segbits_t *bits = ta_segbits(s);
  size_t end = ta_span_first_page(sp) + ta_span_pages(sp);
  for (size_t p = tail_page(sp); p < end; p++)
    if (!((ta_relaxed_load(&bits->purged[p / 64]) >> (p % 64)) & 1)) {
      bits->live[p] = 1;
      sp->dirty--;
      d->dirty--;
    }
  /* the bitmap range is clear: fresh segments are zero, and ta_slab_clear
   * cleared what an earlier slab here left */
}

/* Block [p, p + bsize) goes into / out of use: its OS pages' live counts.
 * Inline when the block sits on one page that stays in use (the common case
 * for small blocks); the transitions are counted in segment.c. */
static inline void block_live(ta_span_t *sp, ta_segment_t *s, uint8_t *p, ta_pagedelta_t *d) {
  size_t off = (size_t)(p - (uint8_t *)s);
  size_t first = off >> ta_ospage_shift, last = (off + sp->bsize - 1) >> ta_ospage_shift;
  uint16_t *live = ta_segbits(s)->live;
  if (first == last && live[first]) live[first]++;
  else ta_pages_live(s, first, last - first + 1, &sp->dirty, d);
}
static inline void block_dead(ta_span_t *sp, ta_segment_t *s, uint8_t *p, ta_pagedelta_t *d) {
  size_t off = (size_t)(p - (uint8_t *)s);
  size_t first = off >> ta_ospage_shift, last = (off + sp->bsize - 1) >> ta_ospage_shift;
  uint16_t *live = ta_segbits(s)->live;
  if (first == last && live[first] > 1) live[first]--;
  else ta_pages_dead(s, first, last - first + 1, &sp->dirty, d);
}

/* Faults in the pages of the slab's bytes [lo, hi) (offsets from its start)
 * that are not resident, in one call per run: the blocks a refill is about to
 * hand out. A page fault costs 10-15 us on a VM such as this project's test
 * machine, MADV_POPULATE_WRITE 0.7-2 us a page (README, "The v3 core"), and
 * the faults would be taken one by one under the bin lock as the links are
 * written. Only the refill's own pages: pages populated ahead would be dirty
 * pages that the timed purge returns and the next refill takes back, which
 * lengthens the purge delay (the idle burst of test_purge came back in 1.2 s
 * with 32 KiB ahead, 0.6-0.9 s without). */
static void populate(ta_span_t *sp, ta_segment_t *s, size_t lo, size_t hi, ta_pagedelta_t *d) {
  size_t top = (size_t)sp->reserved * sp->bsize;
  if (hi > top) hi = top;
  if (hi <= lo) return;
  size_t so = (size_t)(sp->start - (uint8_t *)s);
  size_t first = (so + lo) >> ta_ospage_shift, last = (so + hi - 1) >> ta_ospage_shift;
  ta_pages_populate(s, first, last - first + 1, &sp->dirty, d);
}

size_t ta_slab_take(ta_span_t *sp, ta_block_t **out, size_t want, ta_pagedelta_t *d) {
  ta_segment_t *s = ta_segment_of(sp);
  uint64_t *words = ta_segbits(s)->free + word_base(sp);
  size_t nw = word_count(sp), taken = 0, w = sp->scan;
  uintptr_t cookie = ta_cookie;
  ta_block_t *head = *out;
  /* 1. free blocks, lowest address first (their pages populated first when
   * they were purged: a page whose blocks were all free) */
  if (w < nw) { /* [lo, hi): from the first to the end of the last block to take, in segment offsets */
    size_t lo = 0, hi = 0, n = 0;
    for (size_t v = w; v < nw && n < want; v++)
      if (words[v]) {
        size_t g = (word_base(sp) + v) * 64;
        if (!n) lo = (g + (size_t)__builtin_ctzll(words[v])) * TA_ALIGN;
        hi = (g + 63 - (size_t)__builtin_clzll(words[v])) * TA_ALIGN + sp->bsize;
        n += (size_t)__builtin_popcountll(words[v]);
      }
    size_t so = (size_t)(sp->start - (uint8_t *)s);
    if (n) populate(sp, s, lo - so, hi - so, d);
  }
  for (; w < nw && taken < want; w++) {
    uint64_t x = words[w];
    while (x && taken < want) {
      ta_block_t *b = (ta_block_t *)((uint8_t *)s + ((word_base(sp) + w) * 64 + (size_t)__builtin_ctzll(x)) * TA_ALIGN);
      x &= x - 1;
      block_live(sp, s, (uint8_t *)b, d);
      ta_link_set(b, head);
      b->key = cookie;
      head = b;
      taken++;
    }
    words[w] = x;
    if (x) break; /* w keeps free bits */
  }
  sp->scan = (uint16_t)w;
  /* 2. blocks never handed out (their pages populated first) */
  if (taken < want && sp->carved < sp->reserved)
    populate(sp, s, (size_t)sp->carved * sp->bsize, (size_t)(sp->carved + want - taken) * sp->bsize, d);
  while (taken < want && sp->carved < sp->reserved) {
    ta_block_t *b = (ta_block_t *)(sp->start + (size_t)sp->carved * sp->bsize);
    sp->carved++;
    block_live(sp, s, (uint8_t *)b, d);
    ta_link_set(b, head);
    b->key = cookie;
    head = b;
    taken++;
  }
  *out = head;
  ta_relaxed_store(&sp->carved_bytes, sp->carved * sp->bsize);
  if (sp->cls < TA_TCLASSES) /* carved * e: see ta_span_t */
    ta_relaxed_store(&sp->fast_free_below, sp->carved * (sp->div_magic * sp->bsize));
  sp->used += (uint32_t)taken;
  return taken;
}

ta_put_t ta_slab_put(ta_span_t *sp, void *p, ta_pagedelta_t *d) {
  ta_segment_t *s = ta_segment_of(sp);
  size_t off = (size_t)((uint8_t *)p - sp->start);
  if (!ta_is_block_start(sp, p)) return TA_PUT_NOT_BLOCK;
  if (off >= (size_t)sp->carved * sp->bsize) return TA_PUT_NEVER;
  size_t g = (size_t)((uint8_t *)p - (uint8_t *)s) >> TA_GRANULE_SHIFT;
  uint64_t *word = &ta_segbits(s)->free[g / 64], bit = (uint64_t)1 << (g % 64);
  if (*word & bit) return TA_PUT_FREE; /* already free: a double free */
  *word |= bit;
  size_t rel = g / 64 - word_base(sp);
  if (rel < sp->scan) sp->scan = (uint16_t)rel;
  sp->used--;
  block_dead(sp, s, p, d);
  return TA_PUT_OK;
}

void ta_slab_clear(ta_span_t *sp, ta_pagedelta_t *d) {
  ta_assert(sp->used == 0);
  ta_segment_t *s = ta_segment_of(sp);
  ta_segbits_t *bits = ta_segbits(s);
  memset(bits->free + word_base(sp), 0, word_count(sp) * sizeof(uint64_t));
  size_t first = tail_page(sp), end = ta_span_first_page(sp) + ta_span_pages(sp);
  for (size_t p = first; p < end; p++)
    if (bits->live[p]) ta_pages_dead(s, p, 1, &sp->dirty, d); /* unpin */
}

size_t ta_slab_purge(ta_span_t *sp) {
  if (!sp->dirty) return 0;
  return ta_pages_purge(sp->arena, ta_segment_of(sp), ta_span_first_page(sp), ta_span_pages(sp), &sp->dirty);
}

/* Invariants (types.h): the bitmap holds exactly carved - used free blocks,
 * all block starts below carved; each OS page's live count is the number of
 * handed-out blocks overlapping it; dirty counts free resident pages. */
bool ta_slab_is_valid(ta_span_t *sp) {
  if (sp->kind != TA_SPAN_SLAB || sp->cls >= TA_CLASSES || sp->bsize != ta_class_size(sp->cls)) return false;
  if (sp->used == 0 || sp->used > sp->carved || sp->carved > sp->reserved) return false;
  if ((sp->used == sp->reserved) != (sp->bucket == TA_BUCKET_NONE)) return false;
  ta_segment_t *s = ta_segment_of(sp);
  ta_segbits_t *bits = ta_segbits(s);
  uint64_t *words = bits->free + word_base(sp);
  size_t nw = word_count(sp), free_bits = 0;
  for (size_t w = 0; w < nw; w++) {
    free_bits += (size_t)__builtin_popcountll(words[w]);
    if (w < sp->scan && words[w]) return false;
  }
  if (free_bits != sp->carved - sp->used) return false;
  size_t first = ta_span_first_page(sp), n = ta_span_pages(sp), dirty = 0;
  uint16_t live[TA_SLICE_SIZE / 4096 * 16]; /* a slab spans at most 16 slices */
  if (n > sizeof live / sizeof live[0]) return false;
  memset(live, 0, n * sizeof live[0]);
  for (size_t k = 0; k < sp->carved; k++) {
    size_t so = (size_t)(sp->start - (uint8_t *)s) + k * sp->bsize, g = so >> TA_GRANULE_SHIFT;
    if ((bits->free[g / 64] >> (g % 64)) & 1) continue;
    for (size_t p = so >> ta_ospage_shift; p <= (so + sp->bsize - 1) >> ta_ospage_shift; p++) live[p - first]++;
  }
  for (size_t p = tail_page(sp) - first; p < n; p++) { /* pinned while resident */
    bool purged = (ta_relaxed_load(&bits->purged[(first + p) / 64]) >> ((first + p) % 64)) & 1;
    live[p] = purged ? 0 : 1;
  }
  for (size_t p = 0; p < n; p++) {
    if (live[p] != bits->live[first + p]) return false;
    bool purged = (ta_relaxed_load(&bits->purged[(first + p) / 64]) >> ((first + p) % 64)) & 1;
    if (live[p] && purged) return false;
    if (!live[p] && !purged) dirty++;
  }
  return dirty == sp->dirty;
}
