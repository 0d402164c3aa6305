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
  sp->keyless = 0;
  sp->purging = 0;
  ta_relaxed_store(&sp->prof_sampled, 0);
  ta_relaxed_store(&sp->prof_spill, 0);
  for (size_t i = 0; i < 4; i++) ta_relaxed_store(&sp->prof_offs[i], 0);
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

static inline bool page_purged(ta_segbits_t *bits, size_t p) {
  return (ta_relaxed_load(&bits->purged[p / 64]) >> (p % 64)) & 1;
}

/* The carved blocks that start on OS page p of the segment: [*k0, k1). */
static void page_blocks(const ta_span_t *sp, size_t p, size_t *k0, size_t *k1) {
  size_t so = (size_t)(sp->start - (uint8_t *)ta_segment_of(sp));
  size_t a = p << ta_ospage_shift, b = (p + 1) << ta_ospage_shift;
  a = a > so ? a - so : 0;
  b = b > so ? b - so : 0;
  size_t first = (a + sp->bsize - 1) / sp->bsize, end = (b + sp->bsize - 1) / sp->bsize;
  *k0 = first < sp->carved ? first : sp->carved;
  *k1 = end < sp->carved ? end : sp->carved;
}

/* Does a purged OS page hold a carved block's start? (ta_span_t.keyless) */
static bool keyless_now(const ta_span_t *sp) {
  if (!sp->carved) return false;
  ta_segment_t *s = ta_segment_of(sp);
  ta_segbits_t *bits = ta_segbits(s);
  size_t so = (size_t)(sp->start - (uint8_t *)s);
  size_t last = (so + (size_t)(sp->carved - 1) * sp->bsize) >> ta_ospage_shift;
  for (size_t p = so >> ta_ospage_shift; p <= last; p++) {
    if (!page_purged(bits, p)) continue;
    size_t k0, k1;
    page_blocks(sp, p, &k0, &k1);
    if (k0 < k1) return true;
  }
  return false;
}

/* The free fast path's bound (ta_span_t): carved * e, or 0 for a slab the
 * fast path must not take (not a thread-cache class, keyless, or holding a
 * block the heap profiler sampled). */
static uint64_t fast_free_bound(const ta_span_t *sp) {
  return sp->cls < TA_TCLASSES && !sp->keyless && !ta_relaxed_load(&sp->prof_sampled) && !sp->purging
             ? sp->carved * (sp->div_magic * sp->bsize)
             : 0;
}
static void fast_free_set(ta_span_t *sp) {
  uint64_t below = fast_free_bound(sp);
  ta_relaxed_store(&sp->fast_free_below, below);
}

/* Purged OS page p of a keyless slab comes back into use: the free blocks
 * starting on it get the cookie again (the page is being faulted in anyway). */
static void rekey_page(ta_span_t *sp, ta_segment_t *s, size_t p) {
  size_t k0, k1;
  page_blocks(sp, p, &k0, &k1);
  uint64_t *free = ta_segbits(s)->free;
  for (size_t k = k0; k < k1; k++) {
    ta_block_t *b = (ta_block_t *)(sp->start + k * sp->bsize);
    size_t g = (size_t)((uint8_t *)b - (uint8_t *)s) >> TA_GRANULE_SHIFT;
    if ((free[g / 64] >> (g % 64)) & 1) b->key = ta_cookie;
  }
}

/* The free blocks of a keyless slab's purged pages among [first, last] get
 * the cookie back (block_live, before the pages go into use). */
static __attribute__((noinline)) void rekey_range(ta_span_t *sp, ta_segment_t *s, size_t first, size_t last) {
  for (size_t i = first; i <= last; i++)
    if (page_purged(ta_segbits(s), i)) rekey_page(sp, s, i);
}

/* The block at segment offset so, bsize bytes, goes into use: its OS pages'
 * live counts. Inline when the block sits on one page already in use (the
 * common case for small blocks); the transitions are counted in segment.c.
 * The slab's fields come in registers (the stores into the blocks and the
 * counts could alias them; the counts are addressed from s, which leaves
 * the take loops one more register). put_run does the reverse. */
static inline __attribute__((always_inline)) void block_live(ta_span_t *sp, ta_segment_t *s, unsigned shift,
                                                             size_t bsize, size_t so, ta_pagedelta_t *d) {
  uint16_t *live = ta_segbits(s)->live; /* a constant offset from s: no register of its own */
  size_t first = so >> shift, last = (so + bsize - 1) >> shift;
  if (first == last) {
    if (live[first]) {
      live[first]++;
      return;
    }
  } else if (last == first + 1 && live[first] && live[last]) { /* across two pages in use */
    live[first]++;
    live[last]++;
    return;
  }
  if (ta_unlikely(sp->keyless)) rekey_range(sp, s, first, last);
  ta_pages_live(s, first, last - first + 1, &sp->dirty, d);
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
  ta_segbits_t *bits = ta_segbits(s);
  if (!ta_pages_any_purged(bits, first, last)) return; /* the common case: a word or two of the bitmap */
  if (!sp->keyless) {
    ta_pages_populate(s, first, last - first + 1, &sp->dirty, d);
    return;
  }
  /* A keyless slab: a purged page it takes back gets the cookie into its
   * free blocks (rekey_page), which block_live does only for pages still
   * purged when their block goes live: here, once populated. */
  for (size_t c = first; c <= last; c += 64) {
    size_t e = last + 1 - c < 64 ? last + 1 : c + 64;
    uint64_t was = 0;
    for (size_t p = c; p < e; p++)
      if (page_purged(bits, p)) was |= (uint64_t)1 << (p - c);
    if (!was) continue;
    ta_pages_populate(s, c, e - c, &sp->dirty, d);
    for (; was; was &= was - 1) {
      size_t p = c + (size_t)__builtin_ctzll(was);
      if (!page_purged(bits, p)) rekey_page(sp, s, p);
    }
  }
}

/* The free bitmap's words for the blocks starting in [lo, hi] (segment
 * offsets), written once per OS page of the bitmap as the blocks are carved:
 * a block's bit is first set when it comes back, and a page of the bitmap
 * that no block had come back to would be faulted in then, under the bin
 * lock, by a flush (a trim's included: test_fuzz saw a trim raise RSS by 36
 * KiB, nine such pages, and by 4 KiB while the step below missed pages).
 * The words are this slab's: its bin lock guards them. The rest of the
 * bitmap stays untouched, as a fresh segment's is. */
void ta_slab_touch_bitmap(ta_segment_t *s, size_t lo, size_t hi) {
  /* by address, a word on each page: the bitmap starts 64 bytes into a page
   * (TA_SEGBITS_OFFSET), so every 512th word is not a page's first and a
   * step by words left the last page of a range unwritten (read, it was the
   * zero page; test_pages) */
  uint64_t *free = ta_segbits(s)->free;
  uintptr_t page = (uintptr_t)1 << ta_ospage_shift;
  uintptr_t a = (uintptr_t)&free[lo >> TA_GRANULE_SHIFT >> 6],
            end = (uintptr_t)&free[hi >> TA_GRANULE_SHIFT >> 6];
  for (; a <= end; a = (a | (page - 1)) + 1) {
    volatile uint64_t *w = (volatile uint64_t *)a;
    *w = *w;
  }
}

#define TAKE_CHUNK 64

size_t ta_slab_take(ta_span_t *sp, ta_block_t **out, size_t want, ta_pagedelta_t *d) {
  ta_segment_t *s = ta_segment_of(sp);
  uint64_t *words = ta_segbits(s)->free + word_base(sp);
  size_t nw = word_count(sp), taken = 0, w = sp->scan;
  uintptr_t cookie = ta_cookie, mask = (uintptr_t)TA_LINK_MASK; /* in registers: the stores below could alias them */
  ta_block_t *head = *out;
  unsigned shift = (unsigned)ta_ospage_shift;
  size_t bsize = sp->bsize, wb = word_base(sp), so0 = (size_t)(sp->start - (uint8_t *)s);
  /* 1. free blocks, lowest address first, up to TAKE_CHUNK at a time: one
   * scan of the bitmap gathers their offsets (and clears their bits), one
   * call populates their pages (a page whose blocks were all free may have
   * been purged), then each goes into use (budget about 15 instructions a
   * block: its page's live count, its link and cookie). */
  size_t avail = sp->carved - sp->used; /* free bits in the bitmap: the scan stops at the last one */
  while (avail && taken < want) {
    uint32_t got[TAKE_CHUNK]; /* segment offsets */
    size_t k = 0, lim = want - taken < TAKE_CHUNK ? want - taken : TAKE_CHUNK;
    if (lim > avail) lim = avail;
    for (; w < nw && k < lim; w++) {
      uint64_t x = words[w];
      while (x && k < lim) {
        got[k++] = (uint32_t)(((wb + w) * 64 + (size_t)__builtin_ctzll(x)) * TA_ALIGN);
        x &= x - 1;
      }
      words[w] = x;
      if (x) break; /* w keeps free bits */
    }
    if (ta_unlikely(!k)) break; /* not reached: the bitmap holds avail bits at or above scan */
    avail -= k;
    populate(sp, s, got[0] - so0, got[k - 1] + bsize - so0, d);
    for (size_t i = 0; i < k; i++) {
      ta_block_t *b = (ta_block_t *)((uint8_t *)s + got[i]);
      block_live(sp, s, shift, bsize, got[i], d);
      ta_link_set_m(b, head, mask);
      b->key = cookie;
      head = b;
    }
    taken += k;
  }
  sp->scan = (uint16_t)w;
  /* 2. blocks never handed out (their pages populated first) */
  size_t carve = sp->reserved - sp->carved;
  if (carve > want - taken) carve = want - taken;
  if (carve) {
    size_t so = so0 + (size_t)sp->carved * bsize, end = so + carve * bsize;
    populate(sp, s, (size_t)sp->carved * bsize, (size_t)(sp->carved + carve) * bsize, d);
    ta_slab_touch_bitmap(s, so, end - bsize);
    for (; so < end; so += bsize) {
      ta_block_t *b = (ta_block_t *)((uint8_t *)s + so);
      block_live(sp, s, shift, bsize, so, d);
      ta_link_set_m(b, head, mask);
      b->key = cookie;
      head = b;
    }
    sp->carved += (uint32_t)carve;
    taken += carve;
  }
  *out = head;
  ta_relaxed_store(&sp->carved_bytes, sp->carved * sp->bsize);
  if (sp->keyless) sp->keyless = keyless_now(sp);
  fast_free_set(sp);
  sp->used += (uint32_t)taken;
  return taken;
}

/* Puts back into slab sp the blocks at the head of the list *bp that lie in
 * it, or only the first when `one` (a thread cache's flush is mostly runs of
 * one slab: 21 blocks on average in a Python run). Per block, with the
 * slab's fields held in registers (about 50 instructions in all under
 * callgrind, 94 before): the carved and block-start tests, its bit (a set
 * bit is a double free), its pages' live counts, the next link. Returns TA_PUT_OK with *bp the first block not put
 * (one of another slab, or NULL: at the list's end, or after the one block
 * of `one`, whose link is not read), or the failure with *bp the
 * offending block; *n grows by the blocks put either way. */
static inline __attribute__((always_inline)) ta_put_t put_run(ta_span_t *sp, ta_block_t **bp, bool one, size_t *n, ta_pagedelta_t *d) {
  ta_segment_t *s = ta_segment_of(sp);
  uint8_t *base = (uint8_t *)s + ta_span_index(sp) * TA_SLICE_SIZE, *start = sp->start;
  size_t span_bytes = (size_t)sp->slices * TA_SLICE_SIZE, bsize = sp->bsize, carved = (size_t)sp->carved * bsize;
  uint64_t magic = sp->div_magic;
  uintptr_t mask = (uintptr_t)TA_LINK_MASK; /* in a register: the stores below could alias it */
  unsigned shift = ta_ospage_shift;
  ta_segbits_t *bits = ta_segbits(s); /* a constant offset from s: no register of its own */
  size_t lowest = SIZE_MAX, k = 0, freed = 0;
  ta_put_t put = TA_PUT_OK;
  ta_block_t *b = *bp;
  while (b) {
    size_t off = (size_t)((uint8_t *)b - start);
    if (ta_unlikely(off >= carved || (uint64_t)off * magic >= magic)) {
      if ((size_t)((uint8_t *)b - base) >= span_bytes) break; /* another slab's: the run ends */
      put = ta_is_block_start(sp, b) ? TA_PUT_NEVER : TA_PUT_NOT_BLOCK;
      break;
    }
    size_t so = (size_t)((uint8_t *)b - (uint8_t *)s), g = so >> TA_GRANULE_SHIFT;
    uint64_t bit = (uint64_t)1 << (g % 64);
    if (ta_unlikely(bits->free[g / 64] & bit)) { /* already free */
      put = TA_PUT_FREE;
      break;
    }
    ta_block_t *next = one ? NULL : ta_link_get_m(b, mask);
    bits->free[g / 64] |= bit;
    if (g / 64 < lowest) lowest = g / 64;
    /* its pages' live counts: those that reach 0 are free (dirty) pages.
     * Inline, with no call in the loop, so the loop keeps its values in
     * registers (with ta_pages_dead called here, seven were reloaded from
     * the stack each block). */
    for (size_t p = so >> shift, last = (so + bsize - 1) >> shift; p <= last; p++) freed += --bits->live[p] == 0;
    k++;
    b = next;
  }
  sp->dirty = (uint16_t)(sp->dirty + freed);
  d->dirty += (int64_t)freed;
  if (k) {
    size_t rel = lowest - word_base(sp);
    if (rel < sp->scan) sp->scan = (uint16_t)rel;
    sp->used -= (uint32_t)k;
    *n += k;
  }
  *bp = b;
  return put;
}

ta_put_t ta_slab_put_run(ta_span_t *sp, ta_block_t **bp, size_t *n, ta_pagedelta_t *d) {
  return put_run(sp, bp, false, n, d);
}

ta_put_t ta_slab_put(ta_span_t *sp, void *p, ta_pagedelta_t *d) {
  ta_block_t *b = p;
  size_t n = 0;
  ta_put_t put = put_run(sp, &b, true, &n, d);
  return put == TA_PUT_OK && !n ? TA_PUT_NOT_BLOCK : put; /* p outside the slab */
}

void ta_slab_clear(ta_span_t *sp, ta_pagedelta_t *d) {
  ta_assert(sp->used == 0);
  ta_segment_t *s = ta_segment_of(sp);
  ta_segbits_t *bits = ta_segbits(s);
  /* Only the words that hold carved blocks' bits: the rest are zero, and a
   * page of the bitmap that no refill reached is not resident (a trim would
   * fault it in to write zeros there: test_fuzz saw RSS rise by 36 KiB). */
  if (sp->carved) {
    size_t last = ((size_t)(sp->start - (uint8_t *)s) + (size_t)(sp->carved - 1) * sp->bsize) >> TA_GRANULE_SHIFT >> 6;
    memset(bits->free + word_base(sp), 0, (last + 1 - word_base(sp)) * sizeof(uint64_t));
  }
  size_t first = tail_page(sp), end = ta_span_first_page(sp) + ta_span_pages(sp);
  for (size_t p = first; p < end; p++)
    if (bits->live[p]) ta_pages_dead(s, p, 1, &sp->dirty, d); /* unpin */
}

/* A purged page reads 0, cookies included: a second free of a block on it
 * would pass the fast path's test, so the slab's frees take the slow path
 * (the bitmap) until every such page is back in use. The fast path is shut
 * before the pages are purged, and stays shut while the slab is purging
 * (fast_free_bound); a double free racing with the purge itself may still
 * pass. */
size_t ta_slab_purge_begin(ta_span_t *sp, ta_pagerun_t *runs, size_t max) {
  ta_relaxed_store(&sp->fast_free_below, 0);
  atomic_thread_fence(memory_order_seq_cst);
  sp->purging = 1;
  if (!sp->dirty || ta_purge_blocked()) return 0;
  return ta_pages_purge_plan(ta_segment_of(sp), ta_span_first_page(sp), ta_span_pages(sp), runs, max);
}

size_t ta_slab_purge_end(ta_span_t *sp, const ta_pagerun_t *runs, size_t count) {
  size_t bytes = ta_pages_purge_end(sp->arena, ta_segment_of(sp), runs, count, &sp->dirty);
  sp->purging = 0;
  if (bytes) sp->keyless = keyless_now(sp); /* nothing purged: as it was */
  fast_free_set(sp);
  return bytes;
}

/* Block p of the slab was sampled (+1) or its sample removed (-1): while
 * any is, its frees take the slow path (ta_span_t.prof_sampled), which
 * finds the sampled ones by their offsets (prof_offs). */
void ta_slab_prof_mark(ta_span_t *sp, void *p, int delta) {
  uint32_t off = (uint32_t)((uint8_t *)p - sp->start) + 1, n = ta_relaxed_load(&sp->prof_sampled);
  size_t i = 0;
  if (delta > 0) {
    while (i < 4 && ta_relaxed_load(&sp->prof_offs[i])) i++;
    if (i < 4) ta_relaxed_store(&sp->prof_offs[i], off);
    else ta_relaxed_store(&sp->prof_spill, 1);
    n++;
  } else {
    while (i < 4 && ta_relaxed_load(&sp->prof_offs[i]) != off) i++;
    if (i < 4) ta_relaxed_store(&sp->prof_offs[i], 0);
    if (--n == 0) ta_relaxed_store(&sp->prof_spill, 0);
  }
  ta_relaxed_store(&sp->prof_sampled, n);
  fast_free_set(sp);
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
  if (sp->keyless != keyless_now(sp)) return false;
  if (ta_relaxed_load(&sp->fast_free_below) != fast_free_bound(sp)) return false;
  for (size_t k = 0; k < sp->carved; k++) {
    size_t so = (size_t)(sp->start - (uint8_t *)s) + k * sp->bsize, g = so >> TA_GRANULE_SHIFT;
    if ((bits->free[g / 64] >> (g % 64)) & 1) { /* free: its cookie, unless its page was purged */
      if (!page_purged(bits, so >> ta_ospage_shift) && ((ta_block_t *)((uint8_t *)s + so))->key != ta_cookie)
        return false;
      continue;
    }
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
