/* trimalloc: cross-file internals, grouped under the file that defines them.
 * Calls go one way, down this list: the entry points built on malloc and
 * free (compat, sized, align), the entry points (alloc, check),
 * init, prof, prof_dump, prof_live, prof_cfa, prof_stack, prof_sym, prof_meta, pprof, stats, tcache, purge, huge, zero, arena, slab, span, segment, delay, size,
 * options, error, prim. */
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
#define ta_relaxed_sub(p, v) atomic_fetch_sub_explicit((p), (v), memory_order_relaxed)

#ifdef TA_DEBUG
#include <assert.h>
#define ta_assert(x) assert(x)
#else
#define ta_assert(x) ((void)0)
#endif

/* The standard names (malloc, free, ...) are aliases defined next to their
 * targets, only in the preload library's objects (built with -DTA_OVERRIDE). */
#ifdef TA_OVERRIDE
#define TA_ALIAS(name, target) \
  __typeof__(target) name __attribute__((alias(#target), visibility("default")));
#else
#define TA_ALIAS(name, target)
#endif

/* ---- the hardened build (make -C core hardened) --------------------------- */
/* Each slab block ends with a canary word (its address ^ the cookie), set by
 * malloc and checked by free: a write past the usable size is reported at the
 * free. The usable size is 8 bytes less; large and huge blocks have none. */
#ifdef TA_HARDENED
#define TA_CANARY 8
static inline void ta_canary_set(void *b, size_t bsize, uintptr_t cookie) {
  *(uintptr_t *)((uint8_t *)b + bsize - TA_CANARY) = (uintptr_t)b ^ cookie;
}
static inline bool ta_canary_ok(const void *b, size_t bsize, uintptr_t cookie) {
  return *(const uintptr_t *)((const uint8_t *)b + bsize - TA_CANARY) == ((uintptr_t)b ^ cookie);
}
#else
#define TA_CANARY 0
#endif

/* ---- the unchecked build (make -C core unchecked), for bench/ only ---------- */
/* What the default build's misuse checks cost on the fast paths is measured
 * against a build without them: -DTA_UNCHECKED compiles out the malloc pop's
 * cookie and link checks, free's block-start, carved and double-free checks,
 * and the link masking. Nothing ships it; bench/run's trimalloc-unchecked. */
#ifdef TA_UNCHECKED
/* Its free fast path takes every block of a cached class, so it would not
 * see a sampled one: no sampling in this build (the API stays, samples none). */
#ifndef TA_NO_PROF
#define TA_NO_PROF 1
#endif
#define ta_checked(x) ((void)sizeof(x), 0) /* x named, never evaluated */
#else
#define ta_checked(x) (x)
#endif

/* ---- prof*.c: the heap profiler ------------------------------------------
 * prof.c: the API, the sampling decisions (per-class countdowns in the thread
 * cache bins, direct draws elsewhere), fork. prof_dump.c: dumps, file names,
 * the growth thread, at exit. prof_live.c: the live set (sampled blocks by
 * address), its estimates, the peak set. prof_stack.c: native unwinding, the
 * interpreter-frame hook, interned call paths (traces) and frame names.
 * prof_fde.c: the unwind tables the unwinder reads, from the objects' files.
 * prof_sym.c: the dynamic symbol holding an address. prof_meta.c: the profiler's own mappings, within prof_max_bytes. pprof.c:
 * the profile.proto writer. */
#define TA_PROF_CLAMP 4096u /* a countdown never exceeds this: each thread looks at the epoch that often
  (per class: a start or stop reaches a thread within 4096 allocations of a class, or at its next refill) */
#define TA_PROF_MAX_FRAMES 64    /* native frames kept; as many interpreter frames again */
/* Functions that can be on the stack between the program's call and the
 * unwinder inside a sample: the unwinder skips frames in this section. The
 * slow ones keep frame pointers, so that the frame-pointer walk
 * (prof_unwind 2) gets through them: malloc's fast path tail-calls them,
 * so the first record it finds past them is the program's; calloc, realloc
 * and the aligned entry points (which call on) keep theirs too. */
#define TA_PROF_PATH __attribute__((section("ta_prof_text"), noinline, optimize("no-omit-frame-pointer")))
#define TA_PROF_PATH_INLINE __attribute__((section("ta_prof_text")))
#define TA_PROF_PATH_FP __attribute__((section("ta_prof_text"), optimize("no-omit-frame-pointer")))
TA_HIDDEN extern _Atomic uint32_t ta_prof_epoch;     /* bumped when sampling starts, stops or R changes */
TA_HIDDEN extern _Atomic uint64_t ta_prof_rate;      /* R while sampling, else 0 */
TA_HIDDEN extern _Atomic uint64_t ta_prof_live_count; /* sampled blocks live now */
TA_HIDDEN extern _Atomic uint64_t ta_prof_live_bytes, ta_prof_samples, ta_prof_dropped, ta_prof_meta_bytes;
/* A thread-cache allocation of class cls whose countdown ran out (malloc's
 * fast path), or any allocation from a refill (counted here). */
TA_HIDDEN void ta_prof_class_event(ta_tcache_t *tc, size_t cls, void *b);
TA_HIDDEN void ta_prof_refill_event(size_t cls, void *b); /* ta_prof_refill_count's slow half */
/* An allocation outside the thread caches, `size` usable bytes: a draw. */
TA_HIDDEN void ta_prof_draw(void *p, size_t size);
static inline void ta_prof_maybe(void *p, size_t size) {
  if (ta_unlikely(ta_relaxed_load(&ta_prof_rate)) && p) ta_prof_draw(p, size);
}
/* A block from a refill (malloc's bin was empty) counts toward its class's
 * sampling skip, here inline: the thread's cache live, no start or stop
 * since its last draw, the skip not out (about 8 instructions, no call);
 * else ta_prof_refill_event. Declared where ta_tcache_t is (below). */
static inline void ta_prof_refill_count(size_t cls, void *b);
/* Removes p's sample if p (in span sp: a slab, large or huge span, or a
 * far huge block's header span) is sampled. true: it was. */
TA_HIDDEN bool ta_prof_forget(ta_span_t *sp, void *p);
TA_HIDDEN void ta_prof_init(void); /* options at start */
TA_HIDDEN void ta_prof_fork_prepare(void);
TA_HIDDEN void ta_prof_fork_parent(void);
TA_HIDDEN void ta_prof_fork_child(void);
TA_HIDDEN void ta_prof_option_changed(const char *name); /* after trimalloc_option_set */

/* prof_dump.c */
TA_HIDDEN int ta_prof_dump(const char *path, int kind, const char *reason, char *written, size_t size);
TA_HIDDEN void ta_prof_dump_kick(void); /* growth: wake (or start) the profiler thread */
TA_HIDDEN extern _Atomic uint64_t ta_prof_last_rate; /* R of the last start: a dump's period */
TA_HIDDEN void ta_prof_dump_fork_prepare(void);
TA_HIDDEN void ta_prof_dump_fork_parent(void);
TA_HIDDEN void ta_prof_dump_fork_child(void);

/* prof_live.c: under its own lock (a leaf but for prof_meta's). */
typedef struct ta_prof_row_s {
  double alloc_objects, alloc_bytes, inuse_objects, inuse_bytes;
} ta_prof_row_t;
/* Adds a sample; false when the budget is full (counted as dropped).
 * *grow: the growth trigger fired. */
TA_HIDDEN bool ta_prof_live_add(void *p, uint32_t trace, double objects, double bytes, bool *grow);
TA_HIDDEN bool ta_prof_live_remove(void *p);
/* Per trace id < n: the totals, live set or peak set (kind). Returns the
 * number of traces (rows needed); rows filled only when it is <= n. */
TA_HIDDEN size_t ta_prof_live_snapshot(int kind, ta_prof_row_t *rows, size_t n);
TA_HIDDEN void ta_prof_live_reset_peak(void);
TA_HIDDEN extern _Atomic uint64_t ta_prof_snapshot_ns; /* the last snapshot's lock hold time */
TA_HIDDEN void ta_prof_live_growth_reset(void); /* the next growth dump: live bytes + prof_growth */
TA_HIDDEN void ta_prof_live_fork_prepare(void);
TA_HIDDEN void ta_prof_live_fork_parent(void);

/* prof_stack.c. Native frames, leaf first, the profiler's own skipped: the
 * sample path calls _Unwind_Backtrace itself with ta_prof_unwind_step (each
 * frame between it and the program costs the unwinder a table lookup and a
 * CFA program: the fewer, the better), or the frame-pointer walk; then
 * ta_prof_merge puts the interpreter's frames in. */
#ifdef __GLIBC__
#define TA_PROF_HAVE_LIBGCC 1 /* lock-free with glibc's _dl_find_object (prof_stack.c) */
#else
#define TA_PROF_HAVE_LIBGCC 0
#endif
/* prof_fde.c's lookup needs glibc 2.35's _dl_find_object; on an older glibc
 * (a pip build from source on an older distribution) libgcc's own stays,
 * reading the tables through the mappings. */
#if TA_PROF_HAVE_LIBGCC && defined(__GLIBC_PREREQ)
#if __GLIBC_PREREQ(2, 35)
#define TA_PROF_FDE_FILES 1
#endif
#endif
#ifndef TA_PROF_FDE_FILES
#define TA_PROF_FDE_FILES 0
#endif
typedef struct ta_prof_walk_s {
  uint64_t *pcs;
  size_t n, max;
  bool skipping;
  bool at_eval; /* stopped at the interpreter's eval function (a frames hook is set) */
  uintptr_t eval_lo, eval_hi;
} ta_prof_walk_t;
TA_HIDDEN void ta_prof_walk_init(ta_prof_walk_t *w, uint64_t *pcs, size_t max);
struct _Unwind_Context;
TA_HIDDEN bool ta_prof_use_libgcc(void);
TA_HIDDEN int ta_prof_unwind_step(struct _Unwind_Context *ctx, void *walk); /* an _Unwind_Reason_Code */
TA_HIDDEN void ta_prof_unwind_fp(ta_prof_walk_t *w);
TA_HIDDEN size_t ta_prof_merge(ta_prof_walk_t *w, int32_t *lines, size_t max);
TA_HIDDEN void ta_prof_stack_bounds(uintptr_t *lo, uintptr_t *hi); /* the calling thread's stack */
/* One frame of a walk, given its return address: false when the walk ends
 * (the eval function met, or w full). The profiler's own frames are skipped. */
static inline bool ta_prof_walk_add(ta_prof_walk_t *w, uintptr_t ret) {
  extern const char __start_ta_prof_text[] __attribute__((visibility("hidden")));
  extern const char __stop_ta_prof_text[] __attribute__((visibility("hidden")));
  if (w->skipping && ret >= (uintptr_t)__start_ta_prof_text && ret < (uintptr_t)__stop_ta_prof_text) return true;
  w->skipping = false;
  uintptr_t pc = ret - 1; /* a return address: the call is the byte before */
  if (pc >= w->eval_lo && pc < w->eval_hi) {
    w->at_eval = true;
    return false;
  }
  w->pcs[w->n++] = pc;
  return w->n < w->max;
}
/* prof_cfa.c: the x86-64 walk from cached unwind rules, in place of
 * _Unwind_Backtrace; false when it gave up (w is as ta_prof_walk_init left
 * it: the caller runs libgcc's). Other builds: always false. */
#if TA_PROF_FDE_FILES && defined(__x86_64__)
#define TA_PROF_CFA 1
TA_HIDDEN bool ta_prof_unwind_cfa(ta_prof_walk_t *w);
#else
#define TA_PROF_CFA 0
static inline bool ta_prof_unwind_cfa(ta_prof_walk_t *w) {
  (void)w;
  return false;
}
#endif
TA_HIDDEN extern _Atomic uint64_t ta_prof_cfa_walks, ta_prof_cfa_giveups, ta_prof_cfa_rules; /* walks tried, given up; rules cached */
TA_HIDDEN void ta_prof_cfa_fork_prepare(void);
TA_HIDDEN void ta_prof_cfa_fork_parent(void);
TA_HIDDEN uint32_t ta_prof_intern(const uint64_t *pcs, const int32_t *lines, size_t n, const char *tag); /* UINT32_MAX: no room */
TA_HIDDEN uint32_t ta_prof_traces(void); /* traces interned so far (ids 0..n-1) */
/* A DWARF unsigned LEB128 at p, before end (prof_fde.c, prof_cfa.c): the
 * byte after it, or NULL when it does not end there or overflows. */
static inline const uint8_t *ta_uleb(const uint8_t *p, const uint8_t *end, uint64_t *v) {
  uint64_t r = 0;
  for (unsigned sh = 0; p < end && sh < 64; sh += 7) {
    uint8_t b = *p++;
    r |= (uint64_t)(b & 0x7f) << sh;
    if (!(b & 0x80)) {
      *v = r;
      return p;
    }
  }
  return NULL;
}
/* prof_fde.c: the unwinder's FDE lookup (_Unwind_Find_FDE), from the objects'
 * files; its lock is a leaf but for prof_meta's. */
TA_HIDDEN extern _Atomic uint64_t ta_prof_fde_reads; /* preads of unwind tables so far */
TA_HIDDEN void ta_prof_fde_fork_prepare(void);
TA_HIDDEN void ta_prof_fde_fork_parent(void);
typedef struct ta_prof_trace_s {
  double alloc_objects, alloc_bytes; /* written under prof_live's lock */
  const char *tag;                   /* NULL: none */
  uint64_t hash;
  uint32_t n;
  int32_t *lines; /* lines[i] for an interpreter frame, else 0 */
  uint64_t pcs[]; /* native: PC - 1; interpreter: key | TA_PROF_INTERP */
} ta_prof_trace_t;
#define TA_PROF_INTERP ((uint64_t)1 << 63)
TA_HIDDEN ta_prof_trace_t *ta_prof_trace(uint32_t id);
TA_HIDDEN bool ta_prof_frame_name(uint64_t key, const char **name, const char **file);
TA_HIDDEN void ta_prof_warm(void); /* the unwinder's first call, outside malloc */
TA_HIDDEN void ta_prof_stack_fork_prepare(void);
TA_HIDDEN void ta_prof_stack_fork_parent(void);

/* prof_sym.c: the dynamic symbol holding pc (as glibc's dladdr1 finds it):
 * its address and size (0: none recorded, pc is its address), its name
 * copied to name[name_size] (name_size may be 0). false: pc is in no object,
 * in one without dynamic symbols, or in none of its symbols (a static
 * function). No allocation; dl_iterate_phdr's lock only. */
typedef struct ta_prof_sym_s {
  uintptr_t start, size;
} ta_prof_sym_t;
TA_HIDDEN bool ta_prof_sym(uintptr_t pc, ta_prof_sym_t *sym, char *name, size_t name_size);

/* prof_meta.c: bytes that stay until exit (zeroed, 16-aligned), and
 * mappings that come and go, all within prof_max_bytes. */
TA_HIDDEN void *ta_prof_meta_alloc(size_t size); /* NULL: over the budget */
TA_HIDDEN void *ta_prof_meta_map(size_t size);   /* page multiple; NULL: over the budget */
TA_HIDDEN void ta_prof_meta_unmap(void *p, size_t size);
TA_HIDDEN void ta_prof_meta_fork_prepare(void);
TA_HIDDEN void ta_prof_meta_fork_parent(void);
TA_HIDDEN double ta_prof_log(double x); /* natural log, x > 0 (no libm) */
TA_HIDDEN double ta_prof_exp(double x); /* e^x for x <= 0 */


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
TA_HIDDEN extern const uint8_t ta_small_class[TA_SMALL_MAX / TA_ALIGN + 1]; /* by (n + 15) / 16 */
TA_HIDDEN extern uint8_t ta_class_slices[TA_CLASSES];                 /* slab length */
TA_HIDDEN extern uint16_t ta_class_tmax[TA_TCLASSES];                 /* thread cache bound */
TA_HIDDEN void ta_size_init(void);

/* ---- segment.c: the segment map, segments, OS-page state ----------------- */
TA_HIDDEN extern _Atomic uint64_t ta_segmap[TA_SEGMAP_WORDS];
TA_HIDDEN extern size_t ta_ospage_shift; /* log2 of the OS page size */
static inline ta_segment_t *ta_segment_of(const void *p) {
  return (ta_segment_t *)((uintptr_t)p & ~(uintptr_t)TA_SEGMENT_MASK);
}
/* Is this segment-aligned address one of ours? O(1), no lock. */
static inline bool ta_segmap_contains(const ta_segment_t *s) {
  uintptr_t i = (uintptr_t)s >> TA_SEGMENT_SHIFT;
  if (ta_unlikely(i >= TA_SEGMAP_WORDS * 64)) return false;
  return (ta_relaxed_load(&ta_segmap[i / 64]) >> (i % 64)) & 1;
}
static inline ta_span_t *ta_span_of(ta_segment_t *s, const void *p) {
  ta_span_t *sp = &s->spans[((uintptr_t)p - (uintptr_t)s) >> TA_SLICE_SHIFT];
  return sp - sp->head_off;
}
static inline ta_segbits_t *ta_segbits(ta_segment_t *s) {
  return (ta_segbits_t *)((uint8_t *)s + TA_SEGBITS_OFFSET);
}
/* The bits of word w of a page bitmap that fall in pages [first, last]. */
static inline uint64_t ta_pages_mask(size_t w, size_t first, size_t last) {
  uint64_t m = ~(uint64_t)0;
  if (w == first / 64) m &= ~(uint64_t)0 << (first % 64);
  if (w == last / 64) m &= ~(uint64_t)0 >> (63 - last % 64);
  return m;
}
/* Is any of the segment's OS pages [first, last] purged? A word at a time. */
static inline bool ta_pages_any_purged(ta_segbits_t *bits, size_t first, size_t last) {
  for (size_t w = first / 64; w <= last / 64; w++)
    if (ta_relaxed_load(&bits->purged[w]) & ta_pages_mask(w, first, last)) return true;
  return false;
}
static inline size_t ta_span_index(const ta_span_t *sp) {
  return (size_t)(sp - ta_segment_of(sp)->spans);
}
/* floor(2^64 / d) + 1, so that off * magic (mod 2^64) < magic <=> off % d == 0
 * for every 32-bit off (Lemire's divisibility test), and the product at a
 * multiple k * d is k * e with e = magic * d - 2^64 >= 1 (for d a power of
 * two too): what ta_span_t.fast_free_below relies on. */
static inline uint64_t ta_div_magic(uint64_t d) {
  return UINT64_MAX / d + 1 + ((d & (d - 1)) == 0);
}
/* (p - start) % bsize == 0, by one multiplication. */
static inline bool ta_is_block_start(const ta_span_t *sp, const void *p) {
  uint64_t off = (uint32_t)((const uint8_t *)p - sp->start);
  return off * sp->div_magic < sp->div_magic;
}
/* Sets or clears the bit of p's 4 MiB of address space in a map of
 * TA_SEGMAP_WORDS words (the segment map; huge.c's map of far blocks). */
TA_HIDDEN void ta_addrmap_set(_Atomic uint64_t *map, const void *p, bool on);
TA_HIDDEN void ta_segmap_set(const ta_segment_t *s, bool on);
TA_HIDDEN ta_segment_t *ta_segment_new(ta_arena_t *a);            /* a->lock held */
/* An empty segment out of every structure and count (a->lock held); the
 * caller unmaps it (map_size bytes) after the lock. */
TA_HIDDEN size_t ta_segment_bits_pages(ta_segment_t *s, uint8_t **first); /* of its free bitmap */
TA_HIDDEN void ta_segment_unlink(ta_arena_t *a, ta_segment_t *s);
/* Slices [idx, idx + n) go into use: read-write (ta_segbits_t.rw_slices).
 * false: the OS refused (too many mappings); a->lock held. */
TA_HIDDEN bool ta_segment_commit(ta_segment_t *s, size_t idx, size_t n);
TA_HIDDEN uint64_t ta_segments_live(void);
TA_HIDDEN size_t ta_segment_header_bytes(void);
/* OS pages [first, first + n) of s go into use / out of use (the lock of the
 * span's owner held): the span's dirty count changes at once, the arena's
 * counters through a delta applied once per batch. */
typedef struct ta_pagedelta_s {
  int64_t dirty, resident; /* pages */
  size_t refault;          /* bytes purged and touched before, taken back */
} ta_pagedelta_t;
TA_HIDDEN void ta_pages_live(ta_segment_t *s, size_t first, size_t n, uint16_t *dirty, ta_pagedelta_t *d);
TA_HIDDEN void ta_pages_dead(ta_segment_t *s, size_t first, size_t n, uint16_t *dirty, ta_pagedelta_t *d);
TA_HIDDEN void ta_pagedelta_apply(ta_arena_t *a, ta_pagedelta_t *d);
/* Faults in, in one call per run, the pages among [first, first + n) that are
 * not resident and hold no live block: they become resident and dirty (free),
 * as if written, so the blocks about to be handed out there take no page
 * fault each. Pages the kernel would not populate stay as they were. Returns
 * the pages populated. */
TA_HIDDEN size_t ta_pages_populate(ta_segment_t *s, size_t first, size_t n, uint16_t *dirty, ta_pagedelta_t *d);
/* Runs of pages among [first, first + n) that were resident when purged
 * (taking them back is a refault): at most `max`, into runs; their count. */
typedef struct ta_pagerun_s {
  uint32_t first, n;
} ta_pagerun_t;
TA_HIDDEN size_t ta_pages_refaults(ta_segment_t *s, size_t first, size_t n, ta_pagerun_t *runs, size_t max);
TA_HIDDEN void ta_pages_populate_runs(ta_segment_t *s, const ta_pagerun_t *runs, size_t count);
/* Returning the dirty OS pages among [first, first + n) to the OS, in three
 * steps so that the madvise calls need no lock: plan, their runs, at most
 * max (the owner's lock held; the caller then keeps the pages out of use
 * until end); runs, the madvise calls (no lock; a run that failed gets
 * n = 0); end, the runs marked purged and counted (the owner's lock again;
 * bytes released). Under mlock (MADV_DONTNEED fails with EINVAL) nothing can
 * be purged: after a failure, purges are skipped for TA_LOCKED_RETRY_MS,
 * then tried again. */
#define TA_LOCKED_RETRY_MS 10000
TA_HIDDEN bool ta_purge_blocked(void);
TA_HIDDEN size_t ta_pages_purge_plan(ta_segment_t *s, size_t first, size_t n, ta_pagerun_t *runs, size_t max);
TA_HIDDEN void ta_pages_purge_runs(ta_segment_t *s, ta_pagerun_t *runs, size_t count);
TA_HIDDEN size_t ta_pages_purge_end(ta_arena_t *a, ta_segment_t *s, const ta_pagerun_t *runs, size_t count,
                                    uint16_t *dirty);
TA_HIDDEN void ta_active_add(int64_t delta); /* spans and huge blocks in use */
TA_HIDDEN uint64_t ta_active_peak(void);
TA_HIDDEN extern _Atomic uint64_t ta_meta_bytes; /* mappings of the allocator's own */
TA_HIDDEN size_t ta_pages_purge_plan_whole(ta_segment_t *s, size_t first, size_t n, bool split, ta_pagerun_t *runs,
                                          size_t max);
TA_HIDDEN size_t ta_pages_unpurged(ta_segment_t *s, size_t first, size_t n);
/* OS pages resident in huge pages of huge-page segments beyond those counted
 * (segment.c): stats' resident adds them. */
TA_HIDDEN int64_t ta_thp_hidden_pages(void);
TA_HIDDEN bool ta_segment_is_valid(ta_segment_t *s);
static inline size_t ta_span_first_page(const ta_span_t *sp) {
  return ta_span_index(sp) << (TA_SLICE_SHIFT - ta_ospage_shift);
}
static inline size_t ta_span_pages(const ta_span_t *sp) {
  return (size_t)sp->slices << (TA_SLICE_SHIFT - ta_ospage_shift);
}

/* ---- span.c: an arena's page heap (free spans) and large blocks ---------- */
TA_HIDDEN ta_span_t *ta_span_alloc(ta_arena_t *a, size_t slices, ta_span_kind_t kind); /* a->lock */
TA_HIDDEN ta_span_t *ta_span_free(ta_arena_t *a, ta_span_t *sp); /* a->lock; the free span it is now part of */
/* A chunk of the page heap's purge: free spans not taken yet in this pass
 * (all: every one, else those idle for delay; in a huge-page segment only
 * whole huge pages unless `split`); more: some were left for the next
 * chunk. Then the empty segments' unmapping. Both with the caller's
 * purge_lock held (arena.c), not the arena lock: they take it themselves
 * and make their madvise and munmap calls without it. Bytes released. */
TA_HIDDEN size_t ta_spans_purge_chunk(ta_arena_t *a, uint64_t now, uint64_t delay, bool all, bool split,
                                      uint32_t pass, bool *more);
TA_HIDDEN size_t ta_segments_unmap(ta_arena_t *a, uint64_t now, bool all);
TA_HIDDEN void *ta_large_alloc(ta_arena_t *a, size_t size);
/* The hardened build's large blocks from malloc: an inaccessible OS page
 * right after the block and another before its first page; freed, the span
 * stays inaccessible until it is taken again. NULL: as ta_large_alloc. */
TA_HIDDEN void *ta_large_alloc_guarded(ta_arena_t *a, size_t size);
static inline uint8_t *ta_large_block(const ta_span_t *sp) {
  return sp->start + sp->block_off;
}
/* The default build's large blocks from malloc: the block ends with its
 * span, a canary in the 32 bytes before it, checked at free. NULL: as
 * ta_large_alloc. */
TA_HIDDEN void *ta_large_alloc_front(ta_arena_t *a, size_t size);
static inline size_t ta_large_usable(const ta_span_t *sp) {
#ifdef TA_HARDENED
  return sp->block_off ? sp->bsize - sp->block_off - ((size_t)1 << ta_ospage_shift) : sp->bsize;
#else
  return sp->bsize - sp->block_off;
#endif
}
TA_HIDDEN void ta_large_free(ta_span_t *sp, void *p);
TA_HIDDEN bool ta_large_grow(ta_span_t *sp, size_t n); /* in place into the free span after it */

/* ---- slab.c: blocks of one class in a span, the free bitmap -------------- */
TA_HIDDEN extern uintptr_t ta_cookie; /* in the second word of a block in a thread cache */
/* The first word links, masked with a random secret (as glibc's safe-linking
 * masks with the link's address): a stray write or a leaked heap address
 * gives no usable pointer. The secret's low 4 bits are zero, so a link
 * overwritten with anything not 16-byte aligned is reported as corruption at
 * the pop. One XOR each way: the fast paths' budget. */
TA_HIDDEN extern uintptr_t ta_link_secret; /* low 4 bits zero */
#ifdef TA_UNCHECKED
#define TA_LINK_MASK 0
#else
#define TA_LINK_MASK ta_link_secret
#endif
/* With the mask passed in: loops that store into blocks keep it in a
 * register (the stores could alias ta_link_secret, so it would be reloaded). */
static inline ta_block_t *ta_link_get_m(const ta_block_t *b, uintptr_t mask) {
  return (ta_block_t *)((uintptr_t)b->next ^ mask);
}
static inline void ta_link_set_m(ta_block_t *b, const ta_block_t *n, uintptr_t mask) {
  b->next = (ta_block_t *)((uintptr_t)n ^ mask);
}
static inline ta_block_t *ta_link_get(const ta_block_t *b) {
  return ta_link_get_m(b, TA_LINK_MASK);
}
static inline void ta_link_set(ta_block_t *b, const ta_block_t *n) {
  ta_link_set_m(b, n, TA_LINK_MASK);
}
TA_HIDDEN void ta_slab_init(ta_span_t *sp, size_t cls, ta_pagedelta_t *d); /* bin lock */
TA_HIDDEN size_t ta_slab_take(ta_span_t *sp, ta_block_t **out, size_t want, ta_pagedelta_t *d); /* bin lock */
/* Writes a word of the free bitmap on each OS page that holds the bits of
 * the blocks starting at segment offsets [lo, hi] (as ta_slab_take carves
 * them; test_pages). */
TA_HIDDEN void ta_slab_touch_bitmap(ta_segment_t *s, size_t lo, size_t hi);
typedef enum { TA_PUT_OK, TA_PUT_NOT_BLOCK, TA_PUT_NEVER, TA_PUT_FREE } ta_put_t;
TA_HIDDEN ta_put_t ta_slab_put(ta_span_t *sp, void *p, ta_pagedelta_t *d); /* bin lock */
TA_HIDDEN ta_put_t ta_slab_put_run(ta_span_t *sp, ta_block_t **bp, size_t *n, ta_pagedelta_t *d); /* bin lock */
TA_HIDDEN void ta_slab_clear(ta_span_t *sp, ta_pagedelta_t *d); /* bin lock; empty slab, before it is freed */
/* A slab's purge without the bin lock across its madvise calls (arena.c):
 * begin (bin lock; the caller took the slab off its bucket list) marks it
 * purging and plans the runs; ta_pages_purge_runs, no lock; end (bin lock)
 * counts them (bytes) and clears the mark. */
TA_HIDDEN size_t ta_slab_purge_begin(ta_span_t *sp, ta_pagerun_t *runs, size_t max);
TA_HIDDEN size_t ta_slab_purge_end(ta_span_t *sp, const ta_pagerun_t *runs, size_t count);
TA_HIDDEN bool ta_slab_is_valid(ta_span_t *sp);      /* bin lock */
TA_HIDDEN void ta_slab_prof_mark(ta_span_t *sp, void *p, int delta); /* bin lock */
/* May block p of slab sp be sampled? false: certainly not (any thread). */
static inline bool ta_slab_prof_maybe(ta_span_t *sp, const void *p) {
  if (!ta_relaxed_load(&sp->prof_sampled)) return false;
  if (ta_relaxed_load(&sp->prof_spill)) return true;
  uint32_t off = (uint32_t)((const uint8_t *)p - sp->start) + 1;
  /* unrolled by hand (the loads are atomic: the compiler kept the loop):
   * every free of the slab's other blocks comes here while it holds a
   * sample (300-640 frees a sample in bench/py_tasks.py at 512 KiB) */
  return (ta_relaxed_load(&sp->prof_offs[0]) == off) | (ta_relaxed_load(&sp->prof_offs[1]) == off) |
         (ta_relaxed_load(&sp->prof_offs[2]) == off) | (ta_relaxed_load(&sp->prof_offs[3]) == off);
}

/* ---- arena.c: arenas and their bins -------------------------------------- */
TA_HIDDEN extern ta_arena_t ta_arenas[TA_ARENAS_MAX];
TA_HIDDEN extern _Atomic uint32_t ta_arenas_used; /* arenas made ready */
TA_HIDDEN ta_arena_t *ta_arena_pick(void);        /* the arena of the calling CPU */
/* Set when the calling thread has just moved to another arena (arena.c,
 * refill_lock); its cache's next slow path flushes the cache and clears it
 * (tcache.c, maintain). */
TA_HIDDEN extern __thread uint8_t ta_tls_arena_moved __attribute__((tls_model("initial-exec")));
/* Fills `out` with up to `want` blocks of class cls, linked through next,
 * cookies set; returns how many (0: out of memory). */
TA_HIDDEN size_t ta_arena_refill(ta_arena_t *a, size_t cls, ta_block_t **first, size_t want);
/* Returns a list of `count` blocks of one class: as one batch to a transfer
 * cache when `batch` and there is room, else each to its own slab. */
TA_HIDDEN void ta_arena_flush(ta_block_t *first, size_t count, size_t cls, bool batch);
TA_HIDDEN void *ta_arena_alloc1(size_t cls);      /* one block, no thread cache */
TA_HIDDEN void ta_arena_free1(ta_span_t *sp, void *p); /* one block, no thread cache */
TA_HIDDEN void ta_arena_prof_mark(ta_span_t *sp, void *p, int delta); /* takes the bin lock */
/* Purges what has been free for the arena's delay; everything free with
 * `all` (trim), or when the arena has been idle since `idle_since` (0: not
 * known) for its delay, at most TA_IDLE_MS. Bytes released. */
#define TA_IDLE_MS 500
TA_HIDDEN size_t ta_arena_purge(ta_arena_t *a, uint64_t now, bool all, uint64_t idle_since);
/* The same rule for the arena's transfer caches, into the slabs (of any
 * arena): called for every arena before any ta_arena_purge. */
TA_HIDDEN void ta_arena_drain(ta_arena_t *a, uint64_t now, bool all, uint64_t idle_since);
TA_HIDDEN void ta_arenas_fork_prepare(void);
TA_HIDDEN void ta_arenas_fork_parent(void);
TA_HIDDEN void ta_arenas_fork_child(void);
TA_HIDDEN bool ta_arena_is_valid(ta_arena_t *a);
TA_HIDDEN int64_t ta_arenas_xfer_bytes(void);

/* ---- tcache.c: thread caches --------------------------------------------- */
TA_HIDDEN extern __thread ta_tcache_t *ta_tls_tcache __attribute__((tls_model("initial-exec")));
/* The bin lock this thread holds while it takes its arena's lock for a span
 * (arena.c: a new slab, an emptied one going back). A heap-corruption report
 * made under both (span.c's mark check) releases both first, so that a
 * SIGABRT handler that allocates from that class does not hang on it. */
TA_HIDDEN extern __thread ta_binlock_t *ta_bin_lock_held __attribute__((tls_model("initial-exec")));
TA_HIDDEN extern _Atomic uint32_t ta_flush_epoch;
TA_HIDDEN extern _Atomic uint32_t ta_tcaches_live; /* threads with a cache (the purger has none) */
/* Pushes free block b onto a bin that holds count blocks: the link masked,
 * the cookie in its second word (the double-free check's mark). free's fast
 * path and the cache's slow paths push the same way. */
static inline __attribute__((always_inline)) void ta_tbin_push(ta_tbin_t *tb, ta_block_t *b, uint16_t count,
                                                               uintptr_t cookie) {
  ta_link_set(b, tb->head);
  b->key = cookie;
  tb->head = b;
  ta_relaxed_store(&tb->count, (uint16_t)(count + 1));
}
/* Unlinks b, the head of a bin (not NULL): its link unmasked and, when
 * `checked`, checked with the cookie (a write after free or a double free
 * shows here: the cookie is the free mark, the link 16-byte aligned), the
 * cookie cleared (a live block has 0 there). malloc's fast path and
 * ta_tcache_refill pop the same way; only the unchecked build's fast path
 * passes false (ta_checked). */
TA_HIDDEN __attribute__((noreturn, cold)) void ta_heap_corrupt(ta_block_t *b); /* alloc.c */
static inline __attribute__((always_inline)) void *ta_tbin_pop(ta_tbin_t *tb, ta_block_t *b, bool checked) {
  ta_block_t *next = ta_link_get(b);
  if (ta_unlikely(checked && (b->key != ta_cookie || ((uintptr_t)next & (TA_ALIGN - 1))))) ta_heap_corrupt(b);
  tb->head = next;
  b->key = 0;
  return b;
}
/* The count's half of a pop (ta_tbin_pop is the list's half): count down by
 * one, and with the profiler, the class's sampling skip too. True when the
 * skip was 0: this allocation is the profiler's (a sample or a look), the
 * skip has wrapped and the count is already down. On x86-64 both take one
 * subtraction, whose borrow out of the skip is the answer: count >= 1 (the
 * bin is not empty), so the count's half never borrows. Budget: 2
 * instructions with the profiler (sub, jc), 1 without. */
/* One allocation counted against the bin's sampling skip in C: true when the
 * skip was 0 (this allocation is the profiler's; the skip wraps). */
static inline bool ta_tbin_skip_done(ta_tbin_t *tb) {
  return tb->sample_skip-- == 0;
}
static inline __attribute__((always_inline)) bool ta_tbin_count_pop(ta_tbin_t *tb) {
#if defined(__x86_64__) && !defined(__SANITIZE_THREAD__)
#ifdef TA_NO_PROF
  __asm__("subw $1, %0" : "+m"(tb->count_skip));
  return false;
#else
  bool due;
  __asm__("subl $0x10001, %0" : "+m"(tb->count_skip), "=@ccc"(due));
  return due;
#endif
#else
  ta_relaxed_store(&tb->count, (uint16_t)(ta_relaxed_load(&tb->count) - 1));
#ifdef TA_NO_PROF
  return false;
#else
  return ta_tbin_skip_done(tb);
#endif
#endif
}
static inline void ta_prof_refill_count(size_t cls, void *b) {
  ta_tcache_t *tc = ta_tls_tcache;
  if (ta_likely(tc->state == TA_TC_LIVE) && ta_likely(tc->prof_epoch == ta_relaxed_load(&ta_prof_epoch)) &&
      ta_likely(!ta_tbin_skip_done(&tc->bins[cls])))
    return;
  ta_prof_refill_event(cls, b); /* the skip was 0 (now wrapped), or a new epoch (not counted yet), or no cache */
}
TA_HIDDEN void *ta_tcache_refill(ta_tcache_t *tc, size_t cls); /* empty bin: refill and pop */
TA_HIDDEN void ta_tcache_overflow(ta_tcache_t *tc, size_t cls, void *p); /* bin or bound full */
TA_HIDDEN void ta_tcache_flush_all(ta_tcache_t *tc);
TA_HIDDEN void ta_tcache_ask_flush(void); /* every thread flushes at its next slow path */
TA_HIDDEN void ta_tcache_init(void);
TA_HIDDEN void ta_tcache_thread_done(void *tc);
TA_HIDDEN void ta_tcaches_reap(void); /* flushes the caches of threads gone without (at most once a second) */
TA_HIDDEN void ta_tcaches_stats(uint64_t *held, uint64_t *count); /* bytes cached, caches */
TA_HIDDEN void ta_tcaches_fork_prepare(void);
TA_HIDDEN void ta_tcaches_fork_parent(void);
TA_HIDDEN void ta_tcaches_fork_child(void);
TA_HIDDEN bool ta_tcache_is_valid(ta_tcache_t *tc);

/* ---- purge.c: purging the arenas, the background purger ------------------- */
TA_HIDDEN size_t ta_purge_trim(bool all, uint64_t t0_ns); /* bytes; counts the trim */
TA_HIDDEN void ta_purge_kick(void);         /* something is left to purge (slow paths only) */
TA_HIDDEN void ta_purge_on_activity(void);  /* the allocator's own purge when no purger runs */
TA_HIDDEN int ta_purger_running(void);
TA_HIDDEN void ta_purger_stop(void); /* background is 0: the purger has stopped on return */
TA_HIDDEN void ta_purge_fork_prepare(void);
TA_HIDDEN void ta_purge_fork_parent(void);
TA_HIDDEN void ta_purge_fork_child(void);
TA_HIDDEN extern _Atomic uint64_t ta_trims, ta_trimmed_bytes, ta_trim_ns;

/* ---- delay.c: purge hysteresis (a leaf) ----------------------------------- */
TA_HIDDEN uint64_t ta_delay_get(ta_delay_t *d, uint64_t now_ms, bool arena); /* the owner's lock; arena: the arenas' cap (delay.c) */
TA_HIDDEN void ta_delay_released(ta_delay_t *d, uint64_t now_ms);   /* the owner's lock */
TA_HIDDEN void ta_delay_refault(ta_delay_t *d, uint64_t now_ms);    /* any thread; now 0: the clock */

/* ---- huge.c: blocks with their own mapping ------------------------------- */
TA_HIDDEN void *ta_huge_alloc(size_t size, size_t align, bool zero);
TA_HIDDEN size_t ta_huge_cache_expire(uint64_t now_ms, bool all);
TA_HIDDEN void ta_huge_fork_prepare(void);
TA_HIDDEN void ta_huge_fork_parent(void);
TA_HIDDEN void ta_huge_fork_child(void);
TA_HIDDEN void ta_huge_free(ta_segment_t *s);
TA_HIDDEN void *ta_huge_alloc_far(size_t size, size_t align, bool zero); /* align > TA_MAX_ALIGN */
TA_HIDDEN ta_segment_t *ta_huge_far_of(const void *p); /* the header of such a block, or NULL */
TA_HIDDEN void *ta_huge_realloc(ta_segment_t *s, size_t size);
TA_HIDDEN extern _Atomic uint64_t ta_huge_bytes, ta_huge_mapped, ta_huge_count, ta_huge_total, ta_huge_cached;

/* ---- zero.c: blocks of size 0, in memory no access reaches (hardened) ----- */
#ifdef TA_HARDENED
TA_HIDDEN void *ta_zero_alloc(void); /* NULL: none left (or no mapping): take a 16-byte block */
TA_HIDDEN void ta_zero_free(ta_segment_t *s, void *p); /* reports a double free or a bad pointer */
TA_HIDDEN size_t ta_zero_usable(ta_segment_t *s, const void *p, const char *what); /* 0 */
#endif

/* ---- alloc.c: the entry points -------------------------------------------- */
TA_HIDDEN void *ta_malloc_class(size_t cls);
TA_HIDDEN size_t ta_usable_size(const void *p, const char *what);

/* ---- options.c ----------------------------------------------------------- */
typedef enum {
  TA_OPT_PURGE_DELAY_MS,
  TA_OPT_UNMAP_DELAY_MS,
  TA_OPT_ARENAS,
  TA_OPT_TCACHE_BYTES,
  TA_OPT_TCACHE_TOTAL,
  TA_OPT_BACKGROUND,
  TA_OPT_THP,
  TA_OPT_SHOW_STATS,
  TA_OPT_VERBOSE,
  TA_OPT_PROF,
  TA_OPT_PROF_INTERVAL,
  TA_OPT_PROF_MAX_BYTES,
  TA_OPT_PROF_GROWTH,
  TA_OPT_PROF_AT_EXIT,
  TA_OPT_PROF_KEEP,
  TA_OPT_PROF_UNWIND,
  TA_OPT_COUNT
} ta_opt_t;
TA_HIDDEN extern _Atomic long long ta_options[TA_OPT_COUNT];
static inline long long ta_opt(ta_opt_t o) { return ta_relaxed_load(&ta_options[o]); }
TA_HIDDEN void ta_options_init(void);
#define TA_PROF_INTERVAL_MAX ((long long)1 << 30)
#define TA_PROF_UNWIND_LIBGCC 1 /* prof_unwind: 0 = the default for the libc (libgcc on glibc, frame pointers on musl) */
#define TA_PROF_UNWIND_FP 2
#define TA_PROF_UNWIND_LIBGCC_ONLY 3 /* libgcc's _Unwind_Backtrace without prof_cfa.c's cached rules */
TA_HIDDEN size_t ta_options_format(char *buf, size_t size);
TA_HIDDEN int ta_option_set(const char *name, long long value); /* 0, EINVAL or ERANGE */

/* ---- init.c: process start, fork ------------------------------------------ */
TA_HIDDEN void ta_process_init(void);
TA_HIDDEN extern _Atomic int ta_initialized;

/* ---- error.c: messages without allocating (a leaf) ------------------------ */
TA_HIDDEN __attribute__((noreturn, cold)) void ta_error(const char *what, const void *p);
TA_HIDDEN void ta_say(const char *a, const char *b, const char *c, const char *d, const char *e); /* one line */
TA_HIDDEN size_t ta_fmt_u64(char *buf, uint64_t v); /* decimal, no allocation */

/* core/pprof.c (branch prof-read): profile.proto writer. Memory from ta_prim mappings,
 * never malloc. Sample types fixed: alloc_objects/count, alloc_space/bytes,
 * inuse_objects/count, inuse_space/bytes; period_type space/bytes. */
typedef struct ta_pprof_s ta_pprof_t;
ta_pprof_t *ta_pprof_begin(uint64_t period, int64_t time_nanos); /* NULL: out of memory */
uint64_t ta_pprof_mapping(ta_pprof_t *p, uint64_t start, uint64_t limit, uint64_t offset,
                          const char *file);                         /* id, interned by start */
uint64_t ta_pprof_function(ta_pprof_t *p, const char *name, const char *file); /* id, interned */
uint64_t ta_pprof_interp_function(ta_pprof_t *p, const char *name, const char *file); /* no system_name */
uint64_t ta_pprof_location(ta_pprof_t *p, uint64_t address, uint64_t mapping_id,
                           uint64_t function_id, int64_t line);     /* id, interned */
void ta_pprof_sample(ta_pprof_t *p, const uint64_t *loc_ids, size_t n, const int64_t values[4],
                     const char *tag);                              /* values in sample-type order */
void ta_pprof_comment(ta_pprof_t *p, const char *text);
int ta_pprof_finish(ta_pprof_t *p, int fd); /* encodes, gzips, writes, frees; 0 or an errno value */
void ta_pprof_abort(ta_pprof_t *p);         /* frees without writing */

/* ---- lock helpers -------------------------------------------------------- */
/* Arena and bin locks (ta_binlock_t) are held for O(1) work or one batch.
 * Uncontended: one compare-and-swap to take, one exchange to release, no
 * call (pthread's mutex calls were 4% of bench/large_mix.c's instructions
 * and 0.8% of a Rails worker's CPU). Contended: spin a moment, as glibc's
 * adaptive mutex did (two threads on two CPUs taking turns), then sleep on
 * the word's futex (lock.c). The others are pthread mutexes; ta_lock and
 * ta_unlock take either. */
TA_HIDDEN void ta_binlock_wait(ta_binlock_t *l);
TA_HIDDEN void ta_binlock_wake(ta_binlock_t *l);
static inline void ta_binlock_init(ta_binlock_t *l) {
  atomic_init(&l->state, 0);
}
static inline void ta_binlock_lock(ta_binlock_t *l) {
  uint32_t free = 0;
  if (ta_likely(atomic_compare_exchange_strong_explicit(&l->state, &free, 1, memory_order_acquire,
                                                        memory_order_relaxed)))
    return;
  ta_binlock_wait(l);
}
static inline void ta_binlock_unlock(ta_binlock_t *l) {
  if (ta_unlikely(atomic_exchange_explicit(&l->state, 0, memory_order_release) == 2)) ta_binlock_wake(l);
}
static inline void ta_mutex_lock(ta_lock_t *l) { pthread_mutex_lock(l); }
static inline void ta_mutex_unlock(ta_lock_t *l) { pthread_mutex_unlock(l); }
#define ta_lock(l) _Generic((l), ta_binlock_t *: ta_binlock_lock, ta_lock_t *: ta_mutex_lock)(l)
#define ta_unlock(l) _Generic((l), ta_binlock_t *: ta_binlock_unlock, ta_lock_t *: ta_mutex_unlock)(l)

#endif
