/* What both languages tell their users, written once: each hook's default
 * policy, the names of the counters the bindings report, where the
 * free-bytes figure comes from, the preload's result codes, and the
 * background purger's state in words. Each extension exposes these at run
 * time (Python: trimalloc._trimalloc.DEFAULTS, PRELOAD, TRIMMER_COUNTS and
 * purger_state(); Ruby: the same names under Trimalloc::Native), and the
 * Python and Ruby code reads them there; the tests of both suites read them
 * there too, and test/python/test_readme_defaults.py holds the README's
 * quoted defaults to this table. See binding.h for the contract. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_DEFAULT */
#endif
#include "bind_internal.h"

#include <dlfcn.h>
#include <stdatomic.h>
#include <string.h>

/* min_interval 1 s everywhere: a trim costs a walk over the free pages, and a
 * server that trims after every request of a burst gains nothing over one
 * trim at its end. */
/* refault_share: the refault budget (binding.h) is the job hooks' default
 * (0.1: the refaults a trim causes may cost at most a tenth of the worker's
 * CPU), and off (0) elsewhere. A job frees what the next job allocates
 * again, and a page given back costs a fault when it is taken back: 25-35 us
 * on this project's VM, where a one-second clock trimmed after every task of
 * a loaded machine (0.92 a task, 5.5x glibc's CPU); the budget measures the
 * fault's price in each process, so where faults are cheap it trims after
 * every job as the clock did. Celery on Redis, 300 tasks, and on RabbitMQ,
 * 3000 (bench/results-2026-12-06-job-share.txt): faults 0.54x and 0.59x the
 * clock's, CPU 0.86x, mean RSS +2% and +8%, the same idle RSS. */
const ta_bind_defaults_t ta_bind_defaults[] = {
    /* Trimmer.new, trim_if_due, trimalloc.trimming: after every event */
    {"trimmer", 0, 0, 1.0, 0},
    /* GC hooks (Trimalloc::GC, trimalloc.gc): after every (major) collection.
     * min_free is Trimalloc::GC's on the trimalloc backend, whose purger
     * returns free pages by itself: there a trim of less only makes Ruby's
     * next allocations fault back in what it returned. On glibc (no purger)
     * Trimalloc::GC uses 0; trimalloc.gc (Python) always does. */
    {"gc", 0, (int64_t)16 << 20, 1.0, 0},
    /* jobs (Sidekiq, Celery): after every job (a job is long next to a trim),
     * within the refault budget; a trim it holds back runs when the worker
     * goes idle */
    {"job", 0, 0, 1.0, 0.1},
    /* requests (Rack, WSGI, gunicorn, aiohttp, ASGI): every 100 requests, or
     * sooner once 64 MiB are free; a trim after each short request would
     * return pages the next one faults back in */
    {"request", 100, (int64_t)64 << 20, 1.0, 0},
    /* Puma's out-of-band hook and its watch: 16 MiB, not 0 as for jobs: the
     * watch trims a busy worker, whose next requests fault back in what a
     * trim returns. In a Rails app (2 workers x 5 threads, 4000 requests,
     * bench/rails_puma.rb) a trim every second made 424,000 minor faults in
     * the workers, 16 MiB 330,000, and the workers ended no higher (245-251
     * MiB against 232-239). */
    {"out_of_band", 0, (int64_t)16 << 20, 1.0, 0},
    {NULL, 0, 0, 0, 0},
};

const ta_bind_defaults_t *ta_bind_defaults_for(const char *hook) {
  for (const ta_bind_defaults_t *d = ta_bind_defaults; d->hook; d++)
    if (strcmp(d->hook, hook) == 0) return d;
  return NULL;
}

/* every 0 and min_free -1 mean off: None / nil in both languages */
size_t ta_bind_defaults_fields(const ta_bind_defaults_t *d, ta_bind_field_t *out) {
  out[0] = (ta_bind_field_t){"every", d->every ? 'u' : 'n', 1, {.u = d->every}};
  out[1] = (ta_bind_field_t){"min_free", d->min_free >= 0 ? 'i' : 'n', 1, {.i = d->min_free}};
  out[2] = (ta_bind_field_t){"min_interval", 'd', 1, {.d = d->min_interval}};
  out[3] = (ta_bind_field_t){"refault_share", 'd', 1, {.d = d->refault_share}};
  return TA_BIND_DEFAULTS_NFIELDS;
}

size_t ta_bind_trimmer_settings(const ta_bind_trimmer_t *t, ta_bind_field_t *out) {
  ta_bind_defaults_t d = {NULL, t->every, t->min_free, t->min_interval, t->refault_share};
  return ta_bind_defaults_fields(&d, out);
}

const char *const ta_bind_trimmer_counts[TA_BIND_TRIMMER_NFIELDS] = {
    "events", "trims", "skipped", "coalesced", "trimmed_bytes", "refault_skips",
};

size_t ta_bind_trimmer_fields(ta_bind_trimmer_t *t, ta_bind_field_t *out) {
  /* in ta_bind_trimmer_counts' order */
  _Atomic uint64_t *counts[TA_BIND_TRIMMER_NFIELDS] = {
      &t->events, &t->trims, &t->skipped, &t->coalesced, &t->trimmed_bytes, &t->refault_skips,
  };
  for (size_t i = 0; i < TA_BIND_TRIMMER_NFIELDS; i++)
    out[i] = (ta_bind_field_t){ta_bind_trimmer_counts[i], 'u', 1, {.u = atomic_load(counts[i])}};
  return TA_BIND_TRIMMER_NFIELDS;
}

size_t ta_bind_policy_fields(ta_bind_field_t *out) {
  ta_bind_policy_stats_t p;
  ta_bind_policy_stats(&p);
  out[0] = (ta_bind_field_t){"pending", 'b', 1, {.u = (uint64_t)p.pending}};
  out[1] = (ta_bind_field_t){"busy", 'b', 1, {.u = (uint64_t)p.busy}};
  out[2] = (ta_bind_field_t){"deferred", 'u', 1, {.u = p.deferred}};
  out[3] = (ta_bind_field_t){"coalesced", 'u', 1, {.u = p.coalesced}};
  out[4] = (ta_bind_field_t){"free_reads", 'u', 1, {.u = p.free_reads}};
  out[5] = (ta_bind_field_t){"refault_skips", 'u', 1, {.u = p.refault_skips}};
  out[6] = (ta_bind_field_t){"idle_trims", 'u', 1, {.u = p.idle_trims}};
  out[7] = (ta_bind_field_t){"fault_ns", 'd', 1, {.d = p.fault_ns}};
  return TA_BIND_POLICY_NFIELDS;
}

const char *ta_bind_free_source_name(int source) {
  static const char *const names[] = {"unknown", "dirty", "resident", "mallinfo2", "mallinfo"};
  return source >= 0 && source < (int)(sizeof names / sizeof *names) ? names[source] : names[0];
}

const char *ta_bind_preload_name(int code) {
  switch (code) {
  case TA_PRELOAD_FAILED: return "failed";
  case TA_PRELOAD_ACTIVE: return "active";
  case TA_PRELOAD_GUARD: return "guard";
  case TA_PRELOAD_FORKED: return "forked";
  case TA_PRELOAD_REWRITTEN: return "rewritten";
  case TA_PRELOAD_NOT_A_FILE: return "not_a_file";
  case TA_PRELOAD_NO_LIBRARY: return "no_library";
  default: return NULL;
  }
}

size_t ta_bind_preload_fields(ta_bind_field_t *out) {
  size_t n = 0;
  for (int code = TA_PRELOAD_FAILED; n < TA_BIND_PRELOAD_NCODES && ta_bind_preload_name(code); code++)
    out[n++] = (ta_bind_field_t){ta_bind_preload_name(code), 'i', 1, {.i = code}};
  return n;
}

size_t ta_bind_prof_row_fields(const ta_bind_prof_row_t *r, ta_bind_field_t *out) {
  const int64_t v[TA_BIND_PROF_ROW_NFIELDS] = {r->inuse_space, r->inuse_objects, r->alloc_space, r->alloc_objects};
  for (size_t i = 0; i < TA_BIND_PROF_ROW_NFIELDS; i++)
    out[i] = (ta_bind_field_t){ta_bind_prof_types[i], 'i', 1, {.i = v[i]}};
  return TA_BIND_PROF_ROW_NFIELDS;
}

size_t ta_bind_prof_kind_fields(ta_bind_field_t *out) {
  out[0] = (ta_bind_field_t){"live", 'i', 1, {.i = TRIMALLOC_PROF_LIVE}};
  out[1] = (ta_bind_field_t){"peak", 'i', 1, {.i = TRIMALLOC_PROF_PEAK}};
  return TA_BIND_PROF_NKINDS;
}
