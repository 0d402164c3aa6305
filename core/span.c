/* An arena's page heap: free spans in bins by length (best fit, most recently
 * freed first, so reuse finds warm pages), split on allocation and coalesced
 * on free; their purge after purge_delay_ms; empty segments unmapped after
 * unmap_delay_ms. And large blocks: one block per span, up to TA_LARGE_MAX.
 * Everything here runs under the arena lock, but the purge's madvise and
 * munmap calls (ta_spans_purge_chunk, ta_segments_unmap). */
#include "internal.h"

#include <errno.h>

static void list_insert(ta_arena_t *a, ta_span_t *sp) {
  ta_span_t **b = &a->spans[sp->slices];
  sp->prev = NULL;
  sp->next = *b;
  if (*b) (*b)->prev = sp;
  *b = sp;
  a->span_mask |= (uint64_t)1 << sp->slices;
}

static void list_remove(ta_arena_t *a, ta_span_t *sp) {
  if (sp->prev) sp->prev->next = sp->next;
  else a->spans[sp->slices] = sp->next;
  if (sp->next) sp->next->prev = sp->prev;
  if (!a->spans[sp->slices]) a->span_mask &= ~((uint64_t)1 << sp->slices);
  sp->next = sp->prev = NULL;
}

/* Marks slices [idx, idx + n) of s as one free span headed at idx. */
static ta_span_t *make_free(ta_arena_t *a, ta_segment_t *s, size_t idx, size_t n, uint64_t freed_ms, size_t dirty) {
  for (size_t i = 0; i < n; i++) s->spans[idx + i].head_off = (uint16_t)i;
  ta_span_t *sp = &s->spans[idx];
  sp->kind = TA_SPAN_FREE;
  sp->cls = TA_NO_CLASS;
  ta_relaxed_store(&sp->fast_free_below, 0);
  sp->slices = (uint16_t)n;
  sp->arena = a;
  sp->bsize = 0;
  sp->used = 0;
  sp->start = (uint8_t *)s + idx * TA_SLICE_SIZE;
  sp->freed_ms = freed_ms;
  sp->dirty = (uint16_t)dirty;
  sp->freed_mark = 0;
  sp->purging = 0;
  list_insert(a, sp);
  return sp;
}

/* A freed large block's first 16 bytes hold a mark (ta_large_free) until
 * its span is taken again or merged into another free span: a mark changed
 * by then was written after the free (a use after free that a later owner
 * of the memory would see). Not looked at where the OS took the page back
 * (purged: it reads 0) or the slice is inaccessible (hardened: a freed
 * large span stays so). `what`: the call that found it. a->lock held;
 * released before the report. */
static uint64_t mark_of(const uint8_t *p) {
  return ((uintptr_t)p ^ ta_cookie) * 0x9e3779b97f4a7c15ull;
}

static void mark_check(ta_arena_t *a, ta_span_t *sp, const char *what) {
  if (!sp->freed_mark) return;
  uint8_t *p = sp->start + sp->freed_mark - 1;
  sp->freed_mark = 0;
  ta_segment_t *s = ta_segment_of(p);
  size_t pg = (size_t)(p - (uint8_t *)s) >> ta_ospage_shift, slice = (size_t)(p - (uint8_t *)s) >> TA_SLICE_SHIFT;
  ta_segbits_t *bits = ta_segbits(s);
  if (!((bits->rw_slices >> slice) & 1) || ((ta_relaxed_load(&bits->purged[pg / 64]) >> (pg % 64)) & 1)) return;
  const uint64_t *w = (const uint64_t *)p;
  if (ta_likely(w[0] == mark_of(p) && w[1] == ~mark_of(p))) return;
  ta_unlock(&a->lock);
  ta_binlock_t *bin = ta_bin_lock_held;
  ta_bin_lock_held = NULL;
  if (bin) ta_unlock(bin);
  ta_error(what, p);
}
#define MARK_MALLOC "malloc: heap corruption (write after free) of large block"
#define MARK_FREE "free: heap corruption (write after free) of large block"

/* Resident pages first. A free span is often part purged, part resident:
 * coalesce joins a slab freed a moment ago with neighbours the purger
 * emptied long before. Best fit alone took the span's first slices, purged
 * or not, so a new slab refaulted pages (25-35 us each on this project's VM)
 * while resident free pages next to them waited to be purged in turn: a
 * Celery pool process of session 24 took 28k of its 34k refaults carving
 * new slabs. So the allocation looks at up to WARM_LOOK fitting spans, best
 * fit first, and takes the window of n slices holding the most resident
 * pages (the first such, and the best-fitting span, on a tie); a whole
 * resident window ends the search. The common case costs nothing more: the
 * best fit's first window is all resident. Under the arena lock. */
enum { WARM_LOOK = 16 };

/* Resident (unpurged) pages of slice i of s. */
static size_t slice_warm(ta_segment_t *s, size_t i) {
  size_t per = TA_SLICE_SIZE >> ta_ospage_shift;
  if (per > 64 || 64 % per) return ta_pages_unpurged(s, i * per, per);
  size_t first = i * per;
  uint64_t w = ta_relaxed_load(&ta_segbits(s)->purged[first / 64]) >> (first % 64);
  if (per < 64) w &= ((uint64_t)1 << per) - 1;
  return per - (size_t)__builtin_popcountll(w);
}

/* The offset (in slices) of sp's window of n slices with the most resident
 * pages; *warm: how many. */
static size_t warm_window(ta_span_t *sp, size_t n, size_t *warm) {
  ta_segment_t *s = ta_segment_of(sp);
  size_t idx = ta_span_index(sp), have = sp->slices, c[TA_SLICES], sum = 0, best = 0, at = 0;
  for (size_t i = 0; i < have; i++) c[i] = slice_warm(s, idx + i);
  for (size_t i = 0; i < n; i++) sum += c[i];
  best = sum;
  for (size_t j = 1; j + n <= have; j++) {
    sum += c[j + n - 1] - c[j - 1];
    if (sum > best) best = sum, at = j;
  }
  *warm = best;
  return at;
}

static ta_span_t *warm_pick(ta_arena_t *a, uint64_t fit, size_t n, size_t *off) {
  size_t full = n * (TA_SLICE_SIZE >> ta_ospage_shift), best_warm = 0, looked = 0;
  ta_span_t *best = a->spans[__builtin_ctzll(fit)];
  *off = 0;
  for (uint64_t m = fit; m && looked < WARM_LOOK; m &= m - 1)
    for (ta_span_t *sp = a->spans[__builtin_ctzll(m)]; sp && looked < WARM_LOOK; sp = sp->next, looked++) {
      if (sp->dirty <= best_warm) continue; /* cannot hold a warmer window */
      if (sp->dirty == (size_t)sp->slices * (TA_SLICE_SIZE >> ta_ospage_shift)) { /* all resident: no scan */
        *off = 0;
        return sp;
      }
      size_t w, j = warm_window(sp, n, &w);
      if (w <= best_warm) continue;
      best = sp, best_warm = w, *off = j;
      if (w == full) return best;
    }
  return best;
}

ta_span_t *ta_span_alloc(ta_arena_t *a, size_t n, ta_span_kind_t kind) {
  ta_assert(n >= 1 && n < TA_SLICES);
  uint64_t fit = a->span_mask & (~(uint64_t)0 << n);
  if (!fit) {
    ta_segment_t *s = ta_segment_new(a);
    if (!s) return NULL;
    make_free(a, s, 1, TA_SLICES - 1, s->empty_since_ms, 0);
    fit = a->span_mask & (~(uint64_t)0 << n);
  }
  size_t off;
  ta_span_t *sp = warm_pick(a, fit, n, &off);
  ta_segment_t *s = ta_segment_of(sp);
  size_t idx = ta_span_index(sp), have = sp->slices, dirty = sp->dirty;
  if (!ta_segment_commit(s, idx + off, n)) return NULL;
  mark_check(a, sp, MARK_MALLOC);
  list_remove(a, sp);
  if (off) { /* the slices before the window stay free, a span of their own */
    size_t per = TA_SLICE_SIZE >> ta_ospage_shift;
    size_t head_dirty = ta_pages_unpurged(s, idx * per, off * per);
    make_free(a, s, idx, off, sp->freed_ms, head_dirty);
    sp = make_free(a, s, idx + off, have - off, sp->freed_ms, dirty - head_dirty);
    list_remove(a, sp);
    idx += off, have -= off, dirty -= head_dirty;
  }
  if (have > n) {
    size_t per = TA_SLICE_SIZE >> ta_ospage_shift;
    size_t tail_dirty = ta_pages_unpurged(s, (idx + n) * per, (have - n) * per);
    make_free(a, s, idx + n, have - n, sp->freed_ms, tail_dirty);
    dirty -= tail_dirty;
  }
  for (size_t i = 0; i < n; i++) s->spans[idx + i].head_off = (uint16_t)i;
  sp->slices = (uint16_t)n;
  sp->kind = (uint8_t)kind;
  ta_relaxed_store(&sp->fast_free_below, 0);
  sp->dirty = (uint16_t)dirty;
  sp->arena = a;
  sp->start = (uint8_t *)s + idx * TA_SLICE_SIZE;
  if (s->used_slices == 0) {
    ta_relaxed_sub(&a->empty_segments, 1);
    if (s->bits_out) { /* its bitmap's pages fault back in as slabs write them: resident again */
      uint8_t *unused;
      ta_relaxed_add(&a->resident_pages, (int64_t)ta_segment_bits_pages(s, &unused));
      s->bits_out = 0;
    }
  }
  s->used_slices += (uint32_t)n;
  return sp;
}

/* Slices [idx, idx + n) become one free span with its free neighbours (not
 * one being purged: that one joins when its purge places it back); the
 * write-after-free mark of a neighbour that joins is checked. The span. */
static ta_span_t *coalesce(ta_arena_t *a, ta_segment_t *s, size_t idx, size_t n, size_t dirty, uint64_t freed_ms) {
  if (idx + n < TA_SLICES) { /* the next span */
    ta_span_t *nx = &s->spans[idx + n];
    if (nx->kind == TA_SPAN_FREE && !nx->purging) {
      mark_check(a, nx, MARK_FREE);
      list_remove(a, nx);
      n += nx->slices;
      dirty += nx->dirty;
      if (nx->freed_ms > freed_ms) freed_ms = nx->freed_ms;
    }
  }
  if (idx > 1) { /* and the previous one */
    ta_span_t *pv = &s->spans[idx - 1];
    pv -= pv->head_off;
    if (pv->kind == TA_SPAN_FREE && !pv->purging) {
      mark_check(a, pv, MARK_FREE);
      list_remove(a, pv);
      n += pv->slices;
      dirty += pv->dirty;
      idx = ta_span_index(pv);
      if (pv->freed_ms > freed_ms) freed_ms = pv->freed_ms;
    }
  }
  return make_free(a, s, idx, n, freed_ms, dirty);
}

ta_span_t *ta_span_free(ta_arena_t *a, ta_span_t *sp) {
  ta_segment_t *s = ta_segment_of(sp);
  size_t idx = ta_span_index(sp), n = sp->slices, dirty = sp->dirty;
  ta_assert(sp->kind == TA_SPAN_SLAB || sp->kind == TA_SPAN_LARGE);
  s->used_slices -= (uint32_t)n;
  sp->kind = TA_SPAN_FREE;
  sp->cls = TA_NO_CLASS;
  ta_relaxed_store(&sp->fast_free_below, 0);
  uint64_t now = ta_prim_clock_ms();
  ta_span_t *head = coalesce(a, s, idx, n, dirty, now);
  if (s->used_slices == 0) {
    s->empty_since_ms = now;
    ta_relaxed_add(&a->empty_segments, 1);
  }
  return head;
}

/* The madvise calls run without the arena lock, as a slab's do (arena.c):
 * the spans of a chunk are taken off the page heap's lists and marked
 * purging under the lock, so no allocation takes them and no free joins
 * them (coalesce), purged with no lock held, and placed back, joined with
 * the neighbours freed meanwhile, under the lock again. The caller holds
 * purge_lock (arena.c) across the chunk. */
enum { SPANS_CHUNK = 16, SPANS_RUNS = 512 };

size_t ta_spans_purge_chunk(ta_arena_t *a, uint64_t now, uint64_t delay, bool all, bool split, uint32_t pass,
                            bool *more) {
  ta_span_t *spans[SPANS_CHUNK];
  size_t nruns[SPANS_CHUNK], ns = 0, nr = 0, bytes = 0;
  ta_pagerun_t runs[SPANS_RUNS];
  *more = false;
  ta_lock(&a->lock);
  for (uint64_t m = a->span_mask; m && !*more; m &= m - 1)
    for (ta_span_t *sp = a->spans[__builtin_ctzll(m)], *next; sp; sp = next) {
      next = sp->next;
      if (!sp->dirty || sp->purge_pass == pass || !(all || sp->freed_ms + delay <= now)) continue;
      if (ns == SPANS_CHUNK || nr + ta_span_pages(sp) / 2 + 1 > SPANS_RUNS) {
        *more = true;
        break;
      }
      list_remove(a, sp);
      sp->purging = 1;
      sp->purge_pass = pass;
      nruns[ns] = ta_purge_blocked() ? 0
                                     : ta_pages_purge_plan_whole(ta_segment_of(sp), ta_span_first_page(sp),
                                                                 ta_span_pages(sp), split, runs + nr, SPANS_RUNS - nr);
      nr += nruns[ns];
      spans[ns++] = sp;
    }
  ta_unlock(&a->lock);
  if (!ns) return 0;
  for (size_t i = 0, r = 0; i < ns; r += nruns[i++]) ta_pages_purge_runs(ta_segment_of(spans[i]), runs + r, nruns[i]);
  ta_lock(&a->lock);
  for (size_t i = 0, r = 0; i < ns; r += nruns[i++]) {
    ta_span_t *sp = spans[i];
    ta_segment_t *s = ta_segment_of(sp);
    bytes += ta_pages_purge_end(a, s, runs + r, nruns[i], &sp->dirty);
    sp->purging = 0;
    coalesce(a, s, ta_span_index(sp), sp->slices, sp->dirty, sp->freed_ms);
  }
  ta_unlock(&a->lock);
  return bytes;
}

/* Unmaps the empty segments that are purged and idle unmap_delay_ms (all, a
 * trim: at once); under mlock, where nothing can be purged, purged or not (v2 kept
 * them for ever). They leave every structure under the arena lock and are
 * unmapped after it, a few at a time. One still waiting returns the pages
 * of its header that its free bitmap fills (all zero in an empty segment:
 * 28 of a header's 44 KiB at 4 KiB pages), its free span off the lists and
 * marked purging meanwhile, as a purge's (so no span is taken from it and
 * no slab writes the bitmap while the pages go). */
size_t ta_segments_unmap(ta_arena_t *a, uint64_t now, bool all) {
  enum { MAX = 16 };
  ta_segment_t *gone[MAX], *wait[MAX];
  size_t n, nw, bytes = 0;
  bool again;
  uint64_t unmap_delay = (uint64_t)ta_opt(TA_OPT_UNMAP_DELAY_MS);
  uint8_t *first;
  do {
    n = nw = 0;
    ta_lock(&a->lock);
    bool locked = ta_relaxed_load(&a->empty_segments) > 0 && ta_purge_blocked();
    for (ta_segment_t *s = a->segments, *next; s && n < MAX && nw < MAX; s = next) {
      next = s->next;
      ta_span_t *sp = &s->spans[1]; /* an empty segment is one free span */
      if (s->used_slices != 0 || sp->slices != TA_SLICES - 1 || sp->purging || (sp->dirty != 0 && !locked)) continue;
      if (all || s->empty_since_ms + unmap_delay <= now) {
        list_remove(a, sp);
        bytes += ta_segment_header_bytes() + ((size_t)sp->dirty << ta_ospage_shift);
        if (s->bits_out) bytes -= ta_segment_bits_pages(s, &first) << ta_ospage_shift;
        ta_segment_unlink(a, s);
        gone[n++] = s;
      } else if (!s->bits_out && !locked && ta_segment_bits_pages(s, &first)) {
        list_remove(a, sp);
        sp->purging = 1;
        wait[nw++] = s;
      }
    }
    ta_unlock(&a->lock);
    for (size_t i = 0; i < n; i++) ta_prim_unmap(gone[i], gone[i]->map_size);
    again = n == MAX;
    if (!nw) continue;
    size_t out[MAX];
    for (size_t i = 0; i < nw; i++) {
      out[i] = ta_segment_bits_pages(wait[i], &first);
      if (ta_prim_purge(first, out[i] << ta_ospage_shift) != 0) out[i] = 0;
    }
    ta_lock(&a->lock);
    for (size_t i = 0; i < nw; i++) {
      ta_span_t *sp = &wait[i]->spans[1];
      sp->purging = 0;
      if (out[i]) {
        wait[i]->bits_out = 1;
        ta_relaxed_sub(&a->resident_pages, (int64_t)out[i]);
        bytes += out[i] << ta_ospage_shift;
        again |= nw == MAX; /* more may wait; a failed madvise is not tried again here */
      }
      coalesce(a, wait[i], 1, sp->slices, sp->dirty, sp->freed_ms);
    }
    ta_unlock(&a->lock);
  } while (again);
  return bytes;
}

#define TA_REFAULT_RUNS 8 /* runs of a block populated at once; the others fault lazily */

/* One block in a run of slices (slice-aligned: up to 64 KiB alignment). The
 * pages that were resident before a purge come back in one populate call per
 * run, not a fault per page; the others fault when the program touches them
 * (v2 populated the whole span: a 1.9 MiB block with 64 KiB written came back
 * as 1856 KiB of RSS). */
void *ta_large_alloc(ta_arena_t *a, size_t n) {
  size_t slices = (n + TA_SLICE_SIZE - 1) / TA_SLICE_SIZE, runs = 0;
  ta_pagerun_t run[TA_REFAULT_RUNS];
  ta_lock(&a->lock);
  ta_span_t *sp = ta_span_alloc(a, slices, TA_SPAN_LARGE);
  ta_pagedelta_t d = {0};
  if (sp) {
    sp->bsize = (uint32_t)(slices * TA_SLICE_SIZE);
    sp->div_magic = ta_div_magic(sp->bsize);
    sp->used = sp->reserved = sp->carved = 1;
    sp->block_off = 0;
    runs = ta_pages_refaults(ta_segment_of(sp), ta_span_first_page(sp), ta_span_pages(sp), run, TA_REFAULT_RUNS);
    ta_pages_live(ta_segment_of(sp), ta_span_first_page(sp), ta_span_pages(sp), &sp->dirty, &d);
  }
  ta_unlock(&a->lock);
  if (ta_unlikely(!sp)) {
    errno = ENOMEM;
    return NULL;
  }
  size_t refault = d.refault;
  ta_pagedelta_apply(a, &d);
  if (refault >= TA_SLICE_SIZE) ta_pages_populate_runs(ta_segment_of(sp), run, runs);
  ta_relaxed_add(&a->large_bytes, sp->bsize);
  ta_relaxed_add(&a->large_count, 1);
  ta_relaxed_add(&a->large_allocs, 1);
  ta_relaxed_add(&a->activity, 1);
  return sp->start;
}

#ifndef TA_HARDENED
/* The default build's large blocks from malloc end where their span does (a
 * write past one reaches the next span, or faults in slices no span has
 * taken yet), and the 32 bytes before each hold a canary (its address ^ the
 * cookie), checked at its free: a write before the block (an underflow), as
 * the huge blocks' header check. The slack the rounding to slices leaves is
 * before the block, never touched; a size within 32 bytes of a slice
 * multiple takes one slice more, of which only the canary's OS page is
 * written. */
#define TA_LARGE_FRONT 32
void *ta_large_alloc_front(ta_arena_t *a, size_t n) {
  size_t body = (n + TA_ALIGN - 1) & ~(size_t)(TA_ALIGN - 1);
  uint8_t *start = ta_large_alloc(a, body + TA_LARGE_FRONT);
  if (!start) return NULL;
  ta_span_t *sp = ta_span_of(ta_segment_of(start), start);
  uint8_t *p = start + sp->bsize - body;
  sp->block_off = (uint32_t)(p - start); /* the block is not handed out yet: no other reader */
  uintptr_t *w = (uintptr_t *)(p - TA_LARGE_FRONT);
  for (size_t i = 0; i < TA_LARGE_FRONT / sizeof *w; i++) w[i] = (uintptr_t)p ^ ta_cookie;
  return p;
}

static bool front_ok(const uint8_t *p) {
  const uintptr_t *w = (const uintptr_t *)(p - TA_LARGE_FRONT);
  uintptr_t bad = 0;
  for (size_t i = 0; i < TA_LARGE_FRONT / sizeof *w; i++) bad |= w[i] ^ ((uintptr_t)p ^ ta_cookie);
  return bad == 0;
}
#endif

/* The block ends at the last OS page of its span, which becomes
 * inaccessible, and so does the page before the block's first one: a
 * read or write past either end faults at once (Electric Fence's guard
 * pages, for blocks big enough that one page more is little). The pages
 * go back to read-write when the span is taken again (ta_segment_commit).
 * Without the guards (the OS refused: too many mappings) the block is a
 * plain large one, placed the same way. */
void *ta_large_alloc_guarded(ta_arena_t *a, size_t n) {
  size_t ps = (size_t)1 << ta_ospage_shift, body = (n + TA_ALIGN - 1) & ~(size_t)(TA_ALIGN - 1);
  size_t pages = (body + ps - 1) & ~(ps - 1);
  if (pages + 2 * ps > TA_LARGE_MAX) return ta_large_alloc(a, n); /* no room in a segment for both */
  uint8_t *start = ta_large_alloc(a, pages + 2 * ps);
  if (!start) return NULL;
  ta_segment_t *s = ta_segment_of(start);
  ta_span_t *sp = ta_span_of(s, start);
  uint8_t *tail = start + sp->bsize - ps, *p = tail - body;
  ta_lock(&a->lock);
  sp->block_off = (uint32_t)(p - start);
  size_t front = (size_t)(tail - pages - ps - start), idx = ta_span_index(sp);
  uint64_t mask = ((uint64_t)1 << sp->slices) - 1;
  if (ta_prim_protect(start + front, ps, false) == 0) ta_segbits(s)->rw_slices &= ~(mask << idx);
  if (ta_prim_protect(tail, ps, false) == 0) ta_segbits(s)->rw_slices &= ~(mask << idx);
  ta_unlock(&a->lock);
  return p;
}

void ta_large_free(ta_span_t *sp, void *p) {
  ta_arena_t *a = sp->arena;
  ta_lock(&a->lock);
  if (sp->kind != TA_SPAN_LARGE || ta_large_block(sp) != p) {
    ta_unlock(&a->lock);
    ta_error("free: double free or invalid pointer", p);
  }
#ifndef TA_HARDENED
  if (sp->block_off && !front_ok(p)) {
    ta_unlock(&a->lock);
    ta_error("free: heap underflow (the 32 bytes before the block are overwritten) of block", p);
  }
#endif
  uint64_t *mark = p; /* the mark, before the hardened build's guard makes the span inaccessible */
  mark[0] = mark_of(p);
  mark[1] = ~mark_of(p);
  size_t mark_off = (size_t)((uint8_t *)p - sp->start);
#ifdef TA_HARDENED
  /* Inaccessible until taken again: a use after free faults. */
  if (ta_prim_protect(sp->start, sp->bsize, false) == 0) {
    uint64_t mask = sp->slices >= 64 ? ~(uint64_t)0 : ((uint64_t)1 << sp->slices) - 1;
    ta_segbits(ta_segment_of(sp))->rw_slices &= ~(mask << ta_span_index(sp));
  }
#endif
  uint32_t bytes = sp->bsize;
  ta_pagedelta_t d = {0};
  ta_pages_dead(ta_segment_of(sp), ta_span_first_page(sp), ta_span_pages(sp), &sp->dirty, &d);
  ta_pagedelta_apply(a, &d);
  uint8_t *start = sp->start;
  ta_span_t *head = ta_span_free(a, sp); /* merged with a free span before it: the mark moves off its start */
  head->freed_mark = (uint32_t)(start - head->start + mark_off + 1);
  ta_unlock(&a->lock);
  ta_relaxed_sub(&a->large_bytes, bytes);
  ta_relaxed_sub(&a->large_count, 1);
  ta_relaxed_add(&a->activity, 1);
}

/* Grows large block sp to n bytes in place, when the slices after it are a
 * free span long enough (what is left of it stays free): true if it did. The
 * taken pages come back as a large block's do (what was resident before a
 * purge populated in one call per run). */
bool ta_large_grow(ta_span_t *sp, size_t n) {
  ta_arena_t *a = sp->arena;
  /* a guarded block (hardened) keeps its offset, and its tail guard moves
   * to the new end: the last slice is made read-write with the new ones */
#ifdef TA_HARDENED
  size_t ps = (size_t)1 << ta_ospage_shift, guarded = sp->block_off != 0;
#else
  size_t ps = (size_t)1 << ta_ospage_shift, guarded = 0; /* a front canary stays where it is */
#endif
  size_t need = (n + sp->block_off + (guarded ? ps : 0) + TA_SLICE_SIZE - 1) / TA_SLICE_SIZE;
  if (!a || need >= TA_SLICES) return false;
  ta_pagedelta_t d = {0};
  ta_pagerun_t run[TA_REFAULT_RUNS];
  size_t added = 0, runs = 0;
  ta_lock(&a->lock);
  ta_segment_t *s = ta_segment_of(sp);
  size_t idx = ta_span_index(sp), have = sp->slices;
  if (sp->kind == TA_SPAN_LARGE && need > have && idx + need <= TA_SLICES) {
    ta_span_t *nx = &s->spans[idx + have];
    size_t extra = need - have;
    if (nx->kind == TA_SPAN_FREE && !nx->purging && nx->slices >= extra &&
        ta_segment_commit(s, idx + have - guarded, extra + guarded)) {
      size_t per = TA_SLICE_SIZE >> ta_ospage_shift, rest = nx->slices - extra, dirty = nx->dirty;
      uint64_t freed_ms = nx->freed_ms;
      mark_check(a, nx, "realloc: heap corruption (write after free) of large block");
      list_remove(a, nx);
      if (rest) {
        size_t tail_dirty = ta_pages_unpurged(s, (idx + need) * per, rest * per);
        make_free(a, s, idx + need, rest, freed_ms, tail_dirty);
        dirty -= tail_dirty;
      }
      for (size_t i = have; i < need; i++) s->spans[idx + i].head_off = (uint16_t)i;
      sp->dirty = (uint16_t)(sp->dirty + dirty); /* the taken pages' count, then they go live */
      runs = ta_pages_refaults(s, (idx + have) * per, extra * per, run, TA_REFAULT_RUNS);
      ta_pages_live(s, (idx + have) * per, extra * per, &sp->dirty, &d);
      sp->slices = (uint16_t)need;
      sp->bsize = (uint32_t)(need * TA_SLICE_SIZE);
      sp->div_magic = ta_div_magic(sp->bsize);
      s->used_slices += (uint32_t)extra;
      added = extra * TA_SLICE_SIZE;
      if (guarded && ta_prim_protect(sp->start + sp->bsize - ps, ps, false) == 0)
        ta_segbits(s)->rw_slices &= ~((((uint64_t)1 << need) - 1) << idx);
    }
  }
  ta_unlock(&a->lock);
  if (!added) return false;
  size_t refault = d.refault;
  ta_pagedelta_apply(a, &d);
  if (refault >= TA_SLICE_SIZE) ta_pages_populate_runs(s, run, runs);
  ta_relaxed_add(&a->large_bytes, added);
  ta_relaxed_add(&a->activity, 1);
  return true;
}
