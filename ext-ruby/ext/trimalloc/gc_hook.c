/* Trimalloc::GC: trim after the garbage collector has swept.
 *
 * Objects are freed in the sweep, not at the end of marking, and Ruby sweeps
 * lazily: RUBY_INTERNAL_EVENT_GC_END_SWEEP fires once the last page of a GC
 * cycle has been swept (possibly long after GC_END_MARK, from inside an
 * allocation). Nothing may allocate or call Ruby there, so the hook only
 * schedules a postponed job (rb_postponed_job_trigger on a preregistered job
 * where Ruby has it, 3.3+; rb_postponed_job_register_one before). The job
 * runs at the next safe point, decides with the GVL held (a clock read: the
 * shared policy, through core/bind/bind_gc_hook.c, which also keeps the
 * settings and counters) and, when a trim is due, trims with the GVL
 * released (rb_thread_call_without_gvl2), so no other Ruby thread waits for
 * it. The job allocates no Ruby object, so the hook cannot cause a GC. All
 * of the hook's state is touched with the GVL held.
 *
 * On the trimalloc backend the core's purger returns free pages by itself
 * (within about a second, longer for pages that keep being reused): a trim
 * after a GC that freed little returns what Ruby's next allocations fault
 * straight back in. There the hook trims only when at least min_free bytes
 * are free but resident (core/bind's :gc row; GC.start's trim excepted); on
 * glibc, which has no purger, min_free is 0 (native.rb picks the default).
 *
 * Nor does it change how often Ruby collects (issue 18): on a six-thread
 * churn nearly every major GC is :nofree, and their count follows the heap
 * size Ruby reaches in its first GCs (GC.stat heap_allocated_pages: about
 * 101 pages gives twice the major GCs of about 110), with or without the
 * hook, on any allocator; a trim changes none of GC.stat's heap or malloc
 * counters. With the heap fixed (RUBY_GC_HEAP_INIT_SLOTS) the counts are the
 * same (gc_hook_test, bench/ruby_gc_churn.rb). */
#include "trimalloc_ext.h"

#include <ruby/debug.h>
#include <ruby/thread.h>

#if defined(HAVE_RB_POSTPONED_JOB_PREREGISTER) && defined(HAVE_RB_POSTPONED_JOB_TRIGGER)
#define TA_PREREGISTERED_JOB 1
static rb_postponed_job_handle_t job_handle;
#else
#define TA_PREREGISTERED_JOB 0
#endif

static ta_bind_gc_hook_t hook; /* the policy and counters (core/bind/bind_gc_hook.c) */
static VALUE tracepoint;
static int test_interrupt; /* tests: the next job finds an interrupt pending */
static VALUE sym_major_by, sym_force, sym_gc_by, sym_method;

/* The trim without the GVL. _gvl2 checks no interrupt after the call (a
 * postponed job must not raise); with one pending it does not run the trim
 * (the job's `ran` stays 0): the next GC tries, but GC.start's trim (there
 * may be no next GC before an idle time) goes to the policy's background
 * thread, which trims at once. On issue 18's churn the final GC.start's job
 * found an interrupt pending in 3 runs of 12 (RSS after it 68-77 MiB, not 16,
 * until trimalloc's own purge). */
static void run_unlocked(ta_bind_job_t *j) {
  if (test_interrupt) test_interrupt = 0; /* as when _gvl2 finds an interrupt pending */
  else rb_thread_call_without_gvl2(ta_bind_job_run, j, ta_bind_job_stop, j);
}

static void trim_job(void *unused) {
  (void)unused;
  ta_bind_gc_hook_job(&hook, run_unlocked);
}

/* Inside the GC: no allocation, no Ruby calls. rb_gc_latest_gc_info with a
 * symbol only reads the last cycle's flags (primed at init, see below); its
 * :major_by is nil for a minor GC. GC.start asks for a full collection at a
 * moment the program chose (out of band, between jobs): its trim is not
 * rate-limited. Its :major_by is :force unless Ruby had a major GC pending
 * anyway (then :nofree, :oldgen, ...: on a churn that keeps the heap short,
 * most of the time); :gc_by is :method either way. */
static void on_sweep_end(VALUE tpval, void *unused) {
  (void)tpval;
  (void)unused;
  VALUE by = rb_gc_latest_gc_info(sym_major_by);
  int forced = by == sym_force || (!NIL_P(by) && rb_gc_latest_gc_info(sym_gc_by) == sym_method);
  if (!ta_bind_gc_hook_collected(&hook, !NIL_P(by), forced)) return;
#if TA_PREREGISTERED_JOB
  rb_postponed_job_trigger(job_handle); /* a job already pending runs once */
  hook.scheduled++;
#else
  if (rb_postponed_job_register_one(0, trim_job, NULL)) hook.scheduled++;
#endif
}

/* Native.gc_enable(major_only, min_interval, min_free) -> true:
 * Trimalloc::GC.enable (native.rb) checks the arguments, picks min_free's
 * default by backend, and calls this. */
static VALUE hook_enable(VALUE self, VALUE major_only_v, VALUE min_interval_v, VALUE min_free_v) {
  int major_only = RTEST(major_only_v);
  double min_interval = NUM2DBL(min_interval_v);
  uint64_t min_free = NUM2ULL(min_free_v);
  hook.major_only = major_only;
  hook.min_interval = min_interval;
  hook.min_free = min_free;
  if (!tracepoint) {
    tracepoint = rb_tracepoint_new(0, RUBY_INTERNAL_EVENT_GC_END_SWEEP, on_sweep_end, NULL);
    rb_gc_register_mark_object(tracepoint);
  }
  if (!hook.enabled) rb_tracepoint_enable(tracepoint);
  hook.enabled = 1;
  return Qtrue;
}

/* Trimalloc::GC.disable -> whether it was enabled */
static VALUE hook_disable(VALUE self) {
  int was = hook.enabled;
  if (was) rb_tracepoint_disable(tracepoint);
  hook.enabled = 0;
  return was ? Qtrue : Qfalse;
}

static VALUE hook_enabled_p(VALUE self) {
  return hook.enabled ? Qtrue : Qfalse;
}

/* Trimalloc::GC.test_interrupt_next_job (private, tests): the next job's
 * trim finds an interrupt pending, as a time slice ending can make it. */
static VALUE hook_test_interrupt(VALUE self) {
  test_interrupt = 1;
  return Qnil;
}

#define SYM(s) ID2SYM(rb_intern(s))

/* Trimalloc::GC.stats -> the hook's settings and counters */
static VALUE hook_stats(VALUE self) {
  ta_bind_field_t f[TA_BIND_GC_HOOK_NFIELDS];
  return ta_rb_fields_hash(f, ta_bind_gc_hook_fields(&hook, f));
}

void ta_rb_init_gc_hook(void) {
  VALUE m = rb_define_module_under(ta_rb_mTrimalloc, "GC");
  ta_bind_gc_hook_init(&hook);
  sym_major_by = SYM("major_by");
  sym_force = SYM("force");
  sym_gc_by = SYM("gc_by");
  sym_method = SYM("method");
  /* Prime the symbols rb_gc_latest_gc_info interns on its first call, so the
   * call inside the GC hook never allocates. */
  rb_gc_latest_gc_info(sym_major_by);
  rb_gc_latest_gc_info(sym_gc_by);
#if TA_PREREGISTERED_JOB
  job_handle = rb_postponed_job_preregister(0, trim_job, NULL);
#endif
  rb_define_module_function(ta_rb_mNative, "gc_enable", hook_enable, 3);
  rb_define_singleton_method(m, "disable", hook_disable, 0);
  rb_define_singleton_method(m, "enabled?", hook_enabled_p, 0);
  rb_define_singleton_method(m, "stats", hook_stats, 0);
  rb_define_private_method(rb_singleton_class(m), "test_interrupt_next_job", hook_test_interrupt, 0);
}
