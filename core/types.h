/* trimalloc: every struct of the core, with its invariants.
 *
 * Ownership (v2): memory belongs to a few shared arenas, never to a thread.
 * A thread keeps only a bounded cache of free blocks (ta_tcache_t); every
 * other free byte is reachable, under a lock, by any thread, by trim and by
 * the background purger.
 *
 * Address space comes from the OS in segments of TA_SEGMENT_SIZE bytes,
 * aligned to their size, so a block's segment is `p & ~TA_SEGMENT_MASK`.
 * A segment is cut into TA_SLICES slices of TA_SLICE_SIZE bytes; slice 0 holds
 * the segment header (descriptors and the segment's bitmaps). A run of slices
 * is a span:
 *  - a slab holds blocks of one size class (classes up to TA_MEDIUM_MAX),
 *  - a large span holds one block (up to TA_LARGE_MAX),
 *  - a free span waits in its arena's page heap,
 * and a huge block (beyond TA_LARGE_MAX) gets a segment-aligned mapping of its
 * own whose header looks like a segment's. */
#ifndef TA_TYPES_H
#define TA_TYPES_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define TA_SEGMENT_SHIFT 22 /* 4 MiB */
#define TA_SEGMENT_SIZE ((size_t)1 << TA_SEGMENT_SHIFT)
#define TA_SEGMENT_MASK (TA_SEGMENT_SIZE - 1)
#define TA_SLICE_SHIFT 16 /* 64 KiB: the largest OS page size Linux uses */
#define TA_SLICE_SIZE ((size_t)1 << TA_SLICE_SHIFT)
#define TA_SLICES (TA_SEGMENT_SIZE / TA_SLICE_SIZE) /* 64; slice 0 is the header */

#define TA_ALIGN 16 /* every block is 16-byte aligned; the free bitmap has a bit per 16 bytes */
#define TA_GRANULE_SHIFT 4
#define TA_FREE_WORDS (TA_SEGMENT_SIZE >> TA_GRANULE_SHIFT >> 6) /* 4096 */
#define TA_OSPAGE_MIN_SHIFT 12                                    /* 4 KiB */
#define TA_OSPAGES_MAX (TA_SEGMENT_SIZE >> TA_OSPAGE_MIN_SHIFT)  /* 1024 */

#define TA_SMALL_MAX 1024          /* sizes whose class is one table load */
#define TA_MEDIUM_MAX (128 * 1024) /* largest size class */
#define TA_CLASSES 88              /* 16..128 by 16, then 8 classes per doubling */
#define TA_TCACHE_MAX TA_MEDIUM_MAX /* largest size a thread cache holds: every class */
#define TA_TCLASSES TA_CLASSES
#define TA_TBIN_BYTES (64 * 1024)   /* a thread cache bin grows to about this much at most (4..128 blocks) */
#define TA_ZERO_CLASS TA_TCLASSES /* hardened malloc(0): a thread-cache bin that stays empty (zero.c) */
#define TA_NO_CLASS 0xff           /* span->cls of anything the free fast path must not take */
#define TA_LARGE_MAX (TA_SEGMENT_SIZE / 2) /* beyond: huge, own mapping */
#define TA_MAX_ALIGN (TA_SEGMENT_SIZE / 2) /* larger alignments: ENOMEM */
#define TA_ADDR_BITS 48                    /* segments live below 2^48 */
#define TA_SEGMAP_WORDS (((size_t)1 << (TA_ADDR_BITS - TA_SEGMENT_SHIFT)) / 64)
#define TA_ARENAS_MAX 64
#define TA_FULLNESS 8    /* fullness buckets of a bin's partial slabs */
#define TA_BUCKET_NONE 0xff /* a slab on no bucket list: full */

typedef struct ta_arena_s ta_arena_t;
typedef pthread_mutex_t ta_lock_t;
/* The arenas' and bins' locks (internal.h, ta_lock): a word, taken with one
 * compare-and-swap and released with one exchange inline; a waiter spins a
 * moment, then sleeps on a futex (0 free, 1 held, 2 held and maybe waited
 * for). The other locks, rarer, some with condition variables, are
 * pthread's. */
typedef struct {
  _Atomic uint32_t state;
} ta_binlock_t;

/* Purge hysteresis (purge.c): memory that stays idle `delay_ms` is returned;
 * taking returned memory back soon after doubles the delay (an arena's up to
 * 100x the option, at most 10 s; the huge-mapping cache's up to 10x, at most
 * 1 s: delay.c), a calm period halves it again. */
typedef struct ta_delay_s {
  uint64_t delay_ms;    /* current delay (under the owner's lock) */
  uint64_t released_ms; /* last release of memory (under the owner's lock) */
  uint64_t grown_ms;    /* last change of delay_ms (under the owner's lock) */
  _Atomic uint64_t refault_ms; /* last time purged memory was taken back (any thread) */
} ta_delay_t;

/* A free block in a thread cache: the first word links, the second holds the
 * cookie (a block popped twice, i.e. freed twice, or written after free, is
 * caught at the pop; malloc clears it). Blocks in the arenas hold nothing:
 * their state is the segment's free bitmap. */
typedef struct ta_block_s {
  struct ta_block_s *next;
  uintptr_t key;
} ta_block_t;

typedef enum {
  TA_SPAN_FREE = 0, /* in its arena's page heap */
  TA_SPAN_META,     /* slice 0 of a segment */
  TA_SPAN_SLAB,     /* blocks of one size class */
  TA_SPAN_LARGE,    /* one block */
  TA_SPAN_HUGE,     /* descriptor of a huge mapping */
  TA_SPAN_ZERO      /* the blocks of size 0 (zero.c): no access */
} ta_span_kind_t;

/* One slice descriptor. Only the head of a span carries data; the others have
 * head_off = their distance to the head.
 *
 * Slab (kind == SLAB, under its arena's bin[cls] lock):
 *   used = carved - |blocks whose bit is set in the free bitmap|
 *        = blocks handed out to programs or thread caches
 *   0 < used  (an empty slab goes back to the page heap at once)
 *   used == reserved  <=>  bucket == TA_BUCKET_NONE (full: on no list)
 *   otherwise on bin->buckets[bucket], bucket == min(used * bucket_mul >> 20, TA_FULLNESS - 1)
 *   (all of this but while purging: then on no list, bucket == TA_BUCKET_NONE,
 *   used may reach 0, and the purge places it when its madvise calls are done)
 *   (bucket_mul = (TA_FULLNESS << 20) / reserved: fullness without a division)
 *   carved <= reserved;  reserved * bsize <= slices * TA_SLICE_SIZE
 *   dirty = |OS pages p of the span with live[p] == 0 and not purged|
 *   (addr - start) % bsize == 0 for every block, tested with div_magic
 *   every free carved block whose first OS page is not purged holds the
 *   cookie in its second word (the free fast path's double-free test)
 *   keyless <=> a purged OS page holds the start of a carved block (which
 *   reads 0 there, so the fast path could not see a second free of it), and
 *   then fast_free_below == 0: every free of the slab's blocks takes the slow
 *   path, which tests the free bitmap. A page coming back into use gets the
 *   cookie written into its free blocks (ta_slab_take).
 * Free span (kind == FREE, under the arena lock): linked in
 *   arena->spans[slices] (but while purging: on no list, and no neighbour
 *   joins it); dirty as above; freed_ms = when it became free.
 * Large span (kind == LARGE): live[p] == 1 for each of its OS pages. */
typedef struct __attribute__((aligned(64))) ta_span_s {
  /* First cache line: what the free fast path reads (cls, start, div_magic). */
  uint8_t *start;        /* first byte of the span */
  uint64_t div_magic;    /* ta_div_magic(bsize): divisibility test */
  uint32_t bsize;        /* block size (large: span bytes) */
  uint16_t head_off;     /* slices to the head (0 for a head) */
  uint8_t kind;          /* ta_span_kind_t */
  uint8_t cls;           /* size class of a slab, else TA_NO_CLASS */
  /* The free fast path takes p iff (p - start) * div_magic < fast_free_below.
   * The product is k * e for the start of block k (e = div_magic * bsize
   * - 2^64, 1 <= e <= bsize) and at least div_magic for any other offset, so
   * one compare tests "a thread-cache class, a block start, ever handed
   * out": carved * e in a slab of a thread-cache class, else 0 (stored
   * wherever a span's kind is set, and by ta_slab_init). */
  _Atomic uint64_t fast_free_below;
  ta_arena_t *arena;     /* owner */
  uint32_t used;         /* blocks handed out */
  uint32_t reserved;     /* blocks that fit */
  uint32_t carved;       /* blocks [0, carved) have been handed out at least once */
  uint32_t bucket_mul;   /* slab: see above */
  _Atomic uint32_t carved_bytes; /* slab: carved * bsize (read without the bin lock) */
  uint16_t scan;         /* slab: no free bit in the bitmap words below this one (relative) */
  uint16_t slices;       /* span length in slices */
  uint16_t dirty;        /* OS pages free and resident */
  uint8_t bucket;        /* slab: fullness bucket, or TA_BUCKET_NONE */
  _Atomic uint8_t keyless; /* slab: a purged OS page holds a carved block's start (see above); atomic:
                            * a free of a slab holding a sampled block reads it without the lock */
  _Atomic uint8_t prof_spill; /* slab: see prof_offs */
  /* slab or free span: 1 while a purge's madvise calls run on its pages
   * without the bin or arena lock (arena.c, span.c): it is then on no list,
   * so no refill or allocation takes its pages, a free that empties the
   * slab leaves it to the purge, and no free span joins the free one. */
  uint8_t purging;
  /* slab: live blocks sampled by the heap profiler (prof_live.c). While
   * nonzero, fast_free_below == 0: every free of the slab's blocks takes the
   * slow path, which removes a sampled block from the live set. Written
   * under the bin lock. */
  _Atomic uint32_t prof_sampled; /* large/huge span: 1 while its block is sampled */
  /* slab: where its sampled blocks are (offset from start + 1; 0 empty), so
   * that the slow-path free of any other block of the slab needs no look at
   * the live set; prof_spill (above): a sample did not fit (until prof_sampled is 0
   * again, every free looks there). Written under the bin lock. */
  _Atomic uint32_t prof_offs[4];
  uint32_t purge_pass; /* slab, free span: the last purge pass that took it (arena.c) */
  struct ta_span_s *next, *prev; /* bucket list / page-heap list */
  uint64_t freed_ms;     /* slab: last block returned or taken; free span: when freed */
  /* large: the block's offset from start. 0 for an aligned block; a block
   * from malloc ends where its span does, after the 32 bytes of its front
   * canary (span.c), but in the hardened build, where it sits between two
   * guard pages and ends one OS page before the span does. */
  uint32_t block_off;
  /* free span: 1 + the offset from start of the mark a freed large block
   * left at its first bytes (ta_large_free), checked when the span is taken
   * or merged (a write after free); 0: none. */
  uint32_t freed_mark;
} ta_span_t;

_Static_assert(offsetof(ta_span_t, arena) <= 64 && sizeof(ta_span_t) == 128,
               "the free fast path's fields fit in one cache line; a descriptor is 128 bytes");

/* Segment header (slice 0), or the header of a huge mapping.
 *   segment is in the segment map  <=>  it is mapped
 *   used_slices = number of slices in SLAB/LARGE spans
 * A normal segment's header is followed (in slice 0) by its ta_segbits_t. */
typedef struct ta_segment_s {
  ta_arena_t *arena; /* owner (NULL for huge) */
  struct ta_segment_s *next, *prev;
  size_t map_size;  /* bytes mapped */
  size_t huge_off;  /* huge: offset of the block */
  size_t huge_size; /* huge: usable size */
  uint64_t empty_since_ms;
  uint32_t used_slices;
  uint16_t huge; /* 1: huge mapping */
  uint8_t thp;   /* 1: backed by transparent huge pages (routine purges keep them whole) */
  /* 1: empty and waiting unmap_delay_ms, with the OS pages that lie wholly
   * in its free bitmap (all zero while no slab is in it) returned to the OS
   * and out of the arena's resident_pages (span.c, ta_segments_unmap) */
  uint8_t bits_out;
  ta_span_t spans[TA_SLICES];
} ta_segment_t;

/* The OS-page state of a segment, one entry per OS page p (page size read at
 * run time; 4 KiB pages use all entries, 64 KiB pages the first 64):
 *   live[p]  = blocks handed out (slabs: counted per block overlapping p;
 *              large spans: 1) - so live[p] == 0 means "nothing on p is in use"
 *   purged   bit p: p was returned to the OS (or never touched) - not resident
 *   touched  bit p: p has been in use at least once (purged && touched: a refault)
 *   live[p] > 0  =>  !purged[p]
 *   dirty pages  = live[p] == 0 && !purged[p] (free and resident: what a purge returns)
 * free: bit g set <=> a free block of a slab starts at byte 16 * g of the
 *   segment (under the slab's bin lock). live is written under the lock of the
 *   span's owner (bin lock for slabs, arena lock otherwise); purged and touched
 *   words are shared between spans, so they change atomically. */
typedef struct ta_segbits_s {
  uint64_t free[TA_FREE_WORDS];
  uint16_t live[TA_OSPAGES_MAX];
  _Atomic uint64_t purged[TA_OSPAGES_MAX / 64];
  _Atomic uint64_t touched[TA_OSPAGES_MAX / 64];
  /* bit i: slice i is read-write. A segment's slices stay PROT_NONE until a
   * span first takes them (ta_segment_commit), so a stray access past the
   * part of the heap in use faults, as past glibc's heap top (all ones for
   * a THP segment). Under the arena lock. Here, not in ta_segment_t: the
   * descriptors stay at offset 64, which free's fast path computes with. */
  uint64_t rw_slices;
  /* bit h: huge page h of a huge-page segment holds a page not purged, so
   * the kernel holds all of it (segment.c, ta_thp_hidden_pages). */
  _Atomic uint64_t thp_resident;
} ta_segbits_t;

#define TA_SEGBITS_OFFSET ((sizeof(ta_segment_t) + 63) & ~(size_t)63)
_Static_assert(TA_SEGBITS_OFFSET + sizeof(ta_segbits_t) <= TA_SLICE_SIZE, "the header fits in slice 0");

/* A size class's bin in one arena (own lock). Partial slabs sit in buckets by
 * fullness; a refill takes from the fullest first, so sparse slabs drain and
 * go back whole.
 *   bit b of bucket_mask  <=>  buckets[b] != NULL
 *   dirty = sum of dirty over its slabs
 *   used_bytes = sum of used * bsize over its slabs */
typedef struct ta_xfer_s {
  ta_block_t *head; /* a thread cache's list, as it was flushed (links masked, cookies set) */
  uint32_t count;
} ta_xfer_t;

#define TA_XFER_INLINE 4 /* batches a bin holds before its stack moves to a mapping of its own */
#define TA_XFER_BYTES ((size_t)256 << 10) /* bytes a bin's transfer cache holds at most */
#define TA_XFER_ARENA_BYTES ((size_t)4 << 20) /* and all of an arena's bins together (v2's 4 slots
   a bin kept medium classes to a few blocks; 256 KiB in each of 88 bins held 20 MiB more in
   realloc growth, bench/realloc_grow.c) */

typedef struct __attribute__((aligned(64))) ta_bin_s {
  ta_binlock_t lock;
  ta_span_t *buckets[TA_FULLNESS];
  uint32_t bucket_mask;
  /* Transfer cache (as TCMalloc's): whole batches flushed by one thread cache
   * and refilled by another, without touching the slabs, each in O(1) under
   * the lock. Its blocks count as handed out (used) in their slabs. It is a
   * stack with no bound on its length (v3): a burst of frees goes here a
   * batch at a time and is reused a batch at a time; what nobody takes or
   * puts for the arena's delay goes back to the slabs (the purger, a trim).
   *   xfer points to xfer_inline or to a mapping of xcap entries (metadata)
   *   nxfer <= xcap;  xfer_count = sum of xfer[0..nxfer).count */
  ta_xfer_t *xfer;
  uint32_t nxfer, xcap;
  ta_xfer_t xfer_inline[TA_XFER_INLINE];
  _Atomic uint32_t xfer_count; /* written under lock, read by stats */
  uint64_t xfer_ms;            /* last batch put in or taken out */
  _Atomic uint32_t dirty;       /* written under lock, read by trim without it */
  _Atomic uint64_t used_bytes;  /* stats */
  _Atomic uint64_t allocs;      /* blocks handed out by this bin, ever */
} ta_bin_t;

/* An arena: bins (own locks) and a page heap of free spans (the arena lock).
 * Lock order: a bin's lock, then the arena lock.
 *   bit n of span_mask  <=>  spans[n] != NULL
 *   dirty_pages = dirty OS pages of its slabs and free spans
 *   resident_pages = OS pages of its segments not purged (headers included) */
struct ta_arena_s {
  ta_binlock_t lock;
  ta_span_t *spans[TA_SLICES];
  uint64_t span_mask;
  ta_segment_t *segments;
  ta_delay_t delay;     /* under lock */
  _Atomic int64_t dirty_pages, resident_pages;
  _Atomic int64_t xfer_bytes; /* in the bins' transfer caches */
  _Atomic int64_t empty_segments; /* segments with no span in use (written under lock) */
  _Atomic uint64_t large_bytes, large_count, large_allocs;
  _Atomic uint64_t purges, purged_bytes;
  _Atomic uint64_t activity; /* refills, flushes and large blocks, ever: the purger's idle test */
  const void *_Atomic last_refill; /* the thread cache that refilled last (arena.c's refill_lock) */
  _Atomic int ready;
  uint32_t index;
  ta_bin_t bins[TA_CLASSES];
};

/* A thread cache bin: a LIFO of free blocks of one class.
 *   count = |list| <= max <= ta_class_tmax[class]
 * max is the bin's length now: it starts at 0 and grows with use (slow start,
 * as gperftools' thread caches), within the cache's byte budget. count is
 * written by the owner alone, with relaxed stores (stats read it). */
typedef struct ta_tbin_s {
  ta_block_t *head;
  union {
    struct {
      _Atomic uint16_t count;
      /* Heap profiler (prof.c): allocations of this class to let pass
       * before the next sampled one (a geometric draw less one), or before
       * the next look at the profiler's state when bit cls of
       * ta_tcache_t.prof_clamped is set (sampling off, or a draw longer
       * than TA_PROF_CLAMP). The owner alone writes it. */
      uint16_t sample_skip;
    };
    /* both, little-endian: malloc's fast path takes one from each in one
     * subtraction, whose borrow says the skip was 0 (ta_tbin_count_pop) */
    uint32_t count_skip;
  };
  uint16_t max;
  uint16_t unused;
} ta_tbin_t;
_Static_assert(sizeof(ta_tbin_t) == 16, "a thread cache bin stays 16 bytes: four to a cache line");

typedef enum { TA_TC_EMPTY = 0, TA_TC_LIVE, TA_TC_DONE } ta_tc_state_t;

/* A thread's cache. The owner alone writes it. A thread starts on the static
 * empty cache (max 0 everywhere: the first call takes the slow path, which
 * gives it one), and ends on the static done cache (after its exit flush:
 * straight to the arenas).
 *   budget = sum over bins of max * bsize <= limit
 * so the bytes it holds, sum of count * bsize, never exceed limit (its share
 * of option tcache_total, at least tcache_bytes: tcache.c thread_limit) and the fast paths need only count < max and count > 0: no
 * byte counter. A bin that wants to grow past the budget takes it from the
 * others (halving their max, flushing what is over). */
typedef struct ta_tcache_s {
  ta_tbin_t bins[TA_TCLASSES + 1]; /* and TA_ZERO_CLASS's, always empty */
  uint64_t budget;       /* sum of max * bsize */
  uint64_t limit;        /* thread_limit() when last read (every 64th slow path) */
  uint32_t epoch;        /* flush requests seen (ta_flush_epoch) */
  uint32_t slow;         /* slow paths since the last maintenance */
  uint32_t victim;       /* the next bin a growing bin takes budget from */
  int state;             /* ta_tc_state_t */
  uint32_t prof_epoch;   /* ta_prof_epoch when the countdowns were last drawn (prof.c) */
  uint64_t prof_clamped[2]; /* bit c: bins[c].sample_skip running out is no sample, only a look */
  int tid, pid;          /* the owner's kernel thread id and process (ta_tcaches_reap) */
  struct ta_tcache_s *next, *prev; /* registry (under ta_tcaches_lock) */
} ta_tcache_t;

#endif
