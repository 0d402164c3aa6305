/* The heap profiler's live set: one record per sampled block still live
 * (its trace and unbiased weights), found by address through an open
 * addressing table (linear probing, deletion by backward shift: no
 * tombstones), plus the estimates (sums of the weights), the peak set and
 * the growth trigger. One lock, held for O(1) work per sample and per free
 * of a sampled block; a dump holds it to sum the records per trace (10,000
 * records: tens of microseconds). */
#include "internal.h"

_Atomic uint64_t ta_prof_live_count, ta_prof_live_bytes, ta_prof_samples, ta_prof_dropped;

typedef struct {
  uintptr_t addr; /* 0: free record */
  uint32_t trace, next_free;
  double objects, bytes;
} rec_t;

typedef struct {
  uint32_t trace;
  double objects, bytes;
} peak_t;

static ta_lock_t live_lock = PTHREAD_MUTEX_INITIALIZER;
#define TA_REC_PAGE 4096 /* records per page */
#define TA_REC_PAGES 4096
static rec_t *rec_pages[TA_REC_PAGES];
static uint32_t nrecs;               /* records made (free ones included) */
static uint32_t free_rec = UINT32_MAX; /* free list */
static uint32_t *slots;              /* record id + 1 by address; 0 empty */
static size_t cap, used;             /* slots: a power of two */
static double live_objects, live_bytes;
static peak_t *peak;                 /* the live set when live_bytes last passed the peak by a step */
static size_t npeak, peak_cap;
static double peak_bytes;
static double growth_next; /* live bytes that fire the growth trigger (0: not armed) */

static inline rec_t *rec(uint32_t id) {
  return &rec_pages[id / TA_REC_PAGE][id % TA_REC_PAGE];
}
static inline size_t slot_of(uintptr_t a, size_t c) {
  return ((a >> 4) * 0x9e3779b97f4a7c15ull) >> 20 & (c - 1);
}

/* The table starts at one 4 KiB page and doubles at half full: a record's
 * slot is anywhere in it, so a table mapped larger than its use is resident
 * all the same after a few dozen samples (8192 slots at first were 32 KiB
 * for the 0-20 sampled blocks live at 512 KiB in bench/'s workloads). */
static bool grow(void) {
  size_t c = cap ? cap * 2 : 1024;
  uint32_t *t = ta_prof_meta_map(c * sizeof(uint32_t));
  if (!t) return false;
  for (size_t i = 0; i < cap; i++)
    if (slots[i]) {
      size_t j = slot_of(rec(slots[i] - 1)->addr, c);
      while (t[j]) j = (j + 1) & (c - 1);
      t[j] = slots[i];
    }
  ta_prof_meta_unmap(slots, cap * sizeof(uint32_t));
  slots = t;
  cap = c;
  return true;
}

static uint32_t rec_new(void) {
  if (free_rec != UINT32_MAX) {
    uint32_t id = free_rec;
    free_rec = rec(id)->next_free;
    return id;
  }
  if (nrecs >= (uint32_t)TA_REC_PAGE * TA_REC_PAGES) return UINT32_MAX;
  if (!rec_pages[nrecs / TA_REC_PAGE]) {
    rec_pages[nrecs / TA_REC_PAGE] = ta_prof_meta_map(TA_REC_PAGE * sizeof(rec_t));
    if (!rec_pages[nrecs / TA_REC_PAGE]) return UINT32_MAX;
  }
  return nrecs++;
}

/* The peak set: a copy of the live records (trace and weights). */
static void take_peak(void) {
  size_t n = ta_relaxed_load(&ta_prof_live_count);
  if (n > peak_cap) {
    size_t c = (n + n / 2 + 1023) & ~(size_t)1023, bytes = c * sizeof(peak_t);
    peak_t *p = ta_prof_meta_map(bytes);
    if (!p) return; /* the old peak stays */
    ta_prof_meta_unmap(peak, peak_cap * sizeof(peak_t));
    peak = p;
    peak_cap = c;
  }
  npeak = 0;
  for (uint32_t i = 0; i < nrecs && npeak < peak_cap; i++) {
    rec_t *r = rec(i);
    if (r->addr) peak[npeak++] = (peak_t){r->trace, r->objects, r->bytes};
  }
  peak_bytes = live_bytes;
}

bool ta_prof_live_add(void *p, uint32_t trace, double objects, double bytes, bool *fire) {
  ta_lock(&live_lock);
  uint32_t id = UINT32_MAX;
  if ((used + 1) * 2 > cap && !grow()) goto out;
  id = rec_new();
  if (id == UINT32_MAX) goto out;
  *rec(id) = (rec_t){(uintptr_t)p, trace, 0, objects, bytes};
  size_t j = slot_of((uintptr_t)p, cap);
  while (slots[j]) j = (j + 1) & (cap - 1);
  slots[j] = id + 1;
  used++;
  ta_prof_trace_t *t = ta_prof_trace(trace);
  t->alloc_objects += objects;
  t->alloc_bytes += bytes;
  live_objects += objects;
  live_bytes += bytes;
  ta_relaxed_store(&ta_prof_live_count, used);
  ta_relaxed_store(&ta_prof_live_bytes, (uint64_t)live_bytes);
  ta_relaxed_add(&ta_prof_samples, 1);
  /* The peak set is retaken each time the live bytes pass it by 1/16. */
  if (live_bytes > peak_bytes + peak_bytes / 16) take_peak();
  long long g = ta_opt(TA_OPT_PROF_GROWTH);
  if (g > 0) {
    if (growth_next == 0) growth_next = (double)g;
    if (live_bytes >= growth_next) {
      *fire = true;
      growth_next = live_bytes + (double)g; /* the high-water mark of this dump, plus the step */
    }
  }
out:
  ta_unlock(&live_lock);
  if (id == UINT32_MAX) ta_relaxed_add(&ta_prof_dropped, 1);
  return id != UINT32_MAX;
}

bool ta_prof_live_remove(void *p) {
  uintptr_t a = (uintptr_t)p;
  bool found = false;
  ta_lock(&live_lock);
  if (!cap) goto out;
  size_t j = slot_of(a, cap);
  for (; slots[j]; j = (j + 1) & (cap - 1))
    if (rec(slots[j] - 1)->addr == a) break;
  if (!slots[j]) goto out;
  uint32_t id = slots[j] - 1;
  rec_t *r = rec(id);
  live_objects -= r->objects;
  live_bytes -= r->bytes;
  if (live_bytes < 0.5) live_bytes = live_objects = 0; /* rounding: an empty set is 0 */
  r->addr = 0;
  r->next_free = free_rec;
  free_rec = id;
  /* backward shift: later entries of the probe run move up into the hole */
  for (size_t i = (j + 1) & (cap - 1); slots[i]; i = (i + 1) & (cap - 1)) {
    size_t home = slot_of(rec(slots[i] - 1)->addr, cap);
    if (((i - home) & (cap - 1)) >= ((i - j) & (cap - 1))) {
      slots[j] = slots[i];
      j = i;
    }
  }
  slots[j] = 0;
  used--;
  found = true;
  ta_relaxed_store(&ta_prof_live_count, used);
  ta_relaxed_store(&ta_prof_live_bytes, (uint64_t)live_bytes);
out:
  ta_unlock(&live_lock);
  return found;
}

_Atomic uint64_t ta_prof_snapshot_ns; /* the last snapshot's time holding the lock (test_prof reads it) */

size_t ta_prof_live_snapshot(int kind, ta_prof_row_t *rows, size_t n) {
  ta_lock(&live_lock);
  uint64_t t0 = ta_prim_clock_ns();
  size_t need = ta_prof_traces();
  if (need <= n) {
    for (size_t t = 0; t < need; t++) {
      ta_prof_trace_t *tr = ta_prof_trace((uint32_t)t);
      rows[t] = (ta_prof_row_t){tr->alloc_objects, tr->alloc_bytes, 0, 0};
    }
    if (kind == TRIMALLOC_PROF_PEAK) {
      for (size_t i = 0; i < npeak; i++) {
        rows[peak[i].trace].inuse_objects += peak[i].objects;
        rows[peak[i].trace].inuse_bytes += peak[i].bytes;
      }
    } else {
      for (uint32_t i = 0; i < nrecs; i++) {
        rec_t *r = rec(i);
        if (!r->addr) continue;
        rows[r->trace].inuse_objects += r->objects;
        rows[r->trace].inuse_bytes += r->bytes;
      }
    }
  }
  ta_relaxed_store(&ta_prof_snapshot_ns, ta_prim_clock_ns() - t0);
  ta_unlock(&live_lock);
  return need;
}

void ta_prof_live_reset_peak(void) {
  ta_lock(&live_lock);
  npeak = 0;
  peak_bytes = 0;
  ta_unlock(&live_lock);
}

void ta_prof_live_growth_reset(void) {
  ta_lock(&live_lock);
  growth_next = 0;
  ta_unlock(&live_lock);
}

void ta_prof_live_fork_prepare(void) {
  ta_lock(&live_lock);
}
void ta_prof_live_fork_parent(void) {
  ta_unlock(&live_lock);
}
