/* The heap profiler: per-byte Poisson sampling with mean interval R.
 *
 * A block of Z bytes is sampled with probability p = 1 - e^(-Z/R) and then
 * weighs 1/p objects and Z/p bytes (Z >= R: always, weight 1), so sums of
 * the weights are unbiased. For thread-cache classes the decision is a
 * countdown per class in the thread's bin (ta_tbin_t.sample_skip): the
 * number of allocations of that class up to and including the next sampled
 * one is geometric, k = ceil(ln u / ln(1 - p)) = ceil(-R ln(u) / Z), so
 * letting k - 1 pass is exactly a Bernoulli(p) trial per allocation, and the
 * fast path pays one branch (ta_tbin_count_pop: the skip shares the
 * subtraction that counts the pop). A draw longer than TA_PROF_CLAMP
 * (and sampling off) arms the countdown at TA_PROF_CLAMP with the bin's
 * clamped bit set: reaching 0 then samples nothing but looks at the epoch and
 * draws again (the geometric distribution has no memory, so the rest of a
 * long draw is a fresh draw). So every thread sees a start, stop or new R
 * within TA_PROF_CLAMP allocations of a class, or at its next refill.
 * Blocks outside the thread caches (large, huge, aligned, a thread without
 * a cache) draw u directly.
 *
 * A sample: the stack (prof_stack.c), interned with the thread's tag, and
 * a record in the live set (prof_live.c); then the block is marked where
 * free looks: a slab's fast free bound is shut while it holds a sampled
 * block (ta_span_t.prof_sampled), a large or huge span gets a flag. Never
 * inside the profiler itself (a thread-local guard), before init, or while
 * a fork holds the profiler's locks. */
#include "internal.h"

#include <errno.h>
#include <unwind.h>

_Atomic uint32_t ta_prof_epoch = 1;
_Atomic uint64_t ta_prof_rate;       /* R while sampling */
static __thread uint32_t guard __attribute__((tls_model("initial-exec")));
static __thread uint64_t rng __attribute__((tls_model("initial-exec")));
static __thread char tag[64] __attribute__((tls_model("initial-exec")));

/* xorshift64*, seeded per thread from the kernel. A uniform in (0, 1]. */
static double uniform(void) {
  uint64_t x = rng;
  if (ta_unlikely(!x)) x = ta_prim_random() | 1;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  rng = x;
  return (double)((x * 0x2545F4914F6CDD1Dull) >> 11 | 1) * (1.0 / 9007199254740992.0);
}

static inline void set_clamped(ta_tcache_t *tc, size_t cls, bool on) {
  uint64_t bit = (uint64_t)1 << (cls % 64);
  if (on) tc->prof_clamped[cls / 64] |= bit;
  else tc->prof_clamped[cls / 64] &= ~bit;
}

/* Arms bin cls's countdown for the next sample at rate r (0: off). */
static void arm(ta_tcache_t *tc, size_t cls, uint64_t r) {
  ta_tbin_t *tb = &tc->bins[cls];
  double z = (double)(ta_class_size(cls) - TA_CANARY);
  if (!r) {
    tb->sample_skip = TA_PROF_CLAMP - 1;
    set_clamped(tc, cls, true);
    return;
  }
  if (z >= (double)r) {
    tb->sample_skip = 0; /* every one */
    set_clamped(tc, cls, false);
    return;
  }
  double k = -ta_prof_log(uniform()) * (double)r / z;
  if (k >= TA_PROF_CLAMP) {
    tb->sample_skip = TA_PROF_CLAMP - 1;
    set_clamped(tc, cls, true);
  } else {
    uint32_t n = (uint32_t)k;
    tb->sample_skip = (uint16_t)(n + (n < k || n == 0) - 1); /* ceil, at least 1, less the sampled one */
    set_clamped(tc, cls, false);
  }
}

static void rearm(ta_tcache_t *tc, uint32_t epoch) {
  uint64_t r = ta_relaxed_load(&ta_prof_rate);
  for (size_t c = 0; c < TA_TCLASSES; c++) arm(tc, c, r);
  tc->prof_epoch = epoch;
}

/* The weights of a sampled block of z bytes at rate r. */
static void weights(double z, uint64_t r, double *objects, double *bytes) {
  if (z >= (double)r) {
    *objects = 1;
    *bytes = z;
    return;
  }
  double p = 1 - ta_prof_exp(-z / (double)r);
  *objects = 1 / p;
  *bytes = z / p;
}

/* Records a sample of block b (span sp) of z bytes. Inlined into its two
 * callers, and the unwinder called from here: every frame between the
 * unwinder and the program costs it a lookup and a CFA program (a third of
 * a sample's time with 3 program frames, bench/churn). */
static inline __attribute__((always_inline)) void sample(void *b, ta_span_t *sp, double z, uint64_t r) {
  guard = 1;
  uint64_t pcs[2 * TA_PROF_MAX_FRAMES];
  int32_t lines[2 * TA_PROF_MAX_FRAMES];
  ta_prof_walk_t w;
  ta_prof_walk_init(&w, pcs, TA_PROF_MAX_FRAMES);
#if TA_PROF_HAVE_LIBGCC
  if (ta_prof_use_libgcc()) {
    if (!ta_prof_unwind_cfa(&w)) _Unwind_Backtrace((_Unwind_Trace_Fn)ta_prof_unwind_step, &w);
  } else
#endif
    ta_prof_unwind_fp(&w);
  size_t n = ta_prof_merge(&w, lines, 2 * TA_PROF_MAX_FRAMES);
  uint32_t trace = ta_prof_intern(pcs, lines, n, tag);
  bool fire = false;
  double objects, bytes;
  weights(z, r, &objects, &bytes);
  if (trace == UINT32_MAX) ta_relaxed_add(&ta_prof_dropped, 1);
  else if (ta_prof_live_add(b, trace, objects, bytes, &fire)) {
    if (sp->kind == TA_SPAN_SLAB) ta_arena_prof_mark(sp, b, 1);
    else ta_relaxed_store(&sp->prof_sampled, 1);
  }
  if (fire) ta_prof_dump_kick();
  guard = 0;
}

static inline ta_span_t *span_of(void *b) {
  ta_segment_t *s = ta_segment_of(b);
  if (ta_segmap_contains(s)) return ta_span_of(s, b);
  s = ta_huge_far_of(b); /* aligned above 2 MiB: its header is the segment before */
  return s ? &s->spans[0] : NULL;
}

TA_PROF_PATH void ta_prof_class_event(ta_tcache_t *tc, size_t cls, void *b) {
  if (ta_unlikely(tc->state != TA_TC_LIVE)) return;
  uint32_t epoch = ta_relaxed_load(&ta_prof_epoch);
  if (guard) { /* the profiler's own allocation: never a sample */
    rearm(tc, epoch);
    return;
  }
  if (tc->prof_epoch != epoch) { /* a change since the last draw: this allocation is the first of the new countdown */
    rearm(tc, epoch);
    if (!ta_tbin_skip_done(&tc->bins[cls])) return;
  }
  bool clamped = (tc->prof_clamped[cls / 64] >> (cls % 64)) & 1;
  uint64_t r = ta_relaxed_load(&ta_prof_rate);
  arm(tc, cls, r);
  if (clamped || !r || !b) return;
  sample(b, span_of(b), (double)(ta_class_size(cls) - TA_CANARY), r);
}

/* ta_prof_refill_count found the skip out (and took it), a new epoch (the
 * skip not taken: class_event draws again and counts this one), or no
 * live cache (a draw of its own). */
TA_PROF_PATH void ta_prof_refill_event(size_t cls, void *b) {
  ta_tcache_t *tc = ta_tls_tcache;
  if (tc->state != TA_TC_LIVE) {
    ta_prof_maybe(b, ta_class_size(cls) - TA_CANARY); /* no cache: a draw */
    return;
  }
  ta_prof_class_event(tc, cls, b);
}

TA_PROF_PATH void ta_prof_draw(void *p, size_t size) {
  uint64_t r = ta_relaxed_load(&ta_prof_rate);
  if (!r || guard || !p) return;
  double z = (double)size;
  if (z < (double)r && uniform() > 1 - ta_prof_exp(-z / (double)r)) return;
  ta_span_t *sp = span_of(p);
  if (sp) sample(p, sp, z, r);
}

bool ta_prof_forget(ta_span_t *sp, void *p) {
  if (sp->kind == TA_SPAN_SLAB ? !ta_slab_prof_maybe(sp, p) : !ta_relaxed_load(&sp->prof_sampled)) return false;
  if (!ta_prof_live_remove(p)) return false; /* another block of the slab */
  if (sp->kind == TA_SPAN_SLAB) ta_arena_prof_mark(sp, p, -1);
  else ta_relaxed_store(&sp->prof_sampled, 0);
  return true;
}

/* ---- the API ---- */
static ta_lock_t api_lock = PTHREAD_MUTEX_INITIALIZER; /* start and stop */

/* A new rate: every thread draws its countdowns again when it notices the
 * epoch; the caller at once. */
static void set_rate(uint64_t r) {
  ta_relaxed_store(&ta_prof_rate, r);
  if (r) ta_relaxed_store(&ta_prof_last_rate, r);
  uint32_t epoch = ta_relaxed_add(&ta_prof_epoch, 1) + 1;
  ta_tcache_t *tc = ta_tls_tcache;
  if (tc->state == TA_TC_LIVE) rearm(tc, epoch);
}

TRIMALLOC_API int trimalloc_prof_start(size_t interval) {
  if (interval > (size_t)TA_PROF_INTERVAL_MAX) return EINVAL;
  ta_process_init();
  ta_lock(&api_lock);
  if (interval) ta_option_set("prof_interval", (long long)interval);
  ta_option_set("prof", 1);
  uint32_t g = guard;
  guard = 1;
  ta_prof_warm(); /* the unwinder's first call may allocate: not inside a sample */
  guard = g;
  set_rate((uint64_t)ta_opt(TA_OPT_PROF_INTERVAL));
  ta_unlock(&api_lock);
  return 0;
}

TRIMALLOC_API int trimalloc_prof_stop(void) {
  ta_lock(&api_lock);
  ta_option_set("prof", 0);
  set_rate(0);
  ta_unlock(&api_lock);
  return 0;
}

TRIMALLOC_API size_t trimalloc_prof_interval(void) {
  return (size_t)ta_relaxed_load(&ta_prof_rate);
}

TRIMALLOC_API void trimalloc_prof_reset_peak(void) {
  ta_prof_live_reset_peak();
}

TRIMALLOC_API void trimalloc_prof_set_tag(const char *t) {
  size_t n = 0;
  for (; t && n < sizeof tag - 1 && t[n]; n++) tag[n] = t[n]; /* a loop: qemu-aarch64 with 64 KiB pages faulted in libc's memcpy into TLS */
  tag[n] = 0;
}

TRIMALLOC_API int trimalloc_prof_dump(const char *path, int kind, char *written, size_t size) {
  if (kind != TRIMALLOC_PROF_LIVE && kind != TRIMALLOC_PROF_PEAK) return EINVAL;
  ta_process_init();
  uint32_t g = guard;
  guard = 1; /* what the dump's own calls allocate is not sampled */
  int r = ta_prof_dump(path, kind, kind == TRIMALLOC_PROF_PEAK ? "peak" : "dump", written, size);
  guard = g;
  return r;
}

/* trimalloc_option_set of prof or prof_interval starts, stops or re-rates. */
void ta_prof_option_changed(const char *name) {
  if (!strcmp(name, "prof")) {
    if (ta_opt(TA_OPT_PROF)) trimalloc_prof_start(0);
    else trimalloc_prof_stop();
  } else if (!strcmp(name, "prof_interval") && ta_relaxed_load(&ta_prof_rate)) {
    trimalloc_prof_start(0);
  } else if (!strcmp(name, "prof_growth")) {
    ta_prof_live_growth_reset();
  }
}

/* At process start (init holds its lock; sampling begins after init). */
void ta_prof_init(void) {
  if (ta_opt(TA_OPT_PROF)) {
    guard = 1;
    ta_prof_warm();
    guard = 0;
    set_rate((uint64_t)ta_opt(TA_OPT_PROF_INTERVAL));
  }
}

/* Fork: the profiler's locks are taken before the allocator's (no path
 * holds an allocator lock while taking one of them) and released after. */
void ta_prof_fork_prepare(void) {
  ta_lock(&api_lock);
  ta_prof_dump_fork_prepare();
  ta_prof_stack_fork_prepare();
  ta_prof_cfa_fork_prepare();
  ta_prof_fde_fork_prepare();
  ta_prof_live_fork_prepare();
  ta_prof_meta_fork_prepare();
}
void ta_prof_fork_parent(void) {
  ta_prof_meta_fork_parent();
  ta_prof_live_fork_parent();
  ta_prof_fde_fork_parent();
  ta_prof_cfa_fork_parent();
  ta_prof_stack_fork_parent();
  ta_prof_dump_fork_parent();
  ta_unlock(&api_lock);
}
void ta_prof_fork_child(void) {
  ta_prof_meta_fork_parent();
  ta_prof_live_fork_parent();
  ta_prof_fde_fork_parent();
  ta_prof_cfa_fork_parent();
  ta_prof_stack_fork_parent();
  ta_prof_dump_fork_child();
  ta_unlock(&api_lock);
}
