/* A GC hook's policy and counters (Ruby's Trimalloc::GC): what to do when a
 * collection ends and in the job it schedules. The interpreter's side (the
 * tracepoint, the postponed job, releasing the GVL) stays in the binding.
 * See binding.h ("bind_gc_hook.c"). */
#include "bind_internal.h"

void ta_bind_gc_hook_init(ta_bind_gc_hook_t *h) {
  *h = (ta_bind_gc_hook_t){0};
  h->major_only = 1;
  h->min_interval = ta_bind_defaults_for("gc")->min_interval;
}

int ta_bind_gc_hook_collected(ta_bind_gc_hook_t *h, int major, int forced) {
  h->sweeps++;
  if (h->major_only && !major) return 0;
  if (forced) h->forced = 1;
  return 1;
}

void ta_bind_gc_hook_job(ta_bind_gc_hook_t *h, void (*unlocked)(ta_bind_job_t *job)) {
  if (!h->enabled) return;
  ta_bind_job_t j = {.kind = TA_JOB_RUN_AFTER, .released = -1};
  /* GC.start's trim: not rate-limited, no free-bytes guard, and it waits
   * for a trim already running (which may have started before this
   * collection freed its memory) for at most TA_BIND_GC_FORCED_WAIT_MS */
  int forced = h->forced;
  j.wait_ms = forced ? TA_BIND_GC_FORCED_WAIT_MS : 0;
  h->forced = 0;
  ta_bind_skip_t why = TA_SKIP_NONE;
  if (ta_bind_due(forced ? 0.0 : h->min_interval, forced ? 0 : h->min_free, &why)) {
    unlocked(&j);
    if (j.ran && j.released < 0) h->coalesced++;
    if (!j.ran && forced) { /* the binding could not release its lock now */
      ta_bind_trim_soon();
      h->handed++;
    }
  }
  if (j.released < 0) {
    h->skipped++;
    if (why == TA_SKIP_FREE) h->skipped_free++;
  } else {
    h->trims++;
    h->trimmed_bytes += (uint64_t)j.released;
  }
}

size_t ta_bind_gc_hook_fields(const ta_bind_gc_hook_t *h, ta_bind_field_t *out) {
  size_t n = 0;
  out[n++] = (ta_bind_field_t){"enabled", 'b', 1, {.u = (uint64_t)h->enabled}};
  out[n++] = (ta_bind_field_t){"major_only", 'b', 1, {.u = (uint64_t)h->major_only}};
  out[n++] = (ta_bind_field_t){"min_interval", 'd', 1, {.d = h->min_interval}};
  out[n++] = (ta_bind_field_t){"min_free", 'u', 1, {.u = h->min_free}};
  out[n++] = (ta_bind_field_t){"events", 'u', 1, {.u = h->sweeps}};
  out[n++] = (ta_bind_field_t){"sweeps", 'u', 1, {.u = h->sweeps}};
  out[n++] = (ta_bind_field_t){"scheduled", 'u', 1, {.u = h->scheduled}};
  out[n++] = (ta_bind_field_t){"trims", 'u', 1, {.u = h->trims}};
  out[n++] = (ta_bind_field_t){"skipped", 'u', 1, {.u = h->skipped}};
  out[n++] = (ta_bind_field_t){"skipped_free", 'u', 1, {.u = h->skipped_free}};
  out[n++] = (ta_bind_field_t){"coalesced", 'u', 1, {.u = h->coalesced}};
  out[n++] = (ta_bind_field_t){"handed", 'u', 1, {.u = h->handed}};
  out[n++] = (ta_bind_field_t){"trimmed_bytes", 'u', 1, {.u = h->trimmed_bytes}};
  return n;
}
