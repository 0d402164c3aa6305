/* trimalloc_trim: return what is free right now, in every heap.
 * trimalloc_trim_idle: the same, with hysteresis, for hooks that trim often.
 *
 * glibc with malloc_trim after every Ruby major GC ran at a quarter of the
 * RSS but took 27% more CPU, faulting the same pages back in. So an idle trim
 * that comes within trim_window_ms of the previous trim keeps (of the newest
 * free memory) as much as the program faulted in afresh since then: what it
 * is about to reuse. The delayed purge takes that reserve back once it stays
 * idle. An explicit trimalloc_trim returns everything. */
#include "internal.h"

extern _Atomic uint64_t ta_trims, ta_trimmed_bytes, ta_trim_ns;
static uint64_t last_trim_ms, committed_at_last_trim, kept_last; /* under ta_heaps_lock */

static size_t trim(bool idle) {
  uint64_t t0 = ta_prim_clock_ns(), now = ta_prim_clock_ms();
  ta_process_init();
  ta_heap_t *me = ta_tls_heap;
  size_t bytes = 0;
  ta_lock(&ta_heaps_lock);
  uint64_t committed = ta_relaxed_load(&ta_committed_total), window = (uint64_t)ta_opt(TA_OPT_TRIM_WINDOW_MS);
  /* The demand of one cycle: what was faulted in afresh, plus the reserve
   * kept last time (served without faults). Converges in one cycle. */
  size_t keep = idle && last_trim_ms && now - last_trim_ms < window
                    ? (size_t)(committed - committed_at_last_trim + kept_last)
                    : 0;
  size_t want = keep;
  last_trim_ms = now;
  committed_at_last_trim = committed;
  bool sparse = keep == 0; /* OS pages between survivors come back fastest: keep them too */
  ta_unlock(&ta_heaps_lock);
  if (me != &ta_heap_empty) bytes += ta_heap_collect(me, true, sparse);
  ta_lock(&ta_heaps_lock);
  for (ta_heap_t *h = ta_heaps; h; h = h->next_all) {
    if (h->state == TA_HEAP_ABANDONED) bytes += ta_heap_collect(h, true, sparse); /* no owner: we may */
    else if (h != me) atomic_store_explicit(&h->flush, 1, memory_order_relaxed);
    ta_lock(&h->lock);
    if (h != me && h->state != TA_HEAP_ABANDONED) { /* the owner may be asleep */
      bytes += ta_heap_reclaim_full(h, sparse);
      if (sparse) bytes += ta_heap_purge_remote(h);
    }
    bytes += ta_heap_purge(h, now, true, &keep);
    ta_unlock(&h->lock);
  }
  kept_last = want - keep; /* what the heaps actually kept */
  ta_unlock(&ta_heaps_lock);
  bytes += ta_huge_cache_expire(now, keep == 0);
  ta_relaxed_add(&ta_trims, 1);
  ta_relaxed_add(&ta_trimmed_bytes, bytes);
  ta_relaxed_add(&ta_trim_ns, ta_prim_clock_ns() - t0);
  return bytes;
}

TRIMALLOC_API size_t trimalloc_trim(void) {
  return trim(false);
}

TRIMALLOC_API size_t trimalloc_trim_idle(void) {
  return trim(true);
}

TRIMALLOC_API int trimalloc_malloc_trim(size_t pad) {
  (void)pad;
  return trimalloc_trim() > 0;
}
