/* Huge blocks (beyond half a segment): a segment-aligned mapping of their own,
 * whose header looks like a segment's so free finds it in O(1). Grown and
 * shrunk with mremap, never copied. A freed mapping waits in a small cache for
 * purge_delay_ms (so a program that builds and drops a big buffer in a loop
 * does not fault it in afresh each time), then is unmapped. */
#include "internal.h"

#include <errno.h>

_Atomic uint64_t ta_huge_bytes, ta_huge_mapped, ta_huge_count, ta_huge_total;
_Atomic uint64_t ta_huge_cached; /* bytes mapped in the cache */

#define TA_HUGE_CACHE 8
#define TA_HUGE_CACHE_MAX ((size_t)256 << 20) /* never keep more than this */
static struct {
  ta_segment_t *seg;
  uint64_t freed_ms;
} cache[TA_HUGE_CACHE];
static ta_lock_t cache_lock = PTHREAD_MUTEX_INITIALIZER;
/* Mappings taken out of the cache to be unmapped are in no structure a fork
 * child could find: expire_lock is held from the detach to the last unmap,
 * and the pre-fork handler takes it first (a child got 60-150 MiB it could
 * never release). Lock order: expire_lock, then cache_lock. */
static ta_lock_t expire_lock = PTHREAD_MUTEX_INITIALIZER;
static ta_delay_t cache_delay; /* under cache_lock */

static size_t round_up(size_t n, size_t to) {
  return (n + to - 1) & ~(to - 1);
}

static void huge_account(ta_segment_t *s, int sign) {
  int64_t usable = (int64_t)s->huge_size * sign, mapped = (int64_t)s->map_size * sign;
  ta_relaxed_add(&ta_huge_bytes, (uint64_t)usable);
  ta_relaxed_add(&ta_huge_mapped, (uint64_t)mapped);
  ta_relaxed_add(&ta_huge_count, (uint64_t)(int64_t)sign);
  ta_active_add(usable);
}

/* Takes the smallest cached mapping of at least `map` bytes, or else the
 * largest one (to be grown), or NULL. Not the largest when it is under two
 * thirds of the request and the cache has room and holds no more than half
 * the live huge blocks' bytes: then the request gets a fresh mapping and
 * the cached ones stay for smaller requests. Growing the largest faults in the
 * difference and leaves the cache with the one mapping each free puts
 * back, so every request either cuts it (its tail unmapped) or grows it:
 * mimalloc-bench's malloc-large (5-25 MiB blocks, 20 live, each replaced
 * by one of another size) faulted 1.37M times, 2.7 MiB a block (glibc
 * 0.51M); now 0.30-0.33M. The bound on the cached bytes keeps what the
 * cache holds within what is live (bench/'s large-blocks, two 1-32 MiB
 * blocks: peak RSS 64 -> 72 MiB, glibc 93; 87 with the whole live bytes as
 * the bound, 124 with none: the cache filled its 8 slots; a std::vector-like
 * doubling to 64 MiB: as before). bench/results-2026-12-07-large.txt. */
static ta_segment_t *cache_take_fit(size_t map) {
  if (!ta_relaxed_load(&ta_huge_cached)) return NULL;
  ta_segment_t *best = NULL, *largest = NULL;
  size_t bi = 0, li = 0, n = 0;
  ta_lock(&cache_lock);
  for (size_t i = 0; i < TA_HUGE_CACHE; i++) {
    ta_segment_t *s = cache[i].seg;
    if (!s) continue;
    n++;
    if (s->map_size >= map && (!best || s->map_size < best->map_size)) best = s, bi = i;
    if (!largest || s->map_size > largest->map_size) largest = s, li = i;
  }
  if (!best && largest &&
      (largest->map_size * 3 >= map * 2 || n == TA_HUGE_CACHE ||
       ta_relaxed_load(&ta_huge_cached) * 2 > ta_relaxed_load(&ta_huge_bytes)))
    best = largest, bi = li;
  if (best) {
    cache[bi].seg = NULL;
    atomic_fetch_sub_explicit(&ta_huge_cached, best->map_size, memory_order_relaxed);
  }
  ta_unlock(&cache_lock);
  return best;
}

/* How much bigger than its block a reused mapping may be (cache_take); the
 * hardened build keeps every huge block ending where its mapping ends, so
 * that an overflow past it faults instead of writing into slack. */
#ifdef TA_HARDENED
#define TA_HUGE_SLACK 1
#else
#define TA_HUGE_SLACK 2
#endif

static ta_segment_t *cache_take(size_t map) {
  ta_segment_t *best = cache_take_fit(map);
  if (!best) { /* a miss soon after expiring mappings: keep them longer */
    ta_lock(&cache_lock);
    ta_delay_refault(&cache_delay, 0);
    ta_unlock(&cache_lock);
  }
  /* Cut to the request when more than twice as big (the head's pages are
   * resident and stay so: no fault; the tail is unmapped, so it is neither
   * kept resident nor counted as allocated: v2 handed a 16 MiB malloc a 60
   * MiB mapping, all of it resident); taken whole when at most twice as big
   * (the rest is mapped, not allocated: ta_huge_alloc counts the request,
   * and the whole mapping comes back to the cache with the block); grown
   * (pages moved, not copied, only the difference faulted in) when too
   * small. Cutting every bigger mapping made mimalloc-bench's malloc-large
   * (5-25 MiB blocks, 20 live, each replaced by one of another size) fault
   * 1.79M times against glibc's 0.51M: each cut tail was faulted in again by
   * the next bigger block. */
  if (best && best->map_size > TA_HUGE_SLACK * map) {
    ta_prim_unmap((uint8_t *)best + map, best->map_size - map);
    best->map_size = map;
  } else if (best && best->map_size < map) {
    void *q;
    size_t old = best->map_size;
    if (ta_prim_remap(best, old, map, TA_SEGMENT_SIZE, &q) == 0) {
      best = q;
      best->map_size = map;
    } else {
      ta_prim_unmap(best, old);
      best = NULL;
    }
  }
  return best;
}

/* Keeps a freed mapping for reuse; false when the cache is full. */
static bool cache_put(ta_segment_t *s) {
  if (ta_opt(TA_OPT_PURGE_DELAY_MS) == 0 || s->map_size > TA_HUGE_CACHE_MAX / 4) return false;
  bool done = false;
  ta_lock(&cache_lock);
  if (ta_relaxed_load(&ta_huge_cached) + s->map_size <= TA_HUGE_CACHE_MAX)
    for (size_t i = 0; i < TA_HUGE_CACHE && !done; i++)
      if (!cache[i].seg) {
        cache[i].seg = s;
        cache[i].freed_ms = ta_prim_clock_ms();
        ta_relaxed_add(&ta_huge_cached, s->map_size);
        done = true;
      }
  ta_unlock(&cache_lock);
  return done;
}

/* Unmaps the cached mappings that have been in the cache for its delay
 * (purge_delay_ms, lengthened when a miss follows an expiry), each by its
 * own age; all: every one (a trim). Returns the bytes released. The delay is
 * the purge delay, not unmap_delay_ms: unmapping a huge mapping is what
 * returns its pages (segments keep their address space longer because their
 * pages are purged first and their headers stay). */
size_t ta_huge_cache_expire(uint64_t now, bool all) {
  if (!ta_relaxed_load(&ta_huge_cached)) return 0;
  ta_segment_t *drop[TA_HUGE_CACHE];
  size_t n = 0, bytes = 0;
  ta_lock(&expire_lock);
  ta_lock(&cache_lock);
  uint64_t delay = ta_delay_get(&cache_delay, now, false);
  for (size_t i = 0; i < TA_HUGE_CACHE; i++)
    if (cache[i].seg && (all || cache[i].freed_ms + delay <= now)) {
      drop[n++] = cache[i].seg;
      atomic_fetch_sub_explicit(&ta_huge_cached, cache[i].seg->map_size, memory_order_relaxed);
      cache[i].seg = NULL;
    }
  if (n && !all) ta_delay_released(&cache_delay, now);
  ta_unlock(&cache_lock);
  for (size_t i = 0; i < n; i++) {
    bytes += drop[i]->map_size;
    ta_prim_unmap(drop[i], drop[i]->map_size);
  }
  ta_unlock(&expire_lock);
  return bytes;
}

void ta_huge_fork_prepare(void) {
  ta_lock(&expire_lock); /* no mapping between the cache and its unmap */
  ta_lock(&cache_lock);
}
void ta_huge_fork_parent(void) {
  ta_unlock(&cache_lock);
  ta_unlock(&expire_lock);
}
void ta_huge_fork_child(void) {
  ta_huge_fork_parent();
}

void *ta_huge_alloc(size_t size, size_t align, bool zero) {
  size_t ps = ta_prim_page_size();
  size_t off = round_up(sizeof(ta_segment_t), align > 64 ? align : 64);
  if (size > PTRDIFF_MAX - off - ps - TA_SEGMENT_SIZE) {
    errno = ENOMEM;
    return NULL;
  }
  size_t map = round_up(off + size, ps), have = map;
  void *p = cache_take(map);
  if (p) { /* dirty: clear the header and what is before the block (and the block for calloc) */
    have = ((ta_segment_t *)p)->map_size; /* at most TA_HUGE_SLACK x map (cache_take) */
    memset(p, 0, off);
    if (zero) memset((uint8_t *)p + off, 0, map - off);
  } else if (ta_prim_map(map, TA_SEGMENT_SIZE, &p) != 0) {
    errno = ENOMEM;
    return NULL;
  }
  ta_segment_t *s = p; /* header zeroed */
  s->huge = 1;
  s->map_size = have;
  s->huge_off = off;
  s->huge_size = map - off; /* the request's pages: what is allocated and usable */
  for (size_t i = 0; i < TA_SLICES; i++) {
    s->spans[i].head_off = (uint16_t)i;
    s->spans[i].cls = TA_NO_CLASS;
    ta_relaxed_store(&s->spans[i].fast_free_below, 0);
  }
  s->spans[0].kind = TA_SPAN_HUGE;
  s->spans[0].slices = 1;
  s->spans[0].start = (uint8_t *)p + off;
  ta_segmap_set(s, true);
  huge_account(s, 1);
  ta_relaxed_add(&ta_huge_total, 1);
  return (uint8_t *)p + off;
}

/* ---- alignments above half a segment ----
 * Such a block starts on a segment boundary, so p & ~mask is the block
 * itself: its header goes at the start of the segment before it, and the
 * block's segment is marked in a map of its own, which only the slow paths
 * read (the free fast path's segment-map test fails for it). */
static _Atomic uint64_t farmap[TA_SEGMAP_WORDS];

static void farmap_set(const void *p, bool on) {
  ta_addrmap_set(farmap, p, on);
}

ta_segment_t *ta_huge_far_of(const void *p) {
  uintptr_t i = (uintptr_t)p >> TA_SEGMENT_SHIFT;
  if (((uintptr_t)p & TA_SEGMENT_MASK) || i >= TA_SEGMAP_WORDS * 64) return NULL;
  if (!((atomic_load_explicit(&farmap[i / 64], memory_order_acquire) >> (i % 64)) & 1)) return NULL;
  return (ta_segment_t *)((uintptr_t)p - TA_SEGMENT_SIZE);
}

void *ta_huge_alloc_far(size_t size, size_t align, bool zero) {
  size_t ps = ta_prim_page_size(), sz = round_up(size ? size : 1, ps);
  if (size > PTRDIFF_MAX - 2 * TA_SEGMENT_SIZE - ps || align > (PTRDIFF_MAX - 2 * TA_SEGMENT_SIZE - sz)) {
    errno = ENOMEM;
    return NULL;
  }
  size_t total = TA_SEGMENT_SIZE + sz + align; /* over-mapped: the ends are cut off */
  void *m;
  if (ta_prim_map(total, TA_SEGMENT_SIZE, &m) != 0) {
    errno = ENOMEM;
    return NULL;
  }
  uintptr_t start = (uintptr_t)m, p = (start + TA_SEGMENT_SIZE + align - 1) & ~(uintptr_t)(align - 1);
  uintptr_t hdr = p - TA_SEGMENT_SIZE, end = start + total;
  if (hdr > start) ta_prim_unmap((void *)start, hdr - start);
  if (end > p + sz) ta_prim_unmap((void *)(p + sz), end - (p + sz));
  (void)zero; /* a fresh mapping reads as zero */
  ta_segment_t *s = (ta_segment_t *)hdr;
  s->huge = 2;
  s->map_size = TA_SEGMENT_SIZE + sz;
  s->huge_off = TA_SEGMENT_SIZE;
  s->huge_size = sz;
  s->spans[0].kind = TA_SPAN_HUGE;
  s->spans[0].cls = TA_NO_CLASS;
  ta_relaxed_store(&s->spans[0].fast_free_below, 0);
  s->spans[0].slices = 1;
  s->spans[0].start = (uint8_t *)p;
  farmap_set((void *)p, true);
  huge_account(s, 1);
  ta_relaxed_add(&ta_huge_total, 1);
  return (void *)p;
}

/* The bytes just before a huge block are the end of its header (the last,
 * unused slice descriptor, or the gap an alignment leaves), all zero while
 * nothing writes there: anything else is a write before the block (an
 * underflow), reported at the free. */
#define TA_HUGE_HEADER_CHECK 32
static void check_header(ta_segment_t *s) {
  const uint64_t *w = (const uint64_t *)((uint8_t *)s + s->huge_off - TA_HUGE_HEADER_CHECK);
  uint64_t any = 0;
  for (size_t i = 0; i < TA_HUGE_HEADER_CHECK / 8; i++) any |= w[i];
  if (any) ta_error("free: heap underflow (the header before the block is overwritten) of block", (uint8_t *)s + s->huge_off);
}

void ta_huge_free(ta_segment_t *s) {
  check_header(s);
  if (s->huge == 2) { /* far: never cached */
    huge_account(s, -1);
    farmap_set((uint8_t *)s + s->huge_off, false);
    ta_prim_unmap(s, s->map_size);
    return;
  }
  huge_account(s, -1);
  ta_segmap_set(s, false);
  s->spans[0].kind = TA_SPAN_FREE; /* a stale pointer into the cache is not a block */
  if (!cache_put(s)) ta_prim_unmap(s, s->map_size);
}

void *ta_huge_realloc(ta_segment_t *s, size_t size) {
  size_t off = s->huge_off, ps = ta_prim_page_size();
  if (size > PTRDIFF_MAX - off - ps - TA_SEGMENT_SIZE) {
    errno = ENOMEM;
    return NULL;
  }
  size_t map = round_up(off + size, ps);
  if (map <= s->map_size && s->map_size <= TA_HUGE_SLACK * map) { /* within the mapping (cache_take's bound) */
    huge_account(s, -1);
    s->huge_size = map - off;
    huge_account(s, 1);
    return (uint8_t *)s + off;
  }
  huge_account(s, -1);
  ta_segmap_set(s, false);
  void *q;
  if (ta_prim_remap(s, s->map_size, map, TA_SEGMENT_SIZE, &q) != 0) {
    ta_segmap_set(s, true);
    huge_account(s, 1);
    errno = ENOMEM;
    return NULL; /* the block stays as it was */
  }
  s = q;
  s->map_size = map;
  s->huge_size = map - off;
  s->spans[0].start = (uint8_t *)q + off;
  ta_segmap_set(s, true);
  huge_account(s, 1);
  return (uint8_t *)q + off;
}
