/* The trimmer: one hook's policy (every N events, min_free, the refault
 * budget) over the process-wide one of bind_policy.c. See binding.h. */
#include <errno.h>
#include <math.h>
#include <stdatomic.h>

#include "bind_internal.h"

int ta_bind_trimmer_init(ta_bind_trimmer_t *t, uint64_t every, int64_t min_free, double min_interval) {
  if (every == 0 && min_free < 0) return EINVAL;
  if (!(min_interval >= 0) || isinf(min_interval)) return EINVAL;
  t->every = every;
  t->min_free = min_free;
  t->min_interval = min_interval;
  t->refault_share = 0;
  atomic_init(&t->refault_skips, 0);
  atomic_init(&t->events, 0);
  atomic_init(&t->since, 0);
  atomic_init(&t->trims, 0);
  atomic_init(&t->trimmed_bytes, 0);
  atomic_init(&t->skipped, 0);
  atomic_init(&t->coalesced, 0);
  return 0;
}

int ta_bind_trimmer_set_share(ta_bind_trimmer_t *t, double refault_share) {
  if (!(refault_share >= 0) || isinf(refault_share)) return EINVAL;
  t->refault_share = refault_share;
  return 0;
}

int ta_bind_trimmer_decide(ta_bind_trimmer_t *t, ta_bind_skip_t *why) {
  ta_bind_skip_t w;
  if (!why) why = &w;
  atomic_fetch_add_explicit(&t->events, 1, memory_order_relaxed);
  if (t->refault_share > 0) ta_bind_policy_event();
  uint64_t since = atomic_fetch_add_explicit(&t->since, 1, memory_order_relaxed) + 1;
  int by_count = t->every > 0 && since >= t->every;
  int due;
  if (!by_count && t->min_free < 0) {
    *why = TA_SKIP_NOT_DUE;
    due = 0;
  } else {
    /* a count-triggered trim needs no free-bytes guard; one skipped by the
     * rate limit is tried again at the next event */
    due = ta_bind_policy_due(t->min_interval, by_count ? -1 : t->min_free, t->refault_share, why);
  }
  if (!due) atomic_fetch_add_explicit(&t->skipped, 1, memory_order_relaxed);
  if (*why == TA_SKIP_REFAULT) atomic_fetch_add_explicit(&t->refault_skips, 1, memory_order_relaxed);
  return due;
}

int64_t ta_bind_trimmer_run(ta_bind_trimmer_t *t, ta_bind_skip_t *why) {
  ta_bind_skip_t w;
  if (!why) why = &w;
  int64_t released = ta_bind_run_trim(why);
  if (released >= 0) {
    atomic_store_explicit(&t->since, 0, memory_order_relaxed);
    atomic_fetch_add_explicit(&t->trims, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&t->trimmed_bytes, (uint64_t)released, memory_order_relaxed);
  } else {
    atomic_fetch_add_explicit(&t->skipped, 1, memory_order_relaxed);
    atomic_fetch_add_explicit(&t->coalesced, 1, memory_order_relaxed);
  }
  return released;
}

int64_t ta_bind_trimmer_event(ta_bind_trimmer_t *t, ta_bind_skip_t *why) {
  ta_bind_skip_t w;
  if (!why) why = &w;
  return ta_bind_trimmer_decide(t, why) ? ta_bind_trimmer_run(t, why) : -1;
}
