/* Stats: one walk over every heap's segments (under each heap's lock, which
 * the malloc and free fast paths never take), and their JSON form. */
#include "internal.h"

#include <errno.h>

static _Atomic int64_t active_now;
static _Atomic uint64_t active_peak;
_Atomic uint64_t ta_trims, ta_trimmed_bytes, ta_trim_ns;

void ta_active_add(int64_t delta) {
  int64_t now = atomic_fetch_add_explicit(&active_now, delta, memory_order_relaxed) + delta;
  uint64_t peak = ta_relaxed_load(&active_peak);
  while (now > 0 && (uint64_t)now > peak &&
         !atomic_compare_exchange_weak_explicit(&active_peak, &peak, (uint64_t)now, memory_order_relaxed,
                                                memory_order_relaxed)) {
  }
}

static void stats_collect(trimalloc_stats_t *st) {
  ta_walk_t w = {0};
  uint64_t allocs = 0, purges = 0, purged_bytes = 0, heaps = 0;
  ta_lock(&ta_heaps_lock);
  for (ta_heap_t *h = ta_heaps; h; h = h->next_all) {
    ta_lock(&h->lock);
    ta_segments_account(h, &w);
    ta_unlock(&h->lock);
    allocs += ta_relaxed_load(&h->allocs);
    purges += ta_relaxed_load(&h->purges);
    purged_bytes += ta_relaxed_load(&h->purged_bytes);
    heaps++;
  }
  ta_unlock(&ta_heaps_lock);
  uint64_t huge_bytes = ta_relaxed_load(&ta_huge_bytes), huge_mapped = ta_relaxed_load(&ta_huge_mapped);
  uint64_t huge_total = ta_relaxed_load(&ta_huge_total), huge_live = ta_relaxed_load(&ta_huge_count);
  uint64_t meta = ta_relaxed_load(&ta_meta_bytes);
  huge_mapped += ta_relaxed_load(&ta_huge_cached); /* freed, kept for reuse a moment */
  st->allocated = w.allocated + huge_bytes;
  st->active = w.active + huge_bytes;
  st->resident = w.resident + huge_mapped + meta;
  st->mapped = w.mapped + huge_mapped + meta;
  st->metadata = w.metadata + meta;
  st->purged = st->mapped - st->resident;
  st->fragmentation = st->resident ? 1.0 - (double)st->allocated / (double)st->resident : 0.0;
  st->peak_active = ta_relaxed_load(&active_peak);
  st->allocations = allocs + huge_total;
  uint64_t live = w.blocks + huge_live;
  st->frees = st->allocations > live ? st->allocations - live : 0;
  st->huge_allocations = huge_total;
  st->segments = ta_segments_live();
  st->heaps = heaps;
  st->purges = purges;
  st->purged_bytes = purged_bytes;
  st->trims = ta_relaxed_load(&ta_trims);
  st->trimmed_bytes = ta_relaxed_load(&ta_trimmed_bytes);
  st->trim_ns = ta_relaxed_load(&ta_trim_ns);
}

TRIMALLOC_API int trimalloc_stats(trimalloc_stats_t *out, size_t size) {
  if (!out || size < 2 * sizeof(uint32_t)) return EINVAL;
  trimalloc_stats_t st;
  memset(&st, 0, sizeof st);
  ta_process_init();
  stats_collect(&st);
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
