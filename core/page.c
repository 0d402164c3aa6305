/* Small pages: carving blocks, collecting the three free lists, and moving a
 * page between its class queue, the full list, and back to its segment.
 * All of it runs on the owning thread (or on behalf of an abandoned heap). */
#include "internal.h"

/* The page every empty heap slot points at: no free block, so the malloc fast
 * path falls into the slow path without an initialisation check. */
ta_page_t ta_page_empty;

void ta_page_init(ta_heap_t *h, ta_page_t *pg, size_t cls) {
  size_t bs = ta_class_size(cls);
  pg->cls = (uint8_t)cls;
  pg->bsize = (uint32_t)bs;
  pg->div_magic = UINT64_MAX / bs + 1;
  pg->reserved = (uint32_t)((size_t)pg->slices * TA_SLICE_SIZE / bs);
  pg->capacity = 0;
  pg->refill_used = pg->refill_count = 0;
  ta_relaxed_store(&pg->used, 0);
  pg->free = pg->local_free = NULL;
  atomic_store_explicit(&pg->xfree, 0, memory_order_relaxed);
  pg->heap = h;
  ta_relaxed_store(&pg->in_full, 0);
  pg->in_queue = 0;
  pg->scratch = 0;
  ta_relaxed_store(&pg->purged_os, 0);
  ta_relaxed_store(&pg->xpurged, 0);
  pg->sparse_used = 0;
  pg->next = pg->prev = NULL;
}

/* Carves fresh blocks: about 16 KiB at a time, so a new page does not fault
 * in all of its memory at once. Pre: pg->free == NULL. */
static void page_extend(ta_page_t *pg) {
  size_t bs = pg->bsize, n = 16384 / bs;
  if (n == 0) n = 1;
  if (n > pg->reserved - pg->capacity) n = pg->reserved - pg->capacity;
  uint8_t *first = pg->start + (size_t)pg->capacity * bs;
  for (size_t i = 0; i < n; i++) {
    ta_block_t *b = (ta_block_t *)(first + i * bs);
    b->next = i + 1 < n ? (ta_block_t *)(first + (i + 1) * bs) : NULL;
    b->key = ta_cookie;
  }
  pg->free = (ta_block_t *)first;
  pg->capacity += (uint32_t)n;
}

/* Frees a chain of blocks (first .. last, linked) from a thread that does not
 * own the page: onto its atomic stack, or, when the owner has put the page in
 * its full list (and no longer looks at it), onto the heap's delayed list. */
void ta_page_push_remote(ta_page_t *pg, ta_block_t *first, ta_block_t *last) {
  uintptr_t old = atomic_load_explicit(&pg->xfree, memory_order_relaxed);
  for (;;) {
    if (old & TA_XFREE_FULL) {
      ta_heap_t *h = pg->heap;
      ta_block_t *head = atomic_load_explicit(&h->delayed, memory_order_relaxed);
      do last->next = head;
      while (!atomic_compare_exchange_weak_explicit(&h->delayed, &head, first, memory_order_release,
                                                    memory_order_relaxed));
      return;
    }
    last->next = (ta_block_t *)old;
    if (atomic_compare_exchange_weak_explicit(&pg->xfree, &old, (uintptr_t)first, memory_order_release,
                                              memory_order_relaxed))
      return;
  }
}

/* Moves blocks freed by other threads onto the free list. Returns how many.
 * Pre: the page is not in the full list. */
size_t ta_page_collect_xfree(ta_page_t *pg) {
  if (ta_relaxed_load(&pg->xpurged)) { /* blocks a trim took off xfree and purged */
    uint32_t np = atomic_exchange_explicit(&pg->xpurged, 0, memory_order_acquire);
    ta_relaxed_store(&pg->used, ta_relaxed_load(&pg->used) - np);
    pg->refill_used -= np;
  }
  if (atomic_load_explicit(&pg->xfree, memory_order_relaxed) == 0) return 0;
  ta_block_t *b = (ta_block_t *)atomic_exchange_explicit(&pg->xfree, 0, memory_order_acquire);
  if (!b) return 0;
  size_t n = 1;
  ta_block_t *tail = b;
  while (tail->next) {
    tail = tail->next;
    n++;
  }
  tail->next = pg->free;
  pg->free = b;
  ta_relaxed_store(&pg->used, ta_relaxed_load(&pg->used) - (uint32_t)n);
  pg->refill_used -= (uint32_t)n; /* keeps the refill equation (types.h) */
  pg->refill_count += (uint32_t)n;
  return n;
}

/* Refills an empty free list from local frees, other threads' frees, or
 * fresh blocks. Counts the blocks the previous list handed out. */
bool ta_page_refill(ta_heap_t *h, ta_page_t *pg) {
  ta_assert(pg->free == NULL);
  uint32_t used = ta_relaxed_load(&pg->used);
  ta_relaxed_add(&h->allocs, pg->refill_count);
  pg->refill_count = pg->refill_used + pg->refill_count - used; /* |local_free| */
  pg->refill_used = used;
  pg->free = pg->local_free;
  pg->local_free = NULL;
  if (!ta_relaxed_load(&pg->in_full)) ta_page_collect_xfree(pg);
  while (!pg->free && ta_relaxed_load(&pg->purged_os)) pg->refill_count += (uint32_t)ta_page_unpurge_one(pg);
  if (!pg->free && pg->capacity < pg->reserved) {
    uint32_t before = pg->capacity;
    page_extend(pg);
    pg->refill_count += pg->capacity - before;
  }
  return pg->free != NULL;
}

/* Counts what the current list handed out, when a page leaves for good; and,
 * for a page of few blocks, checks that no block is listed twice (a double
 * free that drove `used` to zero early would otherwise free the span under a
 * live block). Pages of many small blocks rely on malloc's cookie check. */
static void page_count_final(ta_heap_t *h, ta_page_t *pg) {
  uint32_t left = 0;
  uint64_t seen[4] = {0};
  bool check = pg->capacity <= 256;
  for (int l = 0; l < 2; l++)
    for (ta_block_t *b = l ? pg->local_free : pg->free; b; b = b->next) {
      if (!l) left++;
      if (!check) {
        if (l) break;
        continue;
      }
      size_t j = (size_t)((uint8_t *)b - pg->start) / pg->bsize;
      if (j >= 256 || ((seen[j / 64] >> (j % 64)) & 1)) ta_error("free: double free", b);
      seen[j / 64] |= (uint64_t)1 << (j % 64);
    }
  ta_relaxed_add(&h->allocs, pg->refill_count - left);
  pg->refill_count = left;
}

void ta_pageq_push(ta_pageq_t *q, ta_page_t *pg) {
  pg->prev = NULL;
  pg->next = q->first;
  if (q->first) q->first->prev = pg;
  else q->last = pg;
  q->first = pg;
}

void ta_pageq_remove(ta_pageq_t *q, ta_page_t *pg) {
  if (pg->prev) pg->prev->next = pg->next;
  else q->first = pg->next;
  if (pg->next) pg->next->prev = pg->prev;
  else q->last = pg->prev;
  pg->next = pg->prev = NULL;
}

/* Points the direct slots of class cls at the class's current page. */
void ta_heap_set_direct(ta_heap_t *h, size_t cls) {
  if (ta_class_size(cls) > TA_DIRECT_MAX) return;
  ta_page_t *pg = h->queues[cls].first ? h->queues[cls].first : &ta_page_empty;
  if (h->direct[ta_direct_hi[cls]] == pg) return;
  for (size_t d = ta_direct_lo[cls]; d <= ta_direct_hi[cls]; d++) h->direct[d] = pg;
}

static void queue_remove(ta_heap_t *h, ta_page_t *pg) {
  bool was_first = h->queues[pg->cls].first == pg;
  ta_pageq_remove(&h->queues[pg->cls], pg);
  pg->in_queue = 0;
  if (was_first) ta_heap_set_direct(h, pg->cls);
}

/* A page with no free block leaves its queue for the full list; from then on
 * other threads' frees go to heap->delayed. If a block arrives first, the
 * flag cannot be set and the page stays (the caller collects it). */
void ta_page_to_full(ta_heap_t *h, ta_page_t *pg) {
  uintptr_t expect = 0;
  if (!atomic_compare_exchange_strong_explicit(&pg->xfree, &expect, TA_XFREE_FULL, memory_order_acq_rel,
                                               memory_order_relaxed))
    return;
  queue_remove(h, pg);
  ta_lock(&h->lock);
  ta_pageq_push(&h->full, pg);
  ta_relaxed_store(&pg->in_full, 1);
  ta_unlock(&h->lock);
}

/* Back from the full list to the tail of its class queue: the current page
 * stays current, and this one gathers more free blocks before its turn. */
void ta_page_unfull(ta_heap_t *h, ta_page_t *pg) {
  ta_lock(&h->lock);
  ta_pageq_remove(&h->full, pg);
  ta_relaxed_store(&pg->in_full, 0);
  atomic_store_explicit(&pg->xfree, 0, memory_order_release);
  ta_unlock(&h->lock);
  ta_pageq_t *q = &h->queues[pg->cls];
  pg->next = NULL;
  pg->prev = q->last;
  if (q->last) q->last->next = pg;
  else q->first = pg;
  q->last = pg;
  pg->in_queue = 1;
  ta_heap_set_direct(h, pg->cls);
}

/* Returns a page's span to its segment. */
void ta_page_retire(ta_heap_t *h, ta_page_t *pg) {
  page_count_final(h, pg);
  if (ta_relaxed_load(&pg->in_full)) ta_page_unfull(h, pg);
  if (pg->in_queue) queue_remove(h, pg);
  ta_lock(&h->lock);
  ta_span_free(h, pg);
  ta_unlock(&h->lock);
}

/* used dropped to 0. A single-slice page that is its class's only page stays
 * as a cache (a burst of free/malloc must not thrash); others go back to the
 * segment, where the delayed purge returns them to the OS if they stay idle. */
void ta_page_emptied(ta_heap_t *h, ta_page_t *pg) {
  if (pg->kind == TA_SPAN_LARGE) {
    ta_lock(&h->lock);
    ta_span_free(h, pg);
    ta_unlock(&h->lock);
    return;
  }
  ta_pageq_t *q = &h->queues[pg->cls];
  if (pg->slices == 1 && q->first == pg && pg->next == NULL) return;
  ta_page_retire(h, pg);
}

/* Trim, from any thread, holding h->lock: returns the spans of h's full pages
 * whose every live block is now in h->delayed (freed by other threads while
 * the owner sleeps: Ruby's GC frees other threads' blocks all the time), and,
 * with sparse, the OS pages of the other full pages that those blocks cover.
 * The owner never touches a full page without h->lock, so this is safe.
 * Returns the bytes purged here (retired spans are purged by the caller). */
size_t ta_heap_reclaim_full(ta_heap_t *h, bool sparse) {
  ta_block_t *list = atomic_exchange_explicit(&h->delayed, NULL, memory_order_acquire);
  if (!list) return 0;
  for (ta_block_t *b = list; b; b = b->next) {
    ta_page_t *pg = ta_page_of(ta_segment_of(b), b);
    if (ta_relaxed_load(&pg->in_full)) pg->scratch++;
  }
  ta_block_t *keep = NULL, *keep_tail = NULL;
  ta_page_t *pages = NULL; /* full pages with a chain in ->tmp, linked through ->pnext */
  for (ta_block_t *b = list, *next; b; b = next) {
    next = b->next;
    ta_page_t *pg = ta_page_of(ta_segment_of(b), b);
    if (ta_relaxed_load(&pg->in_full) && pg->scratch == ta_relaxed_load(&pg->used)) {
      /* every block of the page is free: the page goes back to its segment */
      ta_pageq_remove(&h->full, pg);
      ta_relaxed_store(&pg->in_full, 0);
      atomic_store_explicit(&pg->xfree, 0, memory_order_relaxed);
      ta_relaxed_add(&h->allocs, pg->refill_count);
      pg->refill_count = 0;
      ta_relaxed_store(&pg->used, 0);
      pg->scratch = 0;
      ta_span_free(h, pg);
      continue;
    }
    if (pg->kind == TA_SPAN_FREE) continue; /* a block of a page retired just above */
    b->next = NULL;
    if (sparse && ta_relaxed_load(&pg->in_full)) { /* gather per page */
      if (!pg->tmp) {
        pg->pnext = pages;
        pages = pg;
      }
      b->next = pg->tmp;
      pg->tmp = b;
      continue;
    }
    if (keep_tail) keep_tail->next = b;
    else keep = b;
    keep_tail = b;
  }
  size_t bytes = 0;
  for (ta_page_t *pg = pages, *next; pg; pg = next) {
    next = pg->pnext;
    pg->pnext = NULL;
    pg->scratch = 0; /* its blocks may all be consumed below: reset here, not through keep */
    ta_block_t *chain = pg->tmp;
    pg->tmp = NULL;
    bytes += ta_page_purge_delayed(pg, &chain);
    while (chain) {
      ta_block_t *b = chain;
      chain = b->next;
      b->next = NULL;
      if (keep_tail) keep_tail->next = b;
      else keep = b;
      keep_tail = b;
    }
  }
  for (ta_block_t *b = keep; b; b = b->next) ta_page_of(ta_segment_of(b), b)->scratch = 0;
  if (!keep) return bytes;
  ta_block_t *head = atomic_load_explicit(&h->delayed, memory_order_relaxed);
  do keep_tail->next = head;
  while (!atomic_compare_exchange_weak_explicit(&h->delayed, &head, keep, memory_order_release,
                                                memory_order_relaxed));
  return bytes;
}
