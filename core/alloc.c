/* The entry points: malloc and free with their fast paths, and the functions
 * built directly on them (calloc, realloc, reallocarray, malloc_usable_size).
 * Under -DTA_OVERRIDE (the preload library) they also carry the standard
 * names, as aliases, so dlsym(RTLD_DEFAULT, "malloc") == trimalloc_malloc. */
#include "internal.h"

#include <errno.h>

__attribute__((noinline)) void ta_heap_corrupt(ta_block_t *b) {
  ta_error("malloc: heap corruption (double free or write after free) of block", b);
}

#ifdef TA_HARDENED
/* The hardened build's malloc also checks the two blocks its pop leaves at
 * the head of the bin (their cookies and links): free holds a block back
 * behind one or two others (push_delayed), and a write after free into it
 * is still reported at the next malloc of its class. */
static inline void check_ahead(ta_block_t *b, uintptr_t cookie) {
  for (int i = 0; i < 2 && b; i++) {
    ta_block_t *next = ta_link_get(b);
    if (ta_unlikely(b->key != cookie || ((uintptr_t)next & (TA_ALIGN - 1)))) ta_heap_corrupt(b);
    b = next;
  }
}
#endif

/* An empty thread-cache bin (and a thread's first call: its cache is made).
 * The allocation counts toward the class's sampling countdown here. */
TA_PROF_PATH static void *malloc_refill(ta_tcache_t *tc, size_t cls) {
  ta_process_init();
#ifdef TA_HARDENED
  if (cls == TA_ZERO_CLASS) { /* malloc(0): a no-access address of its own (zero.c) */
    void *z = ta_zero_alloc();
    if (z) return z;
    cls = 0;
  }
#endif
  void *b = ta_tcache_refill(tc, cls);
#ifdef TA_HARDENED
  if (b) ta_canary_set(b, ta_class_size(cls), ta_cookie);
#endif
#ifndef TA_NO_PROF
  if (b) ta_prof_refill_count(cls, b);
#endif
  return b;
}

#ifndef TA_NO_PROF
/* The class's sampling skip was 0: the pop (from a bin known not to be
 * empty, whose count ta_tbin_count_pop already took one from: given back
 * here, refill's pop takes it), then the profiler (a sample, or a fresh
 * draw; either arms the skip again). */
TA_PROF_PATH static void *malloc_sample(ta_tcache_t *tc, size_t cls) {
  ta_tbin_t *tb = &tc->bins[cls];
  ta_relaxed_store(&tb->count, (uint16_t)(ta_relaxed_load(&tb->count) + 1));
  void *b = ta_tcache_refill(tc, cls);
#ifdef TA_HARDENED
  if (b) ta_canary_set(b, ta_class_size(cls), ta_cookie);
#endif
  if (b) ta_prof_class_event(ta_tls_tcache, cls, b);
  return b;
}
#endif

#ifndef TA_NO_PROF
/* Usable size of a large or huge block just allocated (for the profiler). */
static size_t big_usable(void *p) {
  ta_segment_t *s = ta_segment_of(p);
  ta_span_t *sp = ta_span_of(s, p);
  return sp->kind == TA_SPAN_HUGE ? s->huge_size : ta_large_usable(sp);
}
#endif

/* Beyond the size classes: up to 2 MiB from a page heap, above that a
 * mapping of its own. */
TA_PROF_PATH static void *malloc_big(size_t n) {
  ta_process_init();
#ifdef TA_HARDENED
  void *p = n <= TA_LARGE_MAX ? ta_large_alloc_guarded(ta_arena_pick(), n) : ta_huge_alloc(n, 0, false);
#else
  void *p = n <= TA_LARGE_MAX ? ta_large_alloc_front(ta_arena_pick(), n) : ta_huge_alloc(n, 0, false);
#endif
#ifndef TA_NO_PROF
  if (p) ta_prof_maybe(p, big_usable(p));
#endif
  return p;
}

/* Fast path budget: a class lookup (one table load up to 1 KiB, a few ALU
 * operations up to 128 KiB), a TLS load, the heap profiler's countdown (a
 * branch on the borrow of the subtraction that counts the pop:
 * ta_tbin_count_pop; none with -DTA_NO_PROF), a pop from the bin's list with its link unmasked
 * (one XOR) and checked with the cookie (which shares the cache line of the
 * link just read), and three stores. No lock, no atomic read-modify-write,
 * no stats, no byte count (the cache's budget bounds it). */
TA_PROF_PATH_INLINE TRIMALLOC_API void *trimalloc_malloc(size_t n) {
  size_t cls;
#ifdef TA_HARDENED
  if (n - 1 < TA_TCACHE_MAX - TA_CANARY) n += TA_CANARY; /* room for the canary (0 stays 0: zero.c) */
  else if (n) return malloc_big(n);
#endif
  if (ta_likely(n <= TA_SMALL_MAX)) cls = ta_small_class[(n + TA_ALIGN - 1) / TA_ALIGN];
  else if (n <= TA_TCACHE_MAX) cls = ta_class_of(n);
  else return malloc_big(n);
  ta_tcache_t *tc = ta_tls_tcache;
  ta_tbin_t *tb = &tc->bins[cls];
  ta_block_t *b = tb->head;
  if (ta_likely(b != NULL)) {
#ifndef TA_NO_PROF
    if (ta_unlikely(ta_tbin_count_pop(tb))) return malloc_sample(tc, cls);
#else
    (void)ta_tbin_count_pop(tb); /* false */
#endif
    ta_tbin_pop(tb, b, ta_checked(true));
#ifdef TA_HARDENED
    check_ahead(tb->head, ta_cookie);
    ta_canary_set(b, ta_class_size(cls), ta_cookie);
#endif
    return b;
  }
  return malloc_refill(tc, cls);
}

/* A block of class cls exactly (aligned allocation picks the class). Every
 * class has a thread-cache bin; a thread without a cache gets its block from
 * the arena in ta_tcache_refill. */
_Static_assert(TA_TCLASSES == TA_CLASSES, "ta_malloc_class refills a thread-cache bin for any class");
TA_PROF_PATH void *ta_malloc_class(size_t cls) {
  ta_process_init();
  void *b = ta_tcache_refill(ta_tls_tcache, cls);
#ifdef TA_HARDENED
  if (b) ta_canary_set(b, ta_class_size(cls), ta_cookie);
#endif
#ifndef TA_NO_PROF
  ta_prof_maybe(b, ta_class_size(cls) - TA_CANARY);
#endif
  return b;
}

/* A block whose second word holds the cookie is already free: in a thread
 * cache (this one or another's) or in its slab (live blocks have 0 there:
 * every pop clears it). Freeing it again would hand it out twice. */
static __attribute__((noinline, noreturn, cold)) void double_free(void *p) {
  ta_error("free: double free", p);
}

#ifdef TA_HARDENED
static __attribute__((noinline, noreturn, cold)) void overflow(void *p) {
  ta_error("free: heap overflow past the end of block", p);
}

/* The hardened build does not hand a block just freed straight back to the
 * next malloc of its class (a use after free would then find the new
 * object in it): the block goes in behind 1 or 2 of the bin's blocks (which one is
 * drawn from its address and the secret cookie); an empty bin is filled
 * first. The links walked are checked as malloc's pop checks them, and
 * malloc checks the two blocks after the one it pops (check_ahead).
 * Pre: count < tb->max. */
/* An empty bin: filled first, so that there is a block to go behind. */
static __attribute__((noinline)) void push_delayed_empty(ta_tcache_t *tc, size_t cls, ta_block_t *b) {
  ta_tbin_t *tb = &tc->bins[cls];
  ta_block_t *h = ta_tcache_refill(tc, cls); /* pops one of a fresh batch: put it back */
  if (h) ta_tcache_overflow(tc, cls, h);
  uint16_t count = ta_relaxed_load(&tb->count);
  if (count == 0 || count >= tb->max) {
    ta_tcache_overflow(tc, cls, b);
    return;
  }
  ta_link_set(b, ta_link_get(tb->head)); /* behind the head */
  b->key = ta_cookie;
  ta_link_set(tb->head, b);
  ta_relaxed_store(&tb->count, (uint16_t)(count + 1));
}

static inline void push_delayed(ta_tcache_t *tc, size_t cls, ta_block_t *b, uint16_t count, uintptr_t cookie) {
  ta_tbin_t *tb = &tc->bins[cls];
  if (ta_unlikely(count == 0)) {
    push_delayed_empty(tc, cls, b);
    return;
  }
  ta_block_t *at = tb->head;
  if (count > 1 && ((((uintptr_t)b ^ cookie) * 0x9e3779b97f4a7c15ull) >> 63)) { /* behind the second */
    ta_block_t *next = ta_link_get(at);
    if (ta_unlikely(((uintptr_t)next & (TA_ALIGN - 1)) || !next || next->key != cookie)) ta_heap_corrupt(at);
    at = next;
  }
  b->key = cookie;
  b->next = at->next; /* masked as it is */
  ta_link_set(at, b);
  ta_relaxed_store(&tb->count, (uint16_t)(count + 1));
}
#endif

/* free's push, the fast path's and free_cached's: the double-free check
 * (the block's cookie word), the hardened build's canary, then onto the
 * thread's bin, or to the cache's slow path when the bin is full. */
static inline __attribute__((always_inline)) void free_push(const ta_span_t *sp, size_t cls, void *p,
                                                            uintptr_t cookie) {
  if (ta_unlikely(ta_checked(((ta_block_t *)p)->key == cookie))) double_free(p);
#ifdef TA_HARDENED
  if (ta_unlikely(!ta_canary_ok(p, sp->bsize, ta_cookie))) overflow(p);
#else
  (void)sp;
#endif
  ta_tcache_t *tc = ta_tls_tcache;
  ta_tbin_t *tb = &tc->bins[cls];
  uint16_t count = ta_relaxed_load(&tb->count);
  if (ta_likely(count < tb->max)) { /* the budget bounds the bytes: no byte count here */
#ifdef TA_HARDENED
    push_delayed(tc, cls, p, count, cookie); /* not straight back to the next malloc */
#else
    ta_tbin_push(tb, p, count, cookie);
#endif
    return;
  }
  ta_tcache_overflow(tc, cls, p);
}

/* A carved block whose first OS page is purged is free: a live block's
 * pages are never purged (ta_segbits_t.purged, read without a lock like the
 * purger's other readers). */
static bool first_page_purged(void *p) {
  ta_segment_t *s = ta_segment_of(p);
  size_t pg = (size_t)((uint8_t *)p - (uint8_t *)s) >> ta_ospage_shift;
  return (ta_relaxed_load(&ta_segbits(s)->purged[pg / 64]) >> (pg % 64)) & 1;
}

/* free's fast path for a block of a slab whose fast bound is shut: a slab
 * holding a block the profiler sampled (ta_span_t.prof_sampled), or a
 * keyless one (a purged page holds a free block's start, which reads 0
 * there: the cookie cannot tell a second free of it). The same checks
 * (carved, the double-free cookie; every slab's class has a thread-cache
 * bin) and the same push;
 * on a keyless slab the block's first page is looked at first: purged
 * means free, so a second free. A Python task that drops its objects after
 * the purger took pages of their slabs freed 5% of its blocks through the
 * slab's lock before this (68k of 1.4M, 265 instructions each). false:
 * take the slab's own path. */
_Static_assert(TA_TCLASSES == TA_CLASSES, "free_cached: a slab's class always has a thread-cache bin");
static bool free_cached(ta_span_t *sp, void *p) {
  size_t cls = sp->cls;
  if ((uint32_t)((uint8_t *)p - sp->start) >= ta_relaxed_load(&sp->carved_bytes)) return false;
  if (ta_unlikely(ta_relaxed_load(&sp->keyless) && first_page_purged(p))) double_free(p);
  free_push(sp, cls, p, ta_cookie);
  return true;
}

static __attribute__((noinline)) void free_slow(ta_segment_t *s, ta_span_t *sp, void *p) {
  switch (sp->kind) {
  case TA_SPAN_HUGE:
    if ((uint8_t *)p != (uint8_t *)s + s->huge_off) ta_error("free: invalid pointer", p);
#ifndef TA_NO_PROF
    ta_prof_forget(sp, p);
#endif
    ta_huge_free(s);
    break;
  case TA_SPAN_LARGE:
#ifndef TA_NO_PROF
    if ((uint8_t *)p == ta_large_block(sp)) ta_prof_forget(sp, p);
#endif
    ta_large_free(sp, p);
    break;
#ifdef TA_HARDENED
  case TA_SPAN_ZERO:
    ta_zero_free(s, p);
    return;
#endif
  case TA_SPAN_SLAB:
    if (!ta_is_block_start(sp, p)) ta_error("free: invalid pointer (not the start of a block)", p);
    /* a slab holding a sampled block sends its frees here: the sampled one
     * leaves the live set and goes to its slab, the others go to the thread
     * cache as on the fast path; so do a keyless slab's */
#ifndef TA_NO_PROF
    if (!(ta_slab_prof_maybe(sp, p) && ta_prof_forget(sp, p))) /* the check inline: no call for the others */
#endif
      if (free_cached(sp, p)) return;
#ifdef TA_HARDENED
    if ((uint32_t)((uint8_t *)p - sp->start) < ta_relaxed_load(&sp->carved_bytes) &&
        ((ta_block_t *)p)->key != ta_cookie && !ta_canary_ok(p, sp->bsize, ta_cookie))
      overflow(p);
#endif
    /* the slab's own path: a sampled block, or one the fast bound refused
     * as never handed out (ta_arena_free1 reports it) */
    ta_arena_free1(sp, p);
    break;
  default:
    ta_error("free: invalid pointer (not allocated)", p);
  }
  ta_purge_kick(); /* something may be left to purge */
}

/* A block aligned above 2 MiB (not in the segment map). Out of line, so
 * that free's fast path keeps no register across a call for it. */
static __attribute__((noinline)) void free_far(void *p) {
  ta_segment_t *far = ta_huge_far_of(p);
  if (!far) ta_error("free: invalid pointer", p);
#ifndef TA_NO_PROF
  ta_prof_forget(&far->spans[0], p);
#endif
  ta_huge_free(far);
}

/* Fast path budget: a segment-map bit test, the span descriptor's class and
 * one multiply and compare for "a thread-cache class, a block start, ever
 * handed out" (ta_span_t.fast_free_below), a TLS load, the block's cookie
 * word (its cache line is needed for the push anyway), one compare (the
 * bin's count against its length, which the cache's budget bounds) and a
 * push. */
TRIMALLOC_API void trimalloc_free(void *p) {
  ta_segment_t *s = ta_segment_of(p);
  if (ta_unlikely(!ta_segmap_contains(s))) {
    if (p == NULL) return;
    free_far(p);
    return;
  }
  ta_span_t *sp = ta_span_of(s, p);
  size_t cls = sp->cls;
  uint64_t off = (uint32_t)((uint8_t *)p - sp->start), magic = sp->div_magic;
  uintptr_t cookie = ta_cookie; /* loaded once: the stores below could alias it */
#ifdef TA_UNCHECKED
  (void)off, (void)magic;
  if (ta_likely(cls < TA_TCLASSES)) {
#else
  if (ta_likely(off * magic < ta_relaxed_load(&sp->fast_free_below))) {
#endif
    free_push(sp, cls, p, cookie);
    return;
  }
  free_slow(s, sp, p);
}

TA_PROF_PATH_FP TRIMALLOC_API void *trimalloc_calloc(size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  if (total > TA_LARGE_MAX) { /* fresh mappings are zero */
    void *h = ta_huge_alloc(total, 0, true);
#ifndef TA_NO_PROF
    if (h) ta_prof_maybe(h, big_usable(h));
#endif
    return h;
  }
  void *p = trimalloc_malloc(total);
  if (p) memset(p, 0, total);
  return p;
}

/* Usable size of a block; reports and aborts for a pointer that is not one. */
size_t ta_usable_size(const void *p, const char *what) {
  ta_segment_t *s = ta_segment_of(p);
  if (!ta_segmap_contains(s)) {
    ta_segment_t *far = ta_huge_far_of(p);
    if (!far) ta_error(what, p);
    return far->huge_size;
  }
  ta_span_t *sp = ta_span_of(s, p);
#ifdef TA_HARDENED
  if (sp->kind == TA_SPAN_ZERO) return ta_zero_usable(s, p, what);
#endif
  if (sp->kind == TA_SPAN_HUGE) {
    if ((const uint8_t *)p != (uint8_t *)s + s->huge_off) ta_error(what, p);
    return s->huge_size;
  }
  if (sp->kind == TA_SPAN_LARGE) {
    if ((const uint8_t *)p != ta_large_block(sp)) ta_error(what, p);
    return ta_large_usable(sp);
  }
  if (sp->kind != TA_SPAN_SLAB || !ta_is_block_start(sp, p)) ta_error(what, p);
  if (sp->kind == TA_SPAN_SLAB && (uint32_t)((const uint8_t *)p - sp->start) >= ta_relaxed_load(&sp->carved_bytes))
    ta_error(what, p); /* never handed out */
  return sp->bsize - TA_CANARY;
}

TRIMALLOC_API size_t trimalloc_malloc_usable_size(const void *p) {
  return p ? ta_usable_size(p, "malloc_usable_size: invalid pointer") : 0;
}

#ifndef TA_NO_PROF
/* A block kept in place (or moved by mremap) by realloc is, for the
 * profiler, a free and an allocation: a sample of it goes, and while
 * sampling is on the new size gets its own draw. */
TA_PROF_PATH static void *realloc_prof(void *p, void *q, size_t have) {
  if (!q) return q;
  /* q's span (moved by mremap, the header's flag moved with it; a block
   * aligned above 2 MiB: its header before it), the sample keyed by p */
  ta_segment_t *s = ta_segment_of(q), *far;
  if (ta_segmap_contains(s)) ta_prof_forget(ta_span_of(s, q), p);
  else if ((far = ta_huge_far_of(q)) != NULL) ta_prof_forget(&far->spans[0], p);
  /* have: q's usable size when the caller knows it (kept in place: every
   * in-place realloc comes here while sampling is on, and ta_usable_size's
   * checks were 0.87% of preloaded bench/py_tasks.py's instructions at 512 KiB) */
  if (ta_relaxed_load(&ta_prof_rate)) ta_prof_draw(q, have ? have : ta_usable_size(q, "realloc: invalid pointer"));
  return q;
}
#define REALLOC_PROF(p, q, have) \
  (ta_unlikely(ta_relaxed_load(&ta_prof_rate) || ta_relaxed_load(&ta_prof_live_count)) ? realloc_prof(p, q, have) : (q))
/* realloc's fast path keeps only blocks of slabs with no sampled block (a
 * sampled one shuts fast_free_below): only a running sampler matters there */
#define REALLOC_PROF_RATE() ta_unlikely(ta_relaxed_load(&ta_prof_rate))
#else
#define REALLOC_PROF_RATE() false
#define REALLOC_PROF(p, q, have) (q)
#endif

/* The usable size of p, a block of span sp, when it is a thread-cache
 * slab's block as free's fast path tells it (a block start, handed out, its
 * slab neither sampled nor keyless: ta_span_t.fast_free_below); else 0. */
static inline size_t cached_usable(const ta_span_t *sp, const void *p) {
  uint64_t off = (uint32_t)((const uint8_t *)p - sp->start);
  return off * sp->div_magic < ta_relaxed_load(&sp->fast_free_below) ? (size_t)sp->bsize - TA_CANARY : 0;
}

/* The size a block that grows past its class moves to. A caller that asks
 * for less than a thirty-second more than the block holds (an exact-size
 * appender: CPython's `str +=`, a naive string builder) gets an eighth more,
 * so that with classes an eighth apart every other class boundary it passes
 * keeps it in place: half the moves and half the bytes copied
 * (bench/realloc_grow.c). A caller that over-allocates itself gets what it
 * asked for: Ruby's strings and arrays (by half or double), and Python's
 * lists and bytearrays (by an eighth of their last request) unless their
 * block was already more than about 9% bigger than that request.
 * So does a large block (past the classes, grown in place into free
 * slices); the headroom stops at the largest class. */
static inline size_t grow_size(size_t n, size_t have) {
  const size_t top = TA_MEDIUM_MAX - TA_CANARY; /* the largest class's usable size */
  if (n - have >= have / 32 || n > top) return n;
  return n + n / 8 < top ? n + n / 8 : top;
}

/* Everything realloc does but keep a cached slab block in place: NULL,
 * 0, huge (mremap), large (grown into free slices), a move, and every block
 * while the profiler has something to say about it. Called as realloc's
 * tail call, so the profiler's frame-pointer walk from a sample taken here
 * finds realloc's caller as this frame's return address. */
TA_PROF_PATH static void *realloc_slow(void *p, size_t n) {
  if (!p) return trimalloc_malloc(n);
  if (n == 0) { /* glibc's behaviour: free, return NULL */
    trimalloc_free(p);
    return NULL;
  }
  /* a slab block's size with no call: a cached slab's as on the fast
   * path, or any slab's carved block start (the fast bound is shut while a
   * purged page holds a free block's start, which a long-running process's
   * purger leaves in many slabs: 219k of bench/realloc_grow.c's 316k slow
   * calls, 48 instructions each in ta_usable_size); any other block,
   * ta_usable_size's checks */
  ta_segment_t *s = ta_segment_of(p);
  size_t have = 0;
  if (ta_segmap_contains(s)) {
    const ta_span_t *sp = ta_span_of(s, p);
    uint64_t off = (uint32_t)((uint8_t *)p - sp->start);
    have = cached_usable(sp, p);
    if (!have && sp->kind == TA_SPAN_SLAB && off < ta_relaxed_load(&sp->carved_bytes) &&
        off * sp->div_magic < sp->div_magic) /* a block start (put_run's test) */
      have = (size_t)sp->bsize - TA_CANARY;
  }
  if (!have) have = ta_usable_size(p, "realloc: invalid pointer");
  if (ta_segmap_contains(s) && s->huge && n > TA_LARGE_MAX) return REALLOC_PROF(p, ta_huge_realloc(s, n), 0); /* mremap */
  if (n <= have && n >= have / 2) return REALLOC_PROF(p, p, have);         /* fits in place */
  if (n > have && n <= TA_LARGE_MAX && ta_segmap_contains(s)) {   /* a large block grows into */
    ta_span_t *sp = ta_span_of(s, p);                               /* the free slices after it */
    if (sp->kind == TA_SPAN_LARGE && ta_large_grow(sp, n)) return REALLOC_PROF(p, p, 0);
  }
  void *q = trimalloc_malloc(n > have ? grow_size(n, have) : n);
  if (!q) return NULL; /* p stays valid */
  memcpy(q, p, n < have ? n : have);
  trimalloc_free(p);
  return q;
}

/* Fast path budget: free's lookup and its one-compare test of a cached slab
 * block (ta_span_t.fast_free_below), the fit (at most the class's size, at
 * least half of it), the sampling rate (one load) when the profiler is built in; no call
 * and no frame of its own. Python reallocs 1 in 7 of its blocks, most of
 * them in place. */
TA_PROF_PATH_INLINE TRIMALLOC_API void *trimalloc_realloc(void *p, size_t n) {
  ta_segment_t *s = ta_segment_of(p);
  if (ta_likely(ta_segmap_contains(s))) { /* (NULL is in no segment) */
    size_t have = cached_usable(ta_span_of(s, p), p);
    if (ta_likely(n <= have && n >= have / 2 && n != 0) && !REALLOC_PROF_RATE()) return p;
  }
  return realloc_slow(p, n);
}

TA_PROF_PATH_FP TRIMALLOC_API void *trimalloc_reallocarray(void *p, size_t count, size_t size) {
  size_t total;
  if (__builtin_mul_overflow(count, size, &total)) {
    errno = ENOMEM;
    return NULL;
  }
  return trimalloc_realloc(p, total);
}

/* trimalloc_trim: flush the caller's cache, ask the other threads to flush
 * theirs at their next slow path, then return everything free now. */
static size_t trim(bool all) {
  uint64_t t0 = ta_prim_clock_ns();
  ta_process_init();
  ta_tcache_ask_flush(); /* first: the caller's flush then marks the request seen, so its */
  ta_tcache_flush_all(ta_tls_tcache); /* next slow paths do not empty a refilled cache again */
  ta_tcaches_reap();
  return ta_purge_trim(all, t0);
}

TRIMALLOC_API size_t trimalloc_trim(void) {
  return trim(true);
}

TRIMALLOC_API size_t trimalloc_trim_idle(void) {
  return trim(false);
}

TRIMALLOC_API int trimalloc_malloc_trim(size_t pad) {
  (void)pad;
  return trimalloc_trim() > 0;
}

TA_ALIAS(malloc, trimalloc_malloc)
TA_ALIAS(calloc, trimalloc_calloc)
TA_ALIAS(realloc, trimalloc_realloc)
TA_ALIAS(reallocarray, trimalloc_reallocarray)
TA_ALIAS(free, trimalloc_free)
TA_ALIAS(malloc_usable_size, trimalloc_malloc_usable_size)
TA_ALIAS(malloc_trim, trimalloc_malloc_trim)
/* glibc's internal names, which some programs and libraries call directly. */
TA_ALIAS(__libc_malloc, trimalloc_malloc)
TA_ALIAS(__libc_calloc, trimalloc_calloc)
TA_ALIAS(__libc_realloc, trimalloc_realloc)
TA_ALIAS(__libc_free, trimalloc_free)
