/* Segments and spans: the segment map, a heap's free-span bins, coalescing,
 * and returning memory (delayed purge, unmapping empty segments).
 * Everything here except the segment map runs under the heap's lock. */
#include "internal.h"

/* One bit per segment-sized slot of the address space (8 MiB of .bss below
 * 2^48; only the words that are written ever become resident). */
_Atomic uint64_t ta_segmap[TA_SEGMAP_WORDS];
static _Atomic uint64_t segments_live;
_Atomic uint64_t ta_committed_total; /* bytes ever committed afresh (slices, huge maps) */

void ta_segmap_set(const ta_segment_t *s, bool on) {
  uintptr_t i = (uintptr_t)s >> TA_SEGMENT_SHIFT;
  uint64_t bit = (uint64_t)1 << (i % 64);
  if (on) atomic_fetch_or_explicit(&ta_segmap[i / 64], bit, memory_order_release);
  else atomic_fetch_and_explicit(&ta_segmap[i / 64], ~bit, memory_order_release);
}

static inline ta_segment_t *seg_of_page(ta_page_t *pg) {
  return ta_segment_of(pg);
}
static inline size_t page_index(ta_page_t *pg) {
  return (size_t)(pg - seg_of_page(pg)->pages);
}
static inline uint64_t slice_mask(size_t idx, size_t n) {
  return (n >= 64 ? ~(uint64_t)0 : (((uint64_t)1 << n) - 1)) << idx;
}
/* Bytes of the header slice that count as resident. */
static size_t header_bytes(void) {
  size_t ps = ta_prim_page_size();
  return (sizeof(ta_segment_t) + ps - 1) & ~(ps - 1);
}

/* ---- free-span bins ---- */
static void bin_insert(ta_heap_t *h, ta_page_t *sp) {
  ta_page_t **b = &h->bins[sp->slices];
  sp->prev = NULL;
  sp->next = *b;
  if (*b) (*b)->prev = sp;
  *b = sp;
  h->bin_mask |= (uint64_t)1 << sp->slices;
}
static void bin_remove(ta_heap_t *h, ta_page_t *sp) {
  if (sp->prev) sp->prev->next = sp->next;
  else h->bins[sp->slices] = sp->next;
  if (sp->next) sp->next->prev = sp->prev;
  if (!h->bins[sp->slices]) h->bin_mask &= ~((uint64_t)1 << sp->slices);
  sp->next = sp->prev = NULL;
}

/* ---- purge queue: free spans holding committed slices, oldest first ---- */
static void purge_remove(ta_heap_t *h, ta_page_t *sp) {
  if (!sp->in_purge) return;
  if (sp->pprev) sp->pprev->pnext = sp->pnext;
  else h->purge_first = sp->pnext;
  if (sp->pnext) sp->pnext->pprev = sp->pprev;
  else h->purge_last = sp->pprev;
  sp->pnext = sp->pprev = NULL;
  sp->in_purge = 0;
}
static void purge_insert(ta_heap_t *h, ta_page_t *sp) {
  ta_page_t *after = h->purge_last; /* keep the queue sorted by freed_ms */
  while (after && after->freed_ms > sp->freed_ms) after = after->pprev;
  sp->pprev = after;
  sp->pnext = after ? after->pnext : h->purge_first;
  if (sp->pnext) sp->pnext->pprev = sp;
  else h->purge_last = sp;
  if (after) after->pnext = sp;
  else h->purge_first = sp;
  sp->in_purge = 1;
}

/* Marks slices [idx, idx+n) as one free span headed at idx. */
static ta_page_t *span_make_free(ta_heap_t *h, ta_segment_t *s, size_t idx, size_t n, uint64_t freed_ms) {
  for (size_t i = 0; i < n; i++) s->pages[idx + i].head_off = (uint16_t)i;
  ta_page_t *sp = &s->pages[idx];
  sp->kind = TA_SPAN_FREE;
  sp->slices = (uint16_t)n;
  sp->heap = NULL;
  sp->bsize = 0;
  sp->start = (uint8_t *)s + idx * TA_SLICE_SIZE;
  sp->freed_ms = freed_ms;
  sp->in_purge = 0;
  bin_insert(h, sp);
  if (s->committed & slice_mask(idx, n)) purge_insert(h, sp);
  return sp;
}

static ta_segment_t *segment_new(ta_heap_t *h) {
  void *p;
  if (ta_prim_map(TA_SEGMENT_SIZE, TA_SEGMENT_SIZE, &p) != 0) return NULL;
  ta_segment_t *s = p; /* zeroed by the OS */
  s->heap = h;
  s->map_size = TA_SEGMENT_SIZE;
  s->committed = 1; /* the header slice; fresh slices are not resident */
  s->empty_since_ms = ta_prim_clock_ms();
  s->pages[0].kind = TA_SPAN_META;
  s->pages[0].slices = 1;
  s->next = h->segments;
  if (h->segments) h->segments->prev = s;
  h->segments = s;
  span_make_free(h, s, 1, TA_SLICES - 1, s->empty_since_ms);
  ta_segmap_set(s, true);
  ta_relaxed_add(&segments_live, 1);
  return s;
}

static void segment_free(ta_heap_t *h, ta_segment_t *s) {
  ta_page_t *sp = &s->pages[1]; /* an empty segment is one free span */
  ta_assert(s->used_slices == 0 && sp->kind == TA_SPAN_FREE && sp->slices == TA_SLICES - 1);
  bin_remove(h, sp);
  purge_remove(h, sp);
  if (s->prev) s->prev->next = s->next;
  else h->segments = s->next;
  if (s->next) s->next->prev = s->prev;
  ta_segmap_set(s, false);
  ta_prim_unmap(s, s->map_size);
  atomic_fetch_sub_explicit(&segments_live, 1, memory_order_relaxed);
}

uint64_t ta_segments_live(void) {
  return ta_relaxed_load(&segments_live);
}

ta_page_t *ta_span_alloc(ta_heap_t *h, size_t n, ta_span_kind_t kind) {
  ta_assert(n >= 1 && n < TA_SLICES);
  uint64_t fit = h->bin_mask & (~(uint64_t)0 << n);
  if (!fit) {
    if (!segment_new(h)) return NULL;
    fit = h->bin_mask & (~(uint64_t)0 << n);
  }
  ta_page_t *sp = h->bins[__builtin_ctzll(fit)];
  ta_segment_t *s = seg_of_page(sp);
  size_t idx = page_index(sp), have = sp->slices;
  uint64_t freed = sp->freed_ms;
  bin_remove(h, sp);
  purge_remove(h, sp);
  if (have > n) span_make_free(h, s, idx + n, have - n, freed);
  for (size_t i = 0; i < n; i++) s->pages[idx + i].head_off = (uint16_t)i;
  sp->slices = (uint16_t)n;
  sp->kind = (uint8_t)kind; /* before the lock drops: span_free reads neighbours' kind */
  sp->heap = h;
  sp->start = (uint8_t *)s + idx * TA_SLICE_SIZE;
  uint64_t fresh = slice_mask(idx, n) & ~s->committed;
  if (fresh) {
    ta_delay_refault(&h->purge_delay, 0);
    ta_relaxed_add(&ta_committed_total, (uint64_t)__builtin_popcountll(fresh) * TA_SLICE_SIZE);
  }
  s->committed |= slice_mask(idx, n);
  s->used_slices += (uint32_t)n;
  ta_active_add((int64_t)(n * TA_SLICE_SIZE));
  return sp;
}

void ta_span_free(ta_heap_t *h, ta_page_t *pg) {
  ta_segment_t *s = seg_of_page(pg);
  size_t idx = page_index(pg), n = pg->slices;
  ta_assert(pg->kind == TA_SPAN_SMALL || pg->kind == TA_SPAN_LARGE);
  s->used_slices -= (uint32_t)n;
  ta_active_add(-(int64_t)(n * TA_SLICE_SIZE));
  pg->kind = TA_SPAN_FREE;
  pg->heap = NULL;
  if (idx + n < TA_SLICES) { /* coalesce with the next span */
    ta_page_t *nx = &s->pages[idx + n];
    if (nx->kind == TA_SPAN_FREE) {
      bin_remove(h, nx);
      purge_remove(h, nx);
      n += nx->slices;
    }
  }
  if (idx > 1) { /* and with the previous one */
    ta_page_t *pv = &s->pages[idx - 1];
    pv -= pv->head_off;
    if (pv->kind == TA_SPAN_FREE) {
      bin_remove(h, pv);
      purge_remove(h, pv);
      n += pv->slices;
      idx = page_index(pv);
    }
  }
  uint64_t now = ta_prim_clock_ms();
  span_make_free(h, s, idx, n, now);
  if (s->used_slices == 0) s->empty_since_ms = now;
}

/* Returns the committed slices of a free span to the OS; bytes released. */
static size_t span_purge(ta_heap_t *h, ta_page_t *sp) {
  ta_segment_t *s = seg_of_page(sp);
  size_t idx = page_index(sp), end = idx + sp->slices, bytes = 0;
  purge_remove(h, sp);
  for (size_t i = idx; i < end;) {
    if (!((s->committed >> i) & 1)) {
      i++;
      continue;
    }
    size_t j = i;
    while (j < end && ((s->committed >> j) & 1)) j++;
    size_t len = (j - i) * TA_SLICE_SIZE;
    if (ta_prim_purge((uint8_t *)s + i * TA_SLICE_SIZE, len) == 0) {
      s->committed &= ~slice_mask(i, j - i);
      bytes += len;
    }
    i = j;
  }
  if (bytes) {
    ta_relaxed_add(&h->purges, 1);
    ta_relaxed_add(&h->purged_bytes, bytes);
  }
  return bytes;
}

static size_t span_committed(ta_page_t *sp) {
  ta_segment_t *s = seg_of_page(sp);
  return (size_t)__builtin_popcountll(s->committed & slice_mask(page_index(sp), sp->slices)) * TA_SLICE_SIZE;
}

/* Purges free spans idle longer than the heap's delay; with `all`, every free
 * span except the newest *keep bytes of them (trim's reserve; *keep is
 * decreased by what is kept). Then unmaps empty segments that are purged and
 * idle (all: purged). Returns the bytes released. */
size_t ta_heap_purge(ta_heap_t *h, uint64_t now, bool all, size_t *keep) {
  uint64_t delay = ta_delay_get(&h->purge_delay, now);
  uint64_t unmap_delay = (uint64_t)ta_opt(TA_OPT_UNMAP_DELAY_MS);
  size_t bytes = 0, held = 0;
  ta_page_t *sp;
  if (all && keep && *keep)
    for (sp = h->purge_first; sp; sp = sp->pnext) held += span_committed(sp);
  while ((sp = h->purge_first) != NULL) {
    if (all ? (keep && *keep && held <= *keep) : sp->freed_ms + delay > now) break;
    held -= all && keep && *keep ? span_committed(sp) : 0;
    bytes += span_purge(h, sp);
  }
  if (all && keep) *keep -= held < *keep ? held : *keep;
  for (ta_segment_t *s = h->segments, *next; s; s = next) {
    next = s->next;
    if (s->used_slices == 0 && !s->pages[1].in_purge && (all || s->empty_since_ms + unmap_delay <= now)) {
      bytes += __builtin_popcountll(s->committed & ~(uint64_t)1) * TA_SLICE_SIZE + header_bytes();
      segment_free(h, s);
    }
  }
  if (bytes && !all) ta_delay_released(&h->purge_delay, now);
  return bytes;
}

/* Adds a heap's segments to a stats walk. */
void ta_segments_account(ta_heap_t *h, ta_walk_t *w) {
  size_t hdr = header_bytes();
  for (ta_segment_t *s = h->segments; s; s = s->next) {
    w->mapped += TA_SEGMENT_SIZE;
    w->metadata += hdr;
    w->resident += __builtin_popcountll(s->committed & ~(uint64_t)1) * TA_SLICE_SIZE + hdr;
    for (size_t i = 1; i < TA_SLICES; i += s->pages[i].slices ? s->pages[i].slices : 1) {
      ta_page_t *pg = &s->pages[i];
      if (pg->kind == TA_SPAN_SMALL) {
        uint64_t used = ta_relaxed_load(&pg->used) - ta_relaxed_load(&pg->xpurged);
        w->allocated += used * pg->bsize;
        w->blocks += used;
        w->resident -= (uint64_t)__builtin_popcount(ta_relaxed_load(&pg->purged_os)) * ta_prim_page_size();
        if (used) w->active += (uint64_t)pg->slices * TA_SLICE_SIZE;
      } else if (pg->kind == TA_SPAN_LARGE) {
        w->allocated += pg->bsize;
        w->active += pg->bsize;
        w->blocks += 1;
      }
    }
  }
}

/* Invariants of one segment (debug checker, called by tests). */
bool ta_segment_is_valid(const ta_segment_t *s) {
  if (!ta_segmap_contains(s) || s->huge) return false;
  uint32_t used = 0;
  size_t i = 1;
  while (i < TA_SLICES) {
    const ta_page_t *pg = &s->pages[i];
    if (pg->head_off != 0 || pg->slices == 0 || i + pg->slices > TA_SLICES) return false;
    for (size_t k = 1; k < pg->slices; k++)
      if (s->pages[i + k].head_off != k) return false;
    if (pg->kind == TA_SPAN_SMALL || pg->kind == TA_SPAN_LARGE) used += pg->slices;
    else if (pg->kind != TA_SPAN_FREE) return false;
    if (pg->kind == TA_SPAN_FREE && i + pg->slices < TA_SLICES && s->pages[i + pg->slices].kind == TA_SPAN_FREE)
      return false; /* free neighbours are always coalesced */
    i += pg->slices;
  }
  return used == s->used_slices;
}
