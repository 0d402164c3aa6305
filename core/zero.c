/* Blocks of size 0 (malloc(0), calloc(0, n), realloc(NULL, 0)): a unique
 * address each, in memory no access reaches (PROT_NONE), so that a read or
 * write of a zero-size block faults at once instead of landing in a
 * neighbour (OpenBSD's malloc does the same; glibc hands out a 24-byte
 * chunk, where such a write goes unnoticed).
 *
 * One segment-aligned mapping, made at the first malloc(0): slice 0 holds a
 * segment header, so free and malloc_usable_size find the blocks through
 * the segment map like any other (one span of kind TA_SPAN_ZERO covers the
 * rest); the blocks are 16 bytes apart in slices 1..16 (65,536 of them),
 * taken and given back in an atomic bitmap (no lock: nothing for a fork to
 * take). When they are all live, malloc(0) gets a 16-byte block again. */
#include "internal.h"

#ifdef TA_HARDENED /* the default build gives malloc(0) a 16-byte block (size.c) */
#define ZERO_SLICES 16
#define ZERO_COUNT (ZERO_SLICES * TA_SLICE_SIZE / TA_ALIGN)
#define ZERO_WORDS (ZERO_COUNT / 64) /* 1024: 8 KiB of .bss */

static _Atomic(ta_segment_t *) zero_seg;
static _Atomic uint64_t zero_used[ZERO_WORDS]; /* bit i: block i is live */
static _Atomic uint32_t zero_hint;             /* a word that had a free bit */

static ta_segment_t *zero_segment(void) {
  ta_segment_t *s = atomic_load_explicit(&zero_seg, memory_order_acquire);
  if (s) return s;
  void *p;
  if (ta_prim_map(TA_SEGMENT_SIZE, TA_SEGMENT_SIZE, &p) != 0) return NULL;
  if (ta_prim_protect((uint8_t *)p + TA_SLICE_SIZE, TA_SEGMENT_SIZE - TA_SLICE_SIZE, false) != 0) {
    ta_prim_unmap(p, TA_SEGMENT_SIZE);
    return NULL;
  }
  s = p; /* zeroed by the OS */
  s->map_size = TA_SEGMENT_SIZE;
  for (size_t i = 0; i < TA_SLICES; i++) {
    s->spans[i].head_off = (uint16_t)(i ? i - 1 : 0); /* every slice past 0 belongs to span 1 */
    s->spans[i].cls = TA_NO_CLASS;                     /* fast_free_below 0: free's slow path */
  }
  s->spans[0].kind = TA_SPAN_META;
  s->spans[0].slices = 1;
  s->spans[1].kind = TA_SPAN_ZERO;
  s->spans[1].slices = TA_SLICES - 1;
  s->spans[1].start = (uint8_t *)p + TA_SLICE_SIZE;
  /* In the map before anyone can hand out its blocks. */
  ta_segmap_set(s, true);
  ta_segment_t *expect = NULL;
  if (!atomic_compare_exchange_strong_explicit(&zero_seg, &expect, s, memory_order_acq_rel,
                                               memory_order_acquire)) {
    ta_segmap_set(s, false); /* another thread's mapping won */
    ta_prim_unmap(p, TA_SEGMENT_SIZE);
    return expect;
  }
  return s;
}

void *ta_zero_alloc(void) {
  ta_segment_t *s = zero_segment();
  if (!s) return NULL;
  uint32_t start = ta_relaxed_load(&zero_hint);
  for (uint32_t k = 0; k < ZERO_WORDS; k++) {
    uint32_t w = (start + k) % ZERO_WORDS;
    uint64_t v = ta_relaxed_load(&zero_used[w]);
    while (~v) {
      uint64_t bit = ~v & (v + 1); /* the lowest free one */
      if (atomic_compare_exchange_weak_explicit(&zero_used[w], &v, v | bit, memory_order_acq_rel,
                                                memory_order_relaxed)) {
        if (w != start) ta_relaxed_store(&zero_hint, w);
        return s->spans[1].start + ((size_t)w * 64 + (size_t)__builtin_ctzll(bit)) * TA_ALIGN;
      }
    }
  }
  return NULL;
}

/* Index of zero-size block p in s, or reports `what` and aborts. */
static size_t zero_index(ta_segment_t *s, const void *p, const char *what) {
  size_t off = (size_t)((const uint8_t *)p - s->spans[1].start);
  if (s != atomic_load_explicit(&zero_seg, memory_order_relaxed) || off % TA_ALIGN ||
      off >= (size_t)ZERO_COUNT * TA_ALIGN)
    ta_error(what, p);
  return off / TA_ALIGN;
}

void ta_zero_free(ta_segment_t *s, void *p) {
  size_t i = zero_index(s, p, "free: invalid pointer");
  uint64_t bit = (uint64_t)1 << (i % 64);
  uint64_t old = atomic_fetch_and_explicit(&zero_used[i / 64], ~bit, memory_order_acq_rel);
  if (!(old & bit)) ta_error("free: double free of a zero-size block", p);
}

size_t ta_zero_usable(ta_segment_t *s, const void *p, const char *what) {
  size_t i = zero_index(s, p, what);
  if (!((ta_relaxed_load(&zero_used[i / 64]) >> (i % 64)) & 1)) ta_error(what, p); /* freed */
  return 0;
}
#endif
