/* malloc and free: the fast paths, their slow paths, and the functions built
 * directly on them (calloc, realloc, reallocarray, malloc_usable_size). */
#include "internal.h"

#include <errno.h>

uintptr_t ta_cookie = 0x7a3c5e1f9b2d4c61u; /* replaced by a random value at init */

static __attribute__((noinline)) void *malloc_slow(size_t n);
static __attribute__((noinline)) void free_slow(ta_segment_t *s, ta_page_t *pg, void *p);

/* A block on a free list lost its cookie: it was handed out twice (a double
 * free) or written after free. */
static __attribute__((noinline, noreturn, cold)) void ta_corrupt(ta_block_t *b) {
  ta_error("malloc: heap corruption (double free or write after free) of block", b);
}

/* Pops b, the head of pg->free (not NULL). */
static inline void *page_pop(ta_page_t *pg, ta_block_t *b) {
  if (ta_unlikely(b->key != ta_cookie)) ta_corrupt(b);
  pg->free = b->next;
  b->key = 0;
  ta_relaxed_store(&pg->used, ta_relaxed_load(&pg->used) + 1);
  return b;
}

/* Fast path budget: one TLS load, one table load, one list pop, two stores,
 * and two unlikely branches (a size over 1 KiB or an empty free list; a block
 * whose free cookie is gone, i.e. freed twice or written after free; the
 * cookie shares the cache line of the link just read, so the check is free). */
TRIMALLOC_API void *trimalloc_malloc(size_t n) {
  ta_heap_t *h = ta_tls_heap;
  if (ta_likely(n <= TA_DIRECT_MAX)) {
    ta_page_t *pg = h->direct[(n + TA_ALIGN - 1) / TA_ALIGN];
    ta_block_t *b = pg->free;
    if (ta_likely(b != NULL)) return page_pop(pg, b);
  }
  return malloc_slow(n);
}

static void *malloc_slow(size_t n) {
  ta_heap_t *h = ta_tls_heap;
  if (n <= TA_MEDIUM_MAX) { /* 1..128 KiB: the class queue's current page */
    ta_page_t *pg = h->queues[ta_class_of(n)].first; /* NULL on the empty heap */
    ta_block_t *b = pg ? pg->free : NULL;
    if (ta_likely(b != NULL)) {
      ((uintptr_t *)b)[2] = 0; /* a trim's tail mark (sparse.c); blocks here are > 1 KiB */
      return page_pop(pg, b);
    }
  }
  h = ta_heap_get();
  if (ta_unlikely(h == NULL)) {
    errno = ENOMEM;
    return NULL;
  }
  ta_heap_maintain(h);
  if (n <= TA_MEDIUM_MAX) return ta_malloc_class(h, ta_class_of(n));
  if (n <= TA_LARGE_MAX) return ta_malloc_large(h, n);
  return ta_huge_alloc(n, 0, false);
}

void *ta_malloc_class(ta_heap_t *h, size_t cls) {
  ta_page_t *pg = h->queues[cls].first;
  if (!pg || !pg->free) pg = ta_heap_find_page(h, cls);
  if (ta_unlikely(!pg)) {
    errno = ENOMEM;
    return NULL;
  }
  if (pg->bsize > TA_DIRECT_MAX) ((uintptr_t *)pg->free)[2] = 0; /* a trim's tail mark (sparse.c) */
  return page_pop(pg, pg->free);
}

/* One block in a run of slices (slice-aligned, so up to 64 KiB alignment). */
void *ta_malloc_large(ta_heap_t *h, size_t n) {
  size_t slices = (n + TA_SLICE_SIZE - 1) / TA_SLICE_SIZE;
  ta_lock(&h->lock);
  ta_page_t *pg = ta_span_alloc(h, slices, TA_SPAN_LARGE);
  if (pg) {
    pg->bsize = (uint32_t)(slices * TA_SLICE_SIZE);
    pg->div_magic = UINT64_MAX / pg->bsize + 1;
    pg->reserved = pg->capacity = 1;
    pg->free = pg->local_free = NULL;
    atomic_store_explicit(&pg->xfree, TA_XFREE_FULL, memory_order_relaxed);
    ta_relaxed_store(&pg->used, 1);
    ta_relaxed_store(&pg->in_full, 0);
    pg->in_queue = 0;
    pg->cls = 0xff;
  }
  ta_unlock(&h->lock);
  if (ta_unlikely(!pg)) {
    errno = ENOMEM;
    return NULL;
  }
  ta_relaxed_add(&h->allocs, 1);
  ((ta_block_t *)pg->start)->key = 0; /* the span may hold a free block's cookie */
  return pg->start;
}

/* Pushes a block on its page's local list; the page is owned by h. A full
 * page is under h->lock (trim may be counting it), and comes back to its queue. */
void ta_free_local(ta_heap_t *h, ta_page_t *pg, ta_block_t *b) {
  bool full = ta_relaxed_load(&pg->in_full);
  if (full) ta_lock(&h->lock);
  uint32_t u = ta_relaxed_load(&pg->used);
  /* A slow path: reading the block is affordable, and catches a second free
   * before it could empty a page that still has a live block. */
  if (ta_unlikely(u == 0 || b->key == ta_cookie)) ta_error("free: double free", b);
  b->next = pg->local_free;
  b->key = ta_cookie;
  pg->local_free = b;
  ta_relaxed_store(&pg->used, u - 1);
  if (full) {
    ta_unlock(&h->lock);
    ta_page_unfull(h, pg);
  }
  if (u == 1) ta_page_emptied(h, pg);
}

/* Fast path budget: segment-map bit test, descriptor load, owner compare,
 * block-start test (one multiply), push (writes only: the block's memory is
 * not read, so a cold block costs no cache miss), and one unlikely branch
 * (another thread's block or not a block start; an emptied or full page; a
 * page with no live block, i.e. a double free). */
TRIMALLOC_API void trimalloc_free(void *p) {
  ta_segment_t *s = ta_segment_of(p);
  if (ta_unlikely(!ta_segmap_contains(s))) {
    if (p != NULL) ta_error("free: invalid pointer", p);
    return;
  }
  ta_page_t *pg = ta_page_of(s, p);
  if (ta_likely(pg->heap == ta_tls_heap && ta_is_block_start(pg, p))) {
    uint32_t u = ta_relaxed_load(&pg->used);
    if (ta_likely(u > 1 && !ta_relaxed_load(&pg->in_full))) {
      ta_block_t *b = p;
      b->next = pg->local_free;
      b->key = ta_cookie;
      pg->local_free = b;
      ta_relaxed_store(&pg->used, u - 1);
      return;
    }
    ta_free_local(pg->heap, pg, p);
    return;
  }
  free_slow(s, pg, p);
}

/* A free from a thread that does not own the page. */
static void free_remote(ta_page_t *pg, ta_block_t *b) {
  ta_heap_t *h = pg->heap;
  if (pg->kind == TA_SPAN_LARGE) {
    ta_lock(&h->lock);
    if (pg->kind != TA_SPAN_LARGE || pg->heap != h) {
      ta_unlock(&h->lock);
      ta_error("free: double free", b);
    }
    ta_span_free(h, pg);
    ta_unlock(&h->lock);
    return;
  }
  if (b->key == ta_cookie) ta_error("free: double free", b); /* slow path: reading is fine */
  b->key = ta_cookie;
  ta_page_push_remote(pg, b, b);
}

static void free_slow(ta_segment_t *s, ta_page_t *pg, void *p) {
  if (pg->kind == TA_SPAN_HUGE) {
    if ((uint8_t *)p != (uint8_t *)s + s->huge_off) ta_error("free: invalid pointer", p);
    ta_huge_free(s);
    return;
  }
  if (pg->kind != TA_SPAN_SMALL && pg->kind != TA_SPAN_LARGE) ta_error("free: invalid pointer (not allocated)", p);
  if (!ta_is_block_start(pg, p)) ta_error("free: invalid pointer (not the start of a block)", p);
  free_remote(pg, p); /* the fast path takes every block-start free of our own */
  /* A thread that only frees (Ruby's GC sweeping other threads' strings)
   * must still run the periodic purge. */
  ta_heap_t *h = ta_tls_heap;
  if (h != &ta_heap_empty) ta_heap_maintain(h);
}

TRIMALLOC_API void *trimalloc_calloc(size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  if (total > TA_LARGE_MAX) return ta_huge_alloc(total, 0, true); /* fresh mappings are zero */
  void *p = trimalloc_malloc(total);
  if (p) memset(p, 0, total);
  return p;
}

/* Usable size of a block; reports and aborts for a pointer that is not one. */
size_t ta_usable_size(const void *p, const char *what) {
  ta_segment_t *s = ta_segment_of(p);
  if (!ta_segmap_contains(s)) ta_error(what, p);
  ta_page_t *pg = ta_page_of(s, p);
  if (pg->kind == TA_SPAN_HUGE) {
    if ((const uint8_t *)p != (uint8_t *)s + s->huge_off) ta_error(what, p);
    return s->huge_size;
  }
  if ((pg->kind != TA_SPAN_SMALL && pg->kind != TA_SPAN_LARGE) || !ta_is_block_start(pg, p)) ta_error(what, p);
  return pg->bsize;
}

TRIMALLOC_API size_t trimalloc_malloc_usable_size(const void *p) {
  return p ? ta_usable_size(p, "malloc_usable_size: invalid pointer") : 0;
}

TRIMALLOC_API void *trimalloc_realloc(void *p, size_t n) {
  if (!p) return trimalloc_malloc(n);
  if (n == 0) { /* glibc's behaviour: free, return NULL */
    trimalloc_free(p);
    return NULL;
  }
  size_t have = ta_usable_size(p, "realloc: invalid pointer");
  ta_segment_t *s = ta_segment_of(p);
  if (s->huge && n > TA_LARGE_MAX) return ta_huge_realloc(s, n); /* mremap: no copy */
  if (n <= have && n >= have / 2) return p;                        /* fits in place */
  void *q = trimalloc_malloc(n);
  if (!q) return NULL; /* p stays valid */
  memcpy(q, p, n < have ? n : have);
  trimalloc_free(p);
  return q;
}

TRIMALLOC_API void *trimalloc_reallocarray(void *p, size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return trimalloc_realloc(p, total);
}
