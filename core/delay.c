/* Purge hysteresis: return what stays idle, keep what is about to be reused.
 * Memory that stays idle `delay_ms` is returned; taking returned memory back
 * within twice the delay doubles it, up to the cap; four calm delays in a row
 * halve it again.
 *
 * The cap: an arena's delay grows to 100x the option, at most 10 s (unless
 * the option itself is larger). An arena whose activity stops returns
 * everything free within min(delay, TA_IDLE_MS) anyway (purge.c), so the
 * long cap only holds memory in an arena that is in use, and there it is what
 * a refault costs that decides: on this project's VM a page taken back costs
 * 25-35 us, and a Celery worker of back-to-back 100 ms tasks of 20-50 MiB,
 * whose delay stopped at v2's 1 s cap, refaulted what the purger gave back
 * between a small task and a big one. Session 23
 * (bench/results-2026-12-06-purge-cap.txt): Celery, 150 tasks, 100-118k
 * faults against 116-184k with the 1 s cap (glibc 49-51k), mean RSS +2-5%,
 * idle the same; Rails under Puma, 258-261k against 294-318k, end RSS the
 * same. The huge-mapping cache has no idle rule, so its delay keeps v2's
 * cap: 10x the option, at most 1 s. */
#include "internal.h"

#define TA_DELAY_CAP_MS 10000

static uint64_t delay_cap(uint64_t base, bool arena) {
  uint64_t cap = base * (arena ? 100 : 10), most = arena ? TA_DELAY_CAP_MS : 1000;
  if (cap > most) cap = base > most ? base : most;
  return cap;
}

uint64_t ta_delay_get(ta_delay_t *d, uint64_t now, bool arena) {
  uint64_t base = (uint64_t)ta_opt(TA_OPT_PURGE_DELAY_MS);
  if (d->delay_ms < base || d->delay_ms > delay_cap(base, arena)) d->delay_ms = base;
  uint64_t r = ta_relaxed_load(&d->refault_ms);
  if (d->released_ms && r >= d->released_ms && r - d->released_ms <= 2 * d->delay_ms) {
    uint64_t next = d->delay_ms * 2, cap = delay_cap(base, arena);
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
