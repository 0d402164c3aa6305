/* trimalloc: every struct of the core, with its invariants.
 *
 * Address space comes from the OS in segments of TA_SEGMENT_SIZE bytes,
 * aligned to their size, so a block's segment is `p & ~TA_SEGMENT_MASK`.
 * A segment is cut into TA_SLICES slices of TA_SLICE_SIZE bytes; slice 0 holds
 * the segment header. A run of slices is a span; a span in use is a page:
 *  - a small page holds blocks of one size class (classes up to TA_MEDIUM_MAX),
 *  - a large page holds one block (up to TA_LARGE_MAX),
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
#define TA_SLICE_SHIFT 16 /* 64 KiB */
#define TA_SLICE_SIZE ((size_t)1 << TA_SLICE_SHIFT)
#define TA_SLICES (TA_SEGMENT_SIZE / TA_SLICE_SIZE) /* 64; slice 0 is the header */

#define TA_ALIGN 16               /* every block is 16-byte aligned */
#define TA_DIRECT_MAX 1024        /* sizes served by the malloc fast path */
#define TA_DIRECT_SLOTS (TA_DIRECT_MAX / TA_ALIGN + 1)
#define TA_MEDIUM_MAX (128 * 1024) /* largest size class */
#define TA_CLASSES 88              /* 16..128 by 16, then 8 classes per doubling */
#define TA_LARGE_MAX (TA_SEGMENT_SIZE / 2) /* beyond: huge, own mapping */
#define TA_MAX_ALIGN (TA_SEGMENT_SIZE / 2) /* larger alignments: ENOMEM */
#define TA_ADDR_BITS 48                    /* segments live below 2^48 */
#define TA_SEGMAP_WORDS (((size_t)1 << (TA_ADDR_BITS - TA_SEGMENT_SHIFT)) / 64)

#define TA_XFREE_FULL ((uintptr_t)1) /* page->xfree flag: page is in the full list */

typedef struct ta_heap_s ta_heap_t;

/* Purge hysteresis (delay.c): memory that stays idle `delay_ms` is returned;
 * taking memory back soon after returning some doubles the delay (up to 10x
 * the option, at most 1 s), a calm period halves it again. */
typedef struct ta_delay_s {
  uint64_t delay_ms;    /* current delay */
  uint64_t released_ms; /* last release of memory */
  uint64_t grown_ms;    /* last change of delay_ms */
} ta_delay_t;
typedef struct ta_segment_s ta_segment_t;

/* A free block: the first word links, the second holds the free cookie (so a
 * second free of the same block is caught cheaply; malloc clears it). */
typedef struct ta_block_s {
  struct ta_block_s *next;
  uintptr_t key;
} ta_block_t;

typedef enum {
  TA_SPAN_FREE = 0, /* in the heap's free-span bins */
  TA_SPAN_META,     /* slice 0 of a segment */
  TA_SPAN_SMALL,    /* blocks of one size class */
  TA_SPAN_LARGE,    /* one block */
  TA_SPAN_HUGE      /* descriptor of a huge mapping */
} ta_span_kind_t;

/* One slice descriptor. Only the head of a span carries data; the others have
 * head_off = their distance to the head.
 *
 * Small page invariants (owner thread only, except xfree and the relaxed
 * reads of used by stats):
 *   used = capacity - |free| - |local_free| - |xfree| - |blocks of this page in heap->delayed|
 *          - |free blocks on purged OS pages| + xpurged
 *   when free is empty: |local_free| = refill_used + refill_count - used
 *     (so a refill learns how many blocks were handed out and freed without
 *     walking the lists)
 *   capacity <= reserved;  reserved * bsize <= slices * TA_SLICE_SIZE
 *   xfree == TA_XFREE_FULL  <=>  in_full  (the page has no free block then)
 *   a block overlapping an OS page in purged_os is free and on no list
 *   (addr - start) % bsize == 0 for every block, tested with div_magic
 * Free span invariants (under heap->lock):
 *   kind == TA_SPAN_FREE, linked in heap->bins[slices] through next/prev,
 *   and in the purge queue through pnext/pprev iff some slice is committed. */
typedef struct __attribute__((aligned(64))) ta_page_s {
  /* First cache line: all that the malloc and free fast paths touch. */
  ta_block_t *free;        /* allocate from (owner) */
  ta_block_t *local_free;  /* frees by the owner */
  uint8_t *start;          /* first byte of the span */
  uint64_t div_magic;      /* UINT64_MAX / bsize + 1: divisibility test */
  ta_heap_t *heap;         /* owner (NULL for huge) */
  _Atomic uint32_t used;   /* live blocks; owner writes (relaxed), stats read */
  uint32_t bsize;          /* block size (large: span bytes) */
  _Atomic uint8_t in_full; /* in heap->full (changed under heap->lock) */
  uint8_t in_queue;        /* owner: in heap->queues[cls] */
  uint16_t head_off;       /* slices to the head (0 for a head) */
  uint8_t kind;            /* ta_span_kind_t */
  uint8_t cls;             /* size class (small pages) */
  uint8_t in_purge;        /* free span: in the heap's purge queue */
  uint32_t capacity;       /* blocks carved from the span so far */
  uint32_t reserved;       /* blocks that fit in the span */
  /* Second line: other threads' frees land here, away from the owner's line. */
  _Atomic uintptr_t xfree; /* frees by other threads: atomic stack | TA_XFREE_FULL */
  _Atomic uint32_t purged_os; /* OS pages of a one-slice page returned to the OS (bit i: page i);
                                 owner and trim update it atomically, stats read */
  _Atomic uint32_t xpurged; /* blocks a trim took off xfree into purged OS pages,
                               not yet subtracted from used by the owner */
  uint32_t refill_used;    /* used right after the last refill */
  uint32_t refill_count;   /* blocks put on `free` by the last refill */
  uint32_t scratch;        /* trim's count of a full page's delayed blocks */
  uint32_t sparse_used;    /* used + 1 when the page was last sparse-purged (0: never) */
  ta_block_t *tmp;         /* trim's per-page chain of delayed blocks (under heap->lock) */
  struct ta_page_s *next, *prev;   /* class queue / full list / free-span bin */
  /* Free spans only (under heap->lock). */
  struct ta_page_s *pnext, *pprev; /* purge queue */
  uint64_t freed_ms;       /* when the span became free */
  uint16_t slices;         /* span length in slices (head) */
} ta_page_t;

_Static_assert(offsetof(ta_page_t, reserved) + sizeof(uint32_t) <= 64,
               "the fast paths' fields of ta_page_t fit in its first cache line");

/* Segment header (slice 0), or the header of a huge mapping.
 *   committed bit i set  <=>  slice i may be resident (not purged)
 *   used_slices = number of slices in SMALL/LARGE spans
 *   segment is in the segment map  <=>  it is mapped */
struct ta_segment_s {
  ta_heap_t *heap; /* owner (NULL for huge) */
  struct ta_segment_s *next, *prev;
  size_t map_size;       /* bytes mapped */
  size_t huge_off;       /* huge: offset of the block */
  size_t huge_size;      /* huge: usable size */
  uint64_t committed;    /* one bit per slice */
  uint64_t empty_since_ms;
  uint32_t used_slices;
  uint32_t huge;         /* 1: huge mapping */
  ta_page_t pages[TA_SLICES];
};

typedef struct ta_pageq_s {
  ta_page_t *first, *last;
} ta_pageq_t;

typedef pthread_mutex_t ta_lock_t;

/* ACTIVE: a thread owns it. ABANDONED: its thread exited; the next new thread
 * adopts it. DEAD: its thread does not exist in this child of fork; its lists
 * may be torn mid-operation, so nobody adopts it, but trim still returns its
 * empty spans and the full pages whose blocks all came back (lock-protected). */
typedef enum { TA_HEAP_ACTIVE = 0, TA_HEAP_ABANDONED, TA_HEAP_DEAD } ta_heap_state_t;

/* A thread's heap. Fields above `lock` are the owner's alone (no lock);
 * span bookkeeping below it, and the full list with its pages, are under
 * `lock` (taken in slow paths only, and by trim and stats from other threads:
 * the owner's fast paths never touch a full page, so trim can retire the
 * full pages whose blocks all came back through `delayed`).
 *   direct[(n + 15) / 16] == queues[class_of(n)].first, or &ta_page_empty
 *   every page in queues[c] has cls == c, in_queue; every page in full has in_full */
struct ta_heap_s {
  ta_page_t *direct[TA_DIRECT_SLOTS];
  ta_pageq_t queues[TA_CLASSES];
  ta_pageq_t full;               /* under lock */
  _Atomic(ta_block_t *) delayed; /* cross-thread frees into full pages */
  _Atomic int flush;             /* trim asks the owner to flush its caches */
  uint32_t slow_count;
  uint64_t last_purge_ms;

  ta_lock_t lock;
  ta_page_t *bins[TA_SLICES];         /* free spans by length */
  uint64_t bin_mask;                  /* bit n set <=> bins[n] != NULL */
  ta_page_t *purge_first, *purge_last; /* free committed spans, oldest first */
  ta_segment_t *segments;
  ta_delay_t purge_delay;       /* hysteresis of the delayed purge */
  int state;                    /* ta_heap_state_t, under the registry lock */
  ta_heap_t *next_all;          /* registry */
  ta_heap_t *next_abandoned;
  _Atomic uint64_t allocs;      /* blocks handed out, counted at refills */
  _Atomic uint64_t purges, purged_bytes;
};

/* Sums gathered by a stats walk. */
typedef struct ta_walk_s {
  uint64_t allocated, active, resident, mapped, metadata, blocks;
} ta_walk_t;

#endif
