/* Thread heaps: creation, the registry, abandonment at thread exit and
 * adoption by new threads, delayed frees, periodic maintenance, and fork. */
#include "internal.h"

#include <errno.h>

/* Every thread starts on this heap: its direct slots point at an empty page,
 * so the first malloc falls into the slow path, which gives the thread a heap. */
ta_heap_t ta_heap_empty = {.direct = {[0 ... TA_DIRECT_SLOTS - 1] = &ta_page_empty}};
__thread ta_heap_t *ta_tls_heap __attribute__((tls_model("initial-exec"))) = &ta_heap_empty;

ta_lock_t ta_heaps_lock = PTHREAD_MUTEX_INITIALIZER;
ta_heap_t *ta_heaps;          /* all heaps (under ta_heaps_lock) */
static ta_heap_t *abandoned;  /* heaps of exited threads (under ta_heaps_lock) */
_Atomic uint64_t ta_meta_bytes;

static size_t heap_map_size(void) {
  size_t ps = ta_prim_page_size();
  return (sizeof(ta_heap_t) + ps - 1) & ~(ps - 1);
}

static ta_heap_t *heap_new(void) {
  void *p;
  if (ta_prim_map(heap_map_size(), ta_prim_page_size(), &p) != 0) return NULL;
  ta_heap_t *h = p; /* zeroed */
  for (size_t d = 0; d < TA_DIRECT_SLOTS; d++) h->direct[d] = &ta_page_empty;
  pthread_mutex_init(&h->lock, NULL);
  h->last_purge_ms = ta_prim_clock_ms();
  ta_relaxed_add(&ta_meta_bytes, heap_map_size());
  return h;
}

ta_heap_t *ta_heap_get(void) {
  ta_heap_t *h = ta_tls_heap;
  if (ta_likely(h != &ta_heap_empty)) return h;
  ta_process_init();
  ta_lock(&ta_heaps_lock);
  h = abandoned;
  if (h) {
    abandoned = h->next_abandoned;
    h->next_abandoned = NULL;
    h->state = TA_HEAP_ACTIVE;
  }
  ta_unlock(&ta_heaps_lock);
  if (!h) {
    h = heap_new();
    if (!h) return NULL;
    ta_lock(&ta_heaps_lock);
    h->next_all = ta_heaps;
    ta_heaps = h;
    ta_unlock(&ta_heaps_lock);
  }
  ta_tls_heap = h; /* before setspecific, which may call calloc */
  pthread_setspecific(ta_heap_key, h);
  return h;
}

/* Frees blocks that other threads freed into this heap's full pages. */
static void heap_delayed_free(ta_heap_t *h) {
  if (!atomic_load_explicit(&h->delayed, memory_order_relaxed)) return;
  ta_block_t *b = atomic_exchange_explicit(&h->delayed, NULL, memory_order_acquire);
  while (b) {
    ta_block_t *next = b->next;
    ta_page_t *pg = ta_page_of(ta_segment_of(b), b);
    b->key = 0; /* its remote free already checked and set the cookie */
    ta_free_local(h, pg, b);
    b = next;
  }
}

/* A page of class cls with a free block, or NULL (out of memory). */
ta_page_t *ta_heap_find_page(ta_heap_t *h, size_t cls) {
  ta_pageq_t *q = &h->queues[cls];
  for (int round = 0; round < 2; round++) {
    ta_page_t *pg = q->first;
    while (pg) {
      ta_page_t *next = pg->next;
      if (pg->free || ta_page_refill(h, pg)) {
        if (q->first != pg) {
          ta_pageq_remove(q, pg);
          ta_pageq_push(q, pg);
        }
        ta_heap_set_direct(h, cls);
        return pg;
      }
      ta_page_to_full(h, pg);
      if (!ta_relaxed_load(&pg->in_full) && ta_page_refill(h, pg)) continue; /* a block arrived: retry it */
      pg = next;
    }
    /* Before taking fresh memory, take back what other threads freed. */
    if (round == 0 && atomic_load_explicit(&h->delayed, memory_order_relaxed)) heap_delayed_free(h);
    else break;
  }
  ta_lock(&h->lock);
  ta_page_t *pg = ta_span_alloc(h, ta_class_slices(cls), TA_SPAN_SMALL);
  if (pg) ta_page_init(h, pg, cls);
  ta_unlock(&h->lock);
  if (!pg) return NULL;
  ta_pageq_push(q, pg);
  pg->in_queue = 1;
  ta_page_refill(h, pg);
  ta_heap_set_direct(h, cls);
  return pg;
}

/* Collects delayed frees; with flush, also returns every empty page (the
 * caches kept against thrashing) to the segments, and, with sparse, the free
 * OS pages of sparse pages to the OS. Returns the bytes purged here. */
size_t ta_heap_collect(ta_heap_t *h, bool flush, bool sparse) {
  heap_delayed_free(h);
  if (!flush) return 0;
  size_t bytes = 0;
  for (size_t c = 0; c < TA_CLASSES; c++) {
    ta_page_t *pg = h->queues[c].first;
    while (pg) {
      ta_page_t *next = pg->next;
      if (!pg->free) ta_page_refill(h, pg);
      else ta_page_collect_xfree(pg);
      if (ta_relaxed_load(&pg->used) == 0) ta_page_retire(h, pg);
      else if (sparse) bytes += ta_page_purge_sparse(h, pg);
      pg = next;
    }
  }
  return bytes;
}

/* Runs on slow paths: honours a flush request from trim, and purges spans
 * that stayed free longer than purge_delay_ms (so RSS falls without any trim
 * call, while memory that is reused soon is kept). */
void ta_heap_maintain(ta_heap_t *h) {
  if (ta_unlikely(atomic_load_explicit(&h->flush, memory_order_relaxed))) {
    atomic_store_explicit(&h->flush, 0, memory_order_relaxed);
    ta_heap_collect(h, true, true);
  }
  if ((++h->slow_count & 15) != 0) return; /* read the clock every 16th slow path */
  uint64_t now = ta_prim_clock_ms();
  uint64_t every = (uint64_t)ta_opt(TA_OPT_PURGE_DELAY_MS) / 4 + 1;
  if (now - h->last_purge_ms < every) return;
  h->last_purge_ms = now;
  heap_delayed_free(h);
  ta_lock(&h->lock);
  ta_heap_purge(h, now, false, NULL);
  ta_unlock(&h->lock);
  ta_huge_cache_expire(now, false);
  ta_heaps_purge_others(h, now);
}

/* Threads that sleep run no slow path, so the active ones purge the expired
 * free spans of every other heap too (spans are under each heap's lock; a
 * busy lock is skipped, not waited for), and collect the heaps of exited
 * threads, into which other threads keep freeing (nobody owns those; the
 * registry lock keeps them from being adopted meanwhile). At most once per
 * purge delay. */
void ta_heaps_purge_others(ta_heap_t *me, uint64_t now) {
  static _Atomic uint64_t last;
  uint64_t prev = ta_relaxed_load(&last), every = (uint64_t)ta_opt(TA_OPT_PURGE_DELAY_MS) + 1;
  if (now - prev < every || !atomic_compare_exchange_strong(&last, &prev, now)) return;
  if (pthread_mutex_trylock(&ta_heaps_lock) != 0) return;
  for (ta_heap_t *h = ta_heaps; h; h = h->next_all) {
    if (h == me) continue;
    if (h->state == TA_HEAP_ABANDONED) ta_heap_collect(h, true, false);
    if (pthread_mutex_trylock(&h->lock) != 0) continue;
    ta_heap_purge(h, now, false, NULL);
    ta_unlock(&h->lock);
  }
  ta_unlock(&ta_heaps_lock);
}

/* pthread key destructor: the thread exits; its heap waits for adoption. */
void ta_heap_thread_done(void *arg) {
  ta_heap_t *h = arg;
  if (!h || h == &ta_heap_empty) return;
  ta_heap_collect(h, true, true);
  ta_tls_heap = &ta_heap_empty;
  ta_lock(&ta_heaps_lock);
  h->state = TA_HEAP_ABANDONED;
  h->next_abandoned = abandoned;
  abandoned = h;
  ta_unlock(&ta_heaps_lock);
}

/* fork: hold every lock across it, so the child sees consistent spans. */
void ta_heap_fork_prepare(void) {
  ta_lock(&ta_heaps_lock);
  for (ta_heap_t *h = ta_heaps; h; h = h->next_all) ta_lock(&h->lock);
  ta_huge_fork_prepare();
}

void ta_heap_fork_parent(void) {
  ta_huge_fork_parent();
  for (ta_heap_t *h = ta_heaps; h; h = h->next_all) ta_unlock(&h->lock);
  ta_unlock(&ta_heaps_lock);
}

/* In the child only the forking thread exists. The other threads' heaps may
 * have been copied in the middle of a fast-path push or pop (no lock guards
 * those), so they are DEAD: never adopted; trim returns what it can reach
 * under their locks (empty spans, full pages whose blocks all came back). */
void ta_heap_fork_child(void) {
  ta_huge_fork_child();
  for (ta_heap_t *h = ta_heaps; h; h = h->next_all) {
    pthread_mutex_init(&h->lock, NULL);
    if (h->state == TA_HEAP_ACTIVE && h != ta_tls_heap) h->state = TA_HEAP_DEAD;
  }
  pthread_mutex_init(&ta_heaps_lock, NULL);
}

/* Invariants of a heap (debug checker, called by tests). Owner only. */
bool ta_heap_is_valid(ta_heap_t *h) {
  for (size_t c = 0; c < TA_CLASSES; c++) {
    ta_pageq_t *q = &h->queues[c];
    ta_page_t *prev = NULL;
    for (ta_page_t *pg = q->first; pg; prev = pg, pg = pg->next) {
      if (pg->cls != c || !pg->in_queue || ta_relaxed_load(&pg->in_full) || pg->prev != prev || pg->heap != h) return false;
      if (pg->kind != TA_SPAN_SMALL || pg->capacity > pg->reserved) return false;
      size_t n = 0;
      for (ta_block_t *b = pg->free; b; b = b->next) {
        if ((uint8_t *)b < pg->start || !ta_is_block_start(pg, b) || ++n > pg->capacity) return false;
        size_t off = (size_t)((uint8_t *)b - pg->start), ps = ta_prim_page_size();
        if (pg->slices == 1 && off / ps < 32 && ((ta_relaxed_load(&pg->purged_os) >> (off / ps)) & 1)) return false;
      }
      for (ta_block_t *b = pg->local_free; b; b = b->next)
        if (!ta_is_block_start(pg, b) || ++n > pg->capacity) return false;
      if (ta_relaxed_load(&pg->used) > pg->capacity - n) return false;
    }
    if (q->last != prev) return false;
    if (ta_class_size(c) <= TA_DIRECT_MAX) {
      ta_page_t *want = q->first ? q->first : &ta_page_empty;
      for (size_t d = ta_direct_lo[c]; d <= ta_direct_hi[c]; d++)
        if (h->direct[d] != want) return false;
    }
  }
  bool ok = true;
  ta_lock(&h->lock);
  for (ta_page_t *pg = h->full.first; pg && ok; pg = pg->next)
    ok = ta_relaxed_load(&pg->in_full) && !pg->in_queue && !pg->free && !pg->local_free;
  for (ta_segment_t *s = h->segments; s && ok; s = s->next) ok = ta_segment_is_valid(s) && s->heap == h;
  ta_unlock(&h->lock);
  return ok;
}

/* Checks the calling thread's heap; 1 if valid (tests call this). */
TRIMALLOC_API int trimalloc_check(void) {
  ta_heap_t *h = ta_tls_heap;
  return h == &ta_heap_empty ? 1 : ta_heap_is_valid(h);
}
