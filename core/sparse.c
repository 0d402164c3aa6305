/* Sparse pages: the OS pages between survivors go back to the OS.
 *
 * One live string in every 64 keeps every 64 KiB page of a Ruby heap;
 * glibc's malloc_trim returns the 4 KiB pages between such survivors, and so
 * does trim here, for one-slice pages. An OS page goes back when every block
 * on it is free; its free blocks then leave every list (their links would
 * read as zero) and come back, an OS page at a time, when the owner's page
 * runs out of blocks (ta_page_unpurge_one, before any fresh block is carved).
 *
 * Three sources of free blocks: the owner's own lists (ta_page_purge_sparse,
 * by the owner), blocks other threads freed onto the page's atomic stack
 * (ta_page_purge_remote, by a trim in any thread: it takes the stack, so no
 * one else sees those blocks meanwhile, and tells the owner through
 * xpurged), and blocks of a full page in the heap's delayed list
 * (ta_page_purge_delayed, under the heap lock, which guards full pages). */
#include "internal.h"

#define TA_MAX_BLOCKS (TA_SLICE_SIZE / TA_ALIGN)

/* ---- tails of big free blocks ----
 * A free block of two OS pages or more keeps the OS page that holds its link
 * and returns the rest (as glibc's malloc_trim does inside free chunks): it
 * stays on its list, and its tail reads as zero when it is handed out again.
 * Its third word marks it, so the next trim does not purge it again; the
 * malloc paths for such sizes clear the mark. */
static inline uintptr_t tail_mark(void) {
  return ~ta_cookie;
}

size_t ta_block_purge_tail(const ta_page_t *pg, ta_block_t *b) {
  size_t ps = ta_prim_page_size();
  if (pg->bsize < 2 * ps) return 0;
  uintptr_t *w = (uintptr_t *)b;
  if (w[2] == tail_mark()) return 0;
  uintptr_t start = ((uintptr_t)b + 3 * sizeof(uintptr_t) + ps - 1) & ~(uintptr_t)(ps - 1);
  uintptr_t end = ((uintptr_t)b + pg->bsize) & ~(uintptr_t)(ps - 1);
  if (end <= start || ta_prim_purge((void *)start, end - start) != 0) return 0;
  w[2] = tail_mark();
  return end - start;
}

static size_t purge_tails(const ta_page_t *pg, ta_block_t *b) {
  size_t bytes = 0;
  for (; b; b = b->next) bytes += ta_block_purge_tail(pg, b);
  return bytes;
}
typedef uint64_t ta_bits_t[TA_MAX_BLOCKS / 64];

static inline bool bit(const uint64_t *b, size_t j) {
  return (b[j / 64] >> (j % 64)) & 1;
}
static inline void set_bit(uint64_t *b, size_t j) {
  b[j / 64] |= (uint64_t)1 << (j % 64);
}
static inline size_t block_index(const ta_page_t *pg, const void *b) {
  return (size_t)((const uint8_t *)b - pg->start) / pg->bsize;
}
/* Does block j overlap an OS page in `purged`? */
static bool on_purged(const ta_page_t *pg, size_t j, uint32_t purged, size_t ps) {
  size_t lo = j * pg->bsize / ps, hi = ((j + 1) * pg->bsize - 1) / ps;
  for (size_t k = lo; k <= hi; k++)
    if ((purged >> k) & 1) return true;
  return false;
}
static bool eligible(const ta_page_t *pg) {
  size_t nos = TA_SLICE_SIZE / ta_prim_page_size();
  return pg->kind == TA_SPAN_SMALL && pg->slices == 1 && nos >= 2 && nos <= 32;
}

/* The OS pages, not yet purged, all of whose blocks (below `limit`) are in
 * `mask`. */
static uint32_t find_covered(const ta_page_t *pg, const uint64_t *mask, size_t limit) {
  size_t ps = ta_prim_page_size(), nos = TA_SLICE_SIZE / ps, bs = pg->bsize;
  uint32_t purged = ta_relaxed_load(&pg->purged_os), found = 0;
  for (size_t i = 0; i < nos; i++) {
    if ((purged >> i) & 1) continue;
    size_t first = i * ps / bs, end = ((i + 1) * ps + bs - 1) / bs;
    if (end > limit) break; /* beyond: blocks not in the mask (not carved, or not ours) */
    bool all = true;
    for (size_t j = first; j < end && all; j++) all = bit(mask, j);
    if (all) found |= 1u << i;
  }
  return found;
}

/* Returns the OS pages in `pages` to the OS and marks them purged. The free
 * blocks on them must be off every list first: purging zeroes their links.
 * (A page whose purge fails is marked all the same: its blocks come back,
 * links rewritten, when the owner unpurges it.) */
static void purge_pages(ta_page_t *pg, uint32_t pages) {
  size_t ps = ta_prim_page_size();
  for (uint32_t m = pages; m; m &= m - 1) ta_prim_purge(pg->start + (size_t)__builtin_ctz(m) * ps, ps);
  atomic_fetch_or_explicit(&pg->purged_os, pages, memory_order_relaxed);
}

size_t ta_page_unpurge_one(ta_page_t *pg) {
  size_t ps = ta_prim_page_size(), bs = pg->bsize;
  size_t i = (size_t)__builtin_ctz(ta_relaxed_load(&pg->purged_os));
  uint32_t purged = atomic_fetch_and_explicit(&pg->purged_os, ~(1u << i), memory_order_relaxed) & ~(1u << i);
  size_t first = i * ps / bs, end = ((i + 1) * ps + bs - 1) / bs, n = 0;
  if (end > pg->capacity) end = pg->capacity;
  ta_block_t **link = &pg->free;
  while (*link) link = &(*link)->next;
  for (size_t j = first; j < end; j++) {
    if (on_purged(pg, j, purged, ps)) continue; /* comes back with its other OS page */
    ta_block_t *b = (ta_block_t *)(pg->start + j * bs);
    b->key = ta_cookie;
    *link = b;
    link = &b->next;
    n++;
  }
  *link = NULL;
  return n;
}

size_t ta_page_purge_sparse(ta_heap_t *h, ta_page_t *pg) {
  size_t ps = ta_prim_page_size(), bs = pg->bsize;
  if (pg->kind == TA_SPAN_SMALL && bs >= 2 * ps) { /* big blocks: their tails */
    ta_page_collect_xfree(pg);
    size_t bytes = purge_tails(pg, pg->free) + purge_tails(pg, pg->local_free);
    if (bytes) {
      ta_relaxed_add(&h->purges, 1);
      ta_relaxed_add(&h->purged_bytes, bytes);
    }
    return bytes;
  }
  uint32_t used = ta_relaxed_load(&pg->used);
  if (!eligible(pg) || (size_t)used * 2 >= pg->capacity) return 0;
  if (pg->sparse_used == used + 1 && !pg->local_free && !atomic_load_explicit(&pg->xfree, memory_order_relaxed))
    return 0; /* nothing freed since the last time */
  ta_page_collect_xfree(pg);
  used = ta_relaxed_load(&pg->used);
  ta_bits_t free_bits = {0};
  size_t listed = 0;
  for (ta_block_t *b = pg->free; b; b = b->next, listed++) set_bit(free_bits, block_index(pg, b));
  for (ta_block_t *b = pg->local_free; b; b = b->next) set_bit(free_bits, block_index(pg, b));
  pg->sparse_used = used + 1;
  uint32_t done = find_covered(pg, free_bits, pg->capacity);
  if (!done) return 0;
  purge_pages(pg, done); /* the list is rebuilt by index below, not walked */
  /* Rebuild the free list, in address order, without the purged blocks;
   * count what the old list handed out first (the refill equation). */
  uint32_t purged = ta_relaxed_load(&pg->purged_os);
  ta_relaxed_add(&h->allocs, pg->refill_count - listed);
  ta_block_t **link = &pg->free;
  size_t k = 0;
  for (size_t j = 0; j < pg->capacity; j++) {
    if (!bit(free_bits, j) || on_purged(pg, j, purged, ps)) continue;
    ta_block_t *b = (ta_block_t *)(pg->start + j * bs);
    *link = b;
    link = &b->next;
    k++;
  }
  *link = NULL;
  pg->local_free = NULL;
  pg->refill_count = (uint32_t)k;
  pg->refill_used = used;
  size_t bytes = (size_t)__builtin_popcount(done) * ps;
  ta_relaxed_add(&h->purges, 1);
  ta_relaxed_add(&h->purged_bytes, bytes);
  return bytes;
}

/* Splits a chain into the blocks on purged OS pages (dropped, counted) and
 * the others (returned as *keep .. *keep_last). */
static size_t split_chain(ta_page_t *pg, ta_block_t *b, uint32_t purged, ta_block_t **keep,
                          ta_block_t **keep_last) {
  size_t ps = ta_prim_page_size(), dropped = 0;
  *keep = *keep_last = NULL;
  for (ta_block_t *next; b; b = next) {
    next = b->next;
    if (on_purged(pg, block_index(pg, b), purged, ps)) {
      dropped++;
      continue;
    }
    b->next = NULL;
    if (*keep_last) (*keep_last)->next = b;
    else *keep = b;
    *keep_last = b;
  }
  return dropped;
}

size_t ta_page_purge_remote(ta_page_t *pg) {
  bool tails = pg->kind == TA_SPAN_SMALL && pg->bsize >= 2 * ta_prim_page_size();
  if (!tails && !eligible(pg)) return 0;
  uintptr_t old = atomic_load_explicit(&pg->xfree, memory_order_relaxed);
  do
    if (old == 0 || (old & TA_XFREE_FULL)) return 0;
  while (!atomic_compare_exchange_weak_explicit(&pg->xfree, &old, 0, memory_order_acquire, memory_order_relaxed));
  if (tails) { /* the taken blocks are ours until given back */
    ta_block_t *last = (ta_block_t *)old;
    while (last->next) last = last->next;
    size_t bytes = purge_tails(pg, (ta_block_t *)old);
    ta_page_push_remote(pg, (ta_block_t *)old, last);
    return bytes;
  }
  ta_bits_t taken = {0};
  for (ta_block_t *b = (ta_block_t *)old; b; b = b->next) set_bit(taken, block_index(pg, b));
  uint32_t done = find_covered(pg, taken, pg->reserved);
  ta_block_t *keep, *last;
  /* Split before purging: the links of the blocks on those pages vanish. */
  size_t dropped = split_chain(pg, (ta_block_t *)old, done, &keep, &last);
  purge_pages(pg, done);
  if (dropped) atomic_fetch_add_explicit(&pg->xpurged, (uint32_t)dropped, memory_order_release);
  if (keep) ta_page_push_remote(pg, keep, last);
  return (size_t)__builtin_popcount(done) * ta_prim_page_size();
}

size_t ta_page_purge_delayed(ta_page_t *pg, ta_block_t **chain) {
  if (pg->kind == TA_SPAN_SMALL && pg->bsize >= 2 * ta_prim_page_size()) return purge_tails(pg, *chain);
  if (!eligible(pg)) return 0;
  ta_bits_t taken = {0};
  for (ta_block_t *b = *chain; b; b = b->next) set_bit(taken, block_index(pg, b));
  uint32_t done = find_covered(pg, taken, pg->reserved);
  if (!done) return 0;
  ta_block_t *keep, *last;
  size_t dropped = split_chain(pg, *chain, done, &keep, &last); /* before purging: links vanish */
  purge_pages(pg, done);
  ta_relaxed_store(&pg->used, ta_relaxed_load(&pg->used) - (uint32_t)dropped); /* full: under lock */
  pg->refill_used -= (uint32_t)dropped; /* keeps the refill equation (types.h) */
  *chain = keep;
  return (size_t)__builtin_popcount(done) * ta_prim_page_size();
}

/* Trim, holding h->lock (so no page of h is retired or created meanwhile):
 * ta_page_purge_remote on every page of h that is not full. */
size_t ta_heap_purge_remote(ta_heap_t *h) {
  size_t bytes = 0;
  for (ta_segment_t *s = h->segments; s; s = s->next)
    for (size_t i = 1; i < TA_SLICES; i += s->pages[i].slices ? s->pages[i].slices : 1) {
      ta_page_t *pg = &s->pages[i];
      if (pg->kind == TA_SPAN_SMALL && !ta_relaxed_load(&pg->in_full)) bytes += ta_page_purge_remote(pg);
    }
  return bytes;
}
