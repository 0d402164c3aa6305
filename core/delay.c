/* Purge hysteresis: return what stays idle, keep what is about to be reused.
 * Memory that stays idle `delay_ms` is returned; taking returned memory back
 * within twice the delay doubles it (up to 10x the option, at most 1 s unless
 * the option itself is larger); four calm delays in a row halve it again. */
#include "internal.h"

static uint64_t delay_cap(uint64_t base) {
  uint64_t cap = base * 10;
  if (cap > 1000) cap = base > 1000 ? base : 1000;
  return cap;
}

uint64_t ta_delay_get(ta_delay_t *d, uint64_t now) {
  uint64_t base = (uint64_t)ta_opt(TA_OPT_PURGE_DELAY_MS);
  if (d->delay_ms < base || d->delay_ms > delay_cap(base)) d->delay_ms = base;
  uint64_t r = ta_relaxed_load(&d->refault_ms);
  if (d->released_ms && r >= d->released_ms && r - d->released_ms <= 2 * d->delay_ms) {
    uint64_t next = d->delay_ms * 2, cap = delay_cap(base);
    d->delay_ms = next > cap ? cap : next;
    d->grown_ms = now;
    d->released_ms = 0; /* one release, one lengthening */
  } else if (d->delay_ms > base && now - d->grown_ms > 4 * d->delay_ms) {
    d->delay_ms = d->delay_ms / 2 > base ? d->delay_ms / 2 : base;
    d->grown_ms = now;
  }
  return d->delay_ms;
}

void ta_delay_released(ta_delay_t *d, uint64_t now) {
  d->released_ms = now;
}

void ta_delay_refault(ta_delay_t *d, uint64_t now) {
  ta_relaxed_store(&d->refault_ms, now ? now : ta_prim_clock_ms());
}
