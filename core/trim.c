/* trimalloc_trim: return everything that is free right now, in every heap. */
#include "internal.h"

extern _Atomic uint64_t ta_trims, ta_trimmed_bytes, ta_trim_ns;

TRIMALLOC_API size_t trimalloc_trim(void) {
  uint64_t t0 = ta_prim_clock_ns(), now = ta_prim_clock_ms();
  ta_process_init();
  ta_heap_t *me = ta_tls_heap;
  size_t bytes = 0;
  if (me != &ta_heap_empty) bytes += ta_heap_collect(me, true);
  ta_lock(&ta_heaps_lock);
  for (ta_heap_t *h = ta_heaps; h; h = h->next_all) {
    if (h->state == TA_HEAP_ABANDONED) bytes += ta_heap_collect(h, true); /* no owner: we may */
    else if (h != me) atomic_store_explicit(&h->flush, 1, memory_order_relaxed);
    ta_lock(&h->lock);
    if (h != me) ta_heap_reclaim_full(h); /* the owner may be asleep */
    bytes += ta_heap_purge(h, now, true);
    ta_unlock(&h->lock);
  }
  ta_unlock(&ta_heaps_lock);
  bytes += ta_huge_cache_expire(now, true);
  ta_relaxed_add(&ta_trims, 1);
  ta_relaxed_add(&ta_trimmed_bytes, bytes);
  ta_relaxed_add(&ta_trim_ns, ta_prim_clock_ns() - t0);
  return bytes;
}

TRIMALLOC_API int trimalloc_malloc_trim(size_t pad) {
  (void)pad;
  return trimalloc_trim() > 0;
}
