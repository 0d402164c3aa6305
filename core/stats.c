/* Stats: counters the slow paths keep (relaxed atomics, summed over the
 * arenas and their bins: no lock but the thread-cache registry's, which the
 * fast paths never take), and their JSON form. */
#include "internal.h"

#include <errno.h>


static void stats_collect(trimalloc_stats_t *st) {
  uint64_t used = 0, allocs = 0, blocks = 0, large = 0, large_n = 0, large_allocs = 0;
  uint64_t purges = 0, purged_bytes = 0, arenas = 0;
  int64_t resident_pages = 0, dirty_pages = 0;
  uint32_t n = ta_relaxed_load(&ta_arenas_used);
  for (uint32_t i = 0; i < n; i++) {
    ta_arena_t *a = &ta_arenas[i];
    if (!atomic_load_explicit(&a->ready, memory_order_acquire)) continue;
    arenas++;
    for (size_t c = 0; c < TA_CLASSES; c++) {
      ta_bin_t *bin = &a->bins[c];
      uint64_t u = ta_relaxed_load(&bin->used_bytes);
      used += u;
      blocks += u / ta_class_size(c);
      allocs += ta_relaxed_load(&bin->allocs);
    }
    large += ta_relaxed_load(&a->large_bytes);
    large_n += ta_relaxed_load(&a->large_count);
    large_allocs += ta_relaxed_load(&a->large_allocs);
    purges += ta_relaxed_load(&a->purges);
    purged_bytes += ta_relaxed_load(&a->purged_bytes);
    resident_pages += ta_relaxed_load(&a->resident_pages);
    dirty_pages += ta_relaxed_load(&a->dirty_pages);
  }
  uint64_t held, caches;
  ta_tcaches_stats(&held, &caches);
  int64_t x = ta_arenas_xfer_bytes();
  uint64_t xfer = (uint64_t)(x > 0 ? x : 0); /* free blocks in the transfer caches: free, not live */
  uint64_t huge_bytes = ta_relaxed_load(&ta_huge_bytes), huge_mapped = ta_relaxed_load(&ta_huge_mapped);
  uint64_t huge_total = ta_relaxed_load(&ta_huge_total), huge_live = ta_relaxed_load(&ta_huge_count);
  uint64_t cached = ta_relaxed_load(&ta_huge_cached); /* freed huge mappings kept for reuse a moment */
  uint64_t meta = ta_relaxed_load(&ta_meta_bytes), segs = ta_segments_live();
  st->allocated = (used > held + xfer ? used - held - xfer : 0) + large + huge_bytes;
  /* pages holding at least one live block: resident pages that are neither
   * free (dirty) nor segment headers */
  int64_t live_pages = resident_pages - dirty_pages - (int64_t)(segs * (ta_segment_header_bytes() >> ta_ospage_shift));
  st->active = ((uint64_t)(live_pages > 0 ? live_pages : 0) << ta_ospage_shift) + huge_bytes;
  /* huge pages of huge-page segments whole (segment.c): an upper bound */
  int64_t counted = resident_pages + ta_thp_hidden_pages();
  st->resident = ((uint64_t)(counted > 0 ? counted : 0) << ta_ospage_shift) + huge_mapped + cached + meta;
  st->mapped = segs * TA_SEGMENT_SIZE + huge_mapped + cached + meta;
  if (st->resident > st->mapped) st->resident = st->mapped;
  st->metadata = segs * ta_segment_header_bytes() + meta;
  st->purged = st->mapped - st->resident;
  /* The sums are read while other threads work (no lock): a cache flushed
   * between reading the bins' used bytes and the caches' held bytes counts
   * its blocks as allocated, and allocated can pass resident for a moment
   * (test_fuzz, 4 threads on musl: -0.016). A ratio stays within [0, 1]. */
  st->fragmentation = st->resident > st->allocated ? 1.0 - (double)st->allocated / (double)st->resident : 0.0;
  uint64_t peak = ta_active_peak(); /* the mark can trail a change another thread is making */
  st->peak_active = peak > st->active ? peak : st->active;
  st->allocations = allocs + large_allocs + huge_total;
  uint64_t live = blocks + large_n + huge_live;
  st->frees = st->allocations > live ? st->allocations - live : 0;
  st->huge_allocations = huge_total;
  st->segments = segs;
  st->heaps = caches;
  st->purges = purges;
  st->purged_bytes = purged_bytes;
  st->trims = ta_relaxed_load(&ta_trims);
  st->trimmed_bytes = ta_relaxed_load(&ta_trimmed_bytes);
  st->trim_ns = ta_relaxed_load(&ta_trim_ns);
  st->arenas = arenas;
  st->tcache_bytes = held;
  st->dirty = ((uint64_t)(dirty_pages > 0 ? dirty_pages : 0) << ta_ospage_shift) + cached + xfer;
  st->background = (uint64_t)ta_purger_running();
  st->prof_samples = ta_relaxed_load(&ta_prof_live_count);
  st->prof_sampled = ta_relaxed_load(&ta_prof_samples);
  st->prof_live_bytes = ta_relaxed_load(&ta_prof_live_bytes);
  st->prof_meta_bytes = ta_relaxed_load(&ta_prof_meta_bytes);
  st->prof_dropped = ta_relaxed_load(&ta_prof_dropped);
}

TRIMALLOC_API int trimalloc_stats(trimalloc_stats_t *out, size_t size) {
  if (!out || size < 2 * sizeof(uint32_t)) return EINVAL;
  trimalloc_stats_t st;
  memset(&st, 0, sizeof st);
  stats_collect(&st); /* before init: all zero */
  st.version = TRIMALLOC_STATS_VERSION;
  st.size = (uint32_t)(size < sizeof st ? size : sizeof st);
  memcpy(out, &st, st.size);
  return 0;
}

/* ---- JSON, written without allocating ---- */
typedef struct {
  char *buf;
  size_t size, len;
} ta_out_t;

static void put(ta_out_t *o, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++, o->len++)
    if (o->len + 1 < o->size) o->buf[o->len] = s[i];
}
static void puts_(ta_out_t *o, const char *s) {
  put(o, s, strlen(s));
}
static void put_u64(ta_out_t *o, uint64_t v) {
  char d[24];
  put(o, d, ta_fmt_u64(d, v));
}
static void put_double(ta_out_t *o, double v) { /* fixed, 6 decimals */
  if (v < 0) {
    puts_(o, "-");
    v = -v;
  }
  uint64_t scaled = (uint64_t)(v * 1e6 + 0.5), frac = scaled % 1000000;
  put_u64(o, scaled / 1000000);
  char d[8] = {'.'};
  for (int i = 6; i >= 1; i--, frac /= 10) d[i] = (char)('0' + frac % 10);
  put(o, d, 7);
}

TRIMALLOC_API size_t trimalloc_stats_json(char *buf, size_t size) {
  trimalloc_stats_t st;
  trimalloc_stats(&st, sizeof st);
  ta_out_t o = {buf, buf ? size : 0, 0};
  puts_(&o, "{\"version\":");
  put_u64(&o, st.version);
#define TA_JSON_FIELD(T, N, U, D)                          \
  puts_(&o, ",\"" #N "\":");                               \
  if (_Generic(st.N, double: 1, default: 0)) put_double(&o, (double)st.N); \
  else put_u64(&o, (uint64_t)st.N);
  TRIMALLOC_STATS_FIELDS(TA_JSON_FIELD)
#undef TA_JSON_FIELD
  puts_(&o, "}");
  if (o.size) o.buf[o.len < o.size ? o.len : o.size - 1] = 0;
  return o.len;
}
