/* trimalloc: cross-file internals, grouped under the file that defines them. */
#ifndef TA_INTERNAL_H
#define TA_INTERNAL_H

#include "prim.h"
#include "trimalloc.h"
#include "types.h"

#include <string.h>

#define TA_HIDDEN __attribute__((visibility("hidden")))
#define ta_likely(x) __builtin_expect(!!(x), 1)
#define ta_unlikely(x) __builtin_expect(!!(x), 0)
#define ta_relaxed_load(p) atomic_load_explicit((p), memory_order_relaxed)
#define ta_relaxed_store(p, v) atomic_store_explicit((p), (v), memory_order_relaxed)
#define ta_relaxed_add(p, v) atomic_fetch_add_explicit((p), (v), memory_order_relaxed)

#ifdef TA_DEBUG
#include <assert.h>
#define ta_assert(x) assert(x)
#else
#define ta_assert(x) ((void)0)
#endif

/* ---- size.c: size classes ------------------------------------------------ */
/* Classes 0..7: 16..128 by 16. Then 8 classes per doubling: for sizes in
 * (2^b, 2^(b+1)], step 2^(b-3); so internal waste stays below 12.5% above 128. */
static inline size_t ta_class_of(size_t n) {
  if (n <= 128) return n <= 16 ? 0 : (n - 1) >> 4;
  size_t b = 63 - (size_t)__builtin_clzll((unsigned long long)(n - 1));
  return 8 + (b - 7) * 8 + (((n - 1) - ((size_t)1 << b)) >> (b - 3));
}
static inline size_t ta_class_size(size_t c) {
  if (c < 8) return (c + 1) * 16;
  size_t b = 7 + (c - 8) / 8;
  return ((size_t)1 << b) + ((c - 8) % 8 + 1) * ((size_t)1 << (b - 3));
}
/* Slices of a small page of class c: one for blocks up to 8 KiB, else enough
 * for at least 8 blocks. */
static inline size_t ta_class_slices(size_t c) {
  size_t bs = ta_class_size(c);
  return bs <= 8192 ? 1 : (8 * bs + TA_SLICE_SIZE - 1) / TA_SLICE_SIZE;
}
TA_HIDDEN extern uint8_t ta_direct_lo[TA_CLASSES], ta_direct_hi[TA_CLASSES];
TA_HIDDEN void ta_size_init(void);

/* ---- segment.c: segment map, segments, spans, purge ---------------------- */
TA_HIDDEN extern _Atomic uint64_t ta_segmap[TA_SEGMAP_WORDS];
static inline ta_segment_t *ta_segment_of(const void *p) {
  return (ta_segment_t *)((uintptr_t)p & ~(uintptr_t)TA_SEGMENT_MASK);
}
/* Is this segment-aligned address one of ours? O(1), no lock. */
static inline bool ta_segmap_contains(const ta_segment_t *s) {
  uintptr_t i = (uintptr_t)s >> TA_SEGMENT_SHIFT;
  if (ta_unlikely(i >= TA_SEGMAP_WORDS * 64)) return false;
  return (ta_relaxed_load(&ta_segmap[i / 64]) >> (i % 64)) & 1;
}
static inline ta_page_t *ta_page_of(ta_segment_t *s, const void *p) {
  ta_page_t *pg = &s->pages[((uintptr_t)p - (uintptr_t)s) >> TA_SLICE_SHIFT];
  return pg - pg->head_off;
}
/* (p - start) % bsize == 0, by one multiplication (Lemire's divisibility test). */
static inline bool ta_is_block_start(const ta_page_t *pg, const void *p) {
  uint64_t off = (uint32_t)((const uint8_t *)p - pg->start);
  return off * pg->div_magic <= pg->div_magic - 1;
}
TA_HIDDEN void ta_segmap_set(const ta_segment_t *s, bool on);
TA_HIDDEN ta_page_t *ta_span_alloc(ta_heap_t *h, size_t slices, ta_span_kind_t kind); /* h->lock held */
TA_HIDDEN void ta_span_free(ta_heap_t *h, ta_page_t *pg);              /* h->lock held */
TA_HIDDEN size_t ta_heap_purge(ta_heap_t *h, uint64_t now_ms, bool all, size_t *keep); /* h->lock held */
TA_HIDDEN extern _Atomic uint64_t ta_committed_total;
TA_HIDDEN void ta_segments_account(ta_heap_t *h, ta_walk_t *w); /* lock held */
TA_HIDDEN uint64_t ta_segments_live(void);
TA_HIDDEN bool ta_segment_is_valid(const ta_segment_t *s);

/* ---- delay.c: purge hysteresis (see types.h) ----------------------------- */
TA_HIDDEN uint64_t ta_delay_get(ta_delay_t *d, uint64_t now_ms);
TA_HIDDEN void ta_delay_released(ta_delay_t *d, uint64_t now_ms);
TA_HIDDEN void ta_delay_refault(ta_delay_t *d, uint64_t now_ms); /* now 0: read the clock */

/* ---- huge.c: blocks with their own mapping ------------------------------- */
TA_HIDDEN void *ta_huge_alloc(size_t size, size_t align, bool zero);
TA_HIDDEN size_t ta_huge_cache_expire(uint64_t now_ms, bool all);
TA_HIDDEN void ta_huge_fork_prepare(void);
TA_HIDDEN void ta_huge_fork_parent(void);
TA_HIDDEN void ta_huge_fork_child(void);
TA_HIDDEN void ta_huge_free(ta_segment_t *s);
TA_HIDDEN void *ta_huge_realloc(ta_segment_t *s, size_t size);
TA_HIDDEN extern _Atomic uint64_t ta_huge_bytes, ta_huge_mapped, ta_huge_count, ta_huge_total, ta_huge_cached;

/* ---- page.c: small pages, their free lists and queues -------------------- */
TA_HIDDEN extern ta_page_t ta_page_empty;
TA_HIDDEN void ta_page_init(ta_heap_t *h, ta_page_t *pg, size_t cls);
TA_HIDDEN bool ta_page_refill(ta_heap_t *h, ta_page_t *pg); /* owner */
TA_HIDDEN size_t ta_page_collect_xfree(ta_page_t *pg);        /* owner */
TA_HIDDEN void ta_page_push_remote(ta_page_t *pg, ta_block_t *first, ta_block_t *last); /* any thread */
TA_HIDDEN void ta_pageq_push(ta_pageq_t *q, ta_page_t *pg);
TA_HIDDEN void ta_pageq_remove(ta_pageq_t *q, ta_page_t *pg);
TA_HIDDEN void ta_heap_set_direct(ta_heap_t *h, size_t cls);
TA_HIDDEN void ta_page_to_full(ta_heap_t *h, ta_page_t *pg);
TA_HIDDEN void ta_page_unfull(ta_heap_t *h, ta_page_t *pg);
TA_HIDDEN void ta_page_emptied(ta_heap_t *h, ta_page_t *pg);
TA_HIDDEN void ta_page_retire(ta_heap_t *h, ta_page_t *pg); /* return the span */
TA_HIDDEN size_t ta_heap_reclaim_full(ta_heap_t *h, bool sparse); /* h->lock held; bytes */
TA_HIDDEN size_t ta_heap_purge_remote(ta_heap_t *h);               /* h->lock held; bytes */

/* ---- sparse.c: the OS pages between survivors ---------------------------- */
TA_HIDDEN size_t ta_page_purge_sparse(ta_heap_t *h, ta_page_t *pg); /* owner; bytes */
TA_HIDDEN size_t ta_page_unpurge_one(ta_page_t *pg);                 /* owner; blocks listed */
TA_HIDDEN size_t ta_page_purge_remote(ta_page_t *pg);                /* any thread, h->lock; bytes */
TA_HIDDEN size_t ta_page_purge_delayed(ta_page_t *pg, ta_block_t **chain); /* full page, h->lock */
TA_HIDDEN size_t ta_block_purge_tail(const ta_page_t *pg, ta_block_t *b);  /* b is free and ours */

/* ---- heap.c: thread heaps, adoption, fork -------------------------------- */
TA_HIDDEN extern ta_heap_t ta_heap_empty;
TA_HIDDEN extern __thread ta_heap_t *ta_tls_heap __attribute__((tls_model("initial-exec")));
TA_HIDDEN extern ta_lock_t ta_heaps_lock;
TA_HIDDEN extern ta_heap_t *ta_heaps;
TA_HIDDEN ta_heap_t *ta_heap_get(void); /* the calling thread's heap, created on demand */
TA_HIDDEN ta_page_t *ta_heap_find_page(ta_heap_t *h, size_t cls);
TA_HIDDEN size_t ta_heap_collect(ta_heap_t *h, bool flush, bool sparse); /* owner (or none); bytes */
TA_HIDDEN void ta_heap_maintain(ta_heap_t *h);            /* periodic, slow path */
TA_HIDDEN void ta_heaps_purge_others(ta_heap_t *me, uint64_t now_ms);
TA_HIDDEN void ta_heap_thread_done(void *heap);
TA_HIDDEN void ta_heap_fork_prepare(void);
TA_HIDDEN void ta_heap_fork_parent(void);
TA_HIDDEN void ta_heap_fork_child(void);
TA_HIDDEN extern _Atomic uint64_t ta_meta_bytes;
TA_HIDDEN bool ta_heap_is_valid(ta_heap_t *h);

/* ---- alloc.c: malloc, free and their slow paths -------------------------- */
TA_HIDDEN extern uintptr_t ta_cookie;
TA_HIDDEN void *ta_malloc_class(ta_heap_t *h, size_t cls);
TA_HIDDEN void *ta_malloc_large(ta_heap_t *h, size_t size);
TA_HIDDEN void ta_free_local(ta_heap_t *h, ta_page_t *pg, ta_block_t *b);
TA_HIDDEN size_t ta_usable_size(const void *p, const char *what);

/* ---- stats.c ------------------------------------------------------------- */
TA_HIDDEN void ta_active_add(int64_t delta); /* spans and huge blocks in use */

/* ---- options.c ----------------------------------------------------------- */
typedef enum {
  TA_OPT_PURGE_DELAY_MS,
  TA_OPT_UNMAP_DELAY_MS,
  TA_OPT_TRIM_WINDOW_MS,
  TA_OPT_SHOW_STATS,
  TA_OPT_VERBOSE,
  TA_OPT_COUNT
} ta_opt_t;
TA_HIDDEN extern _Atomic long long ta_options[TA_OPT_COUNT];
static inline long long ta_opt(ta_opt_t o) { return ta_relaxed_load(&ta_options[o]); }
TA_HIDDEN void ta_options_init(void);
TA_HIDDEN size_t ta_options_format(char *buf, size_t size);

/* ---- init.c: process start, errors, exit --------------------------------- */
TA_HIDDEN void ta_process_init(void);
TA_HIDDEN extern _Atomic int ta_initialized;
TA_HIDDEN extern pthread_key_t ta_heap_key;
TA_HIDDEN __attribute__((noreturn, cold)) void ta_error(const char *what, const void *p);
TA_HIDDEN void ta_say(const char *a, const char *b, const char *c, const char *d, const char *e); /* one line */
TA_HIDDEN size_t ta_fmt_u64(char *buf, uint64_t v); /* decimal, no allocation */

/* ---- lock helpers -------------------------------------------------------- */
static inline void ta_lock(ta_lock_t *l) { pthread_mutex_lock(l); }
static inline void ta_unlock(ta_lock_t *l) { pthread_mutex_unlock(l); }

#endif
