/* Trimalloc.active?, .backend, .trim, .free_bytes, .rss, Native.trim_if_due:
 * which allocator answers, and trimming it. */
#include "trimalloc_ext.h"

#include <ruby/thread.h>

static VALUE m_active_p(VALUE self) {
  return ta_bind_backend() == TA_BACKEND_TRIMALLOC ? Qtrue : Qfalse;
}

static VALUE m_backend(VALUE self) {
  return ID2SYM(rb_intern(ta_bind_backend_name()));
}

static VALUE cstr_or_nil(const char *s) {
  return s ? rb_str_new_cstr(s) : Qnil;
}

/* The core's version when trimalloc is the allocator, else nil. */
static VALUE m_core_version(VALUE self) {
  return cstr_or_nil(ta_bind_core_version());
}

/* Path of the core this process runs on, else nil. */
static VALUE m_loaded_path(VALUE self) {
  return cstr_or_nil(ta_bind_loaded_path());
}

static VALUE m_rss(VALUE self) {
  return ULL2NUM(ta_bind_rss());
}

static VALUE m_free_bytes(VALUE self) {
  return ULL2NUM(ta_bind_free_bytes());
}

/* Trims run without the GVL: they touch no Ruby object, and glibc's
 * malloc_trim can take milliseconds on a large heap. */
static void *trim_nogvl(void *out) {
  *(uint64_t *)out = ta_bind_trim();
  return NULL;
}

static VALUE m_trim(VALUE self) {
  uint64_t released = 0;
  rb_thread_call_without_gvl(trim_nogvl, &released, NULL, NULL);
  return ULL2NUM(released);
}

/* Native.trim_if_due(min_interval, min_free) -> Integer or nil (nil:
 * skipped, too soon or too little free): Trimalloc.trim_if_due (native.rb)
 * checks the arguments and calls this. */
static VALUE m_trim_if_due(VALUE self, VALUE min_interval, VALUE min_free) {
  /* decided with the GVL (a clock read), trimmed without it */
  return ta_bind_due(NUM2DBL(min_interval), NUM2ULL(min_free), NULL) ? ta_rb_run_trim(NULL) : Qnil;
}

/* Trimalloc.advance_clock(seconds) (private, for tests): moves the clock of
 * the rate limit and of deferred trims forward. */
static VALUE m_advance_clock(VALUE self, VALUE seconds) {
  ta_bind_clock_advance(NUM2DBL(seconds));
  return Qnil;
}

/* Trimalloc.advance_cpu(seconds), Trimalloc.test_refault(fault_ns, free_bytes)
 * (private, for tests): the refault budget's CPU clock; the fault cost (0:
 * the measured one) and a pinned free-bytes figure (-1: the backend's). */
static VALUE m_advance_cpu(VALUE self, VALUE seconds) {
  ta_bind_cpu_advance(NUM2DBL(seconds));
  return Qnil;
}

static VALUE m_test_refault(VALUE self, VALUE fault_ns, VALUE free_bytes) {
  ta_bind_test_fault_ns(NUM2DBL(fault_ns));
  ta_bind_test_free_bytes((int64_t)NUM2LL(free_bytes));
  return Qnil;
}

#define SYM(s) ID2SYM(rb_intern(s))

/* Trimalloc.policy_stats -> process-wide counters of the trim policy. */
static VALUE m_policy_stats(VALUE self) {
  ta_bind_field_t f[TA_BIND_POLICY_NFIELDS];
  return ta_rb_fields_hash(f, ta_bind_policy_fields(f));
}

/* Trimalloc.free_source -> where free_bytes comes from: :dirty (the core's
 * counter), :resident (resident - allocated), :mallinfo2, :mallinfo, :unknown */
static VALUE m_free_source(VALUE self) {
  return SYM(ta_bind_free_source_name(ta_bind_free_source()));
}

/* Native.purger_state -> the core's background purger here, in words. */
static VALUE m_purger_state(VALUE self) {
  return rb_str_new_cstr(ta_bind_purger_state());
}

/* The test gate (private): see ta_bind_test_gate in binding.h. */
static VALUE m_test_gate(VALUE self, VALUE arm) {
  ta_bind_test_gate(RTEST(arm));
  return Qnil;
}

static VALUE m_test_gate_open(VALUE self) {
  ta_bind_test_gate_open();
  return Qnil;
}

static VALUE m_test_gate_state(VALUE self) {
  return INT2FIX(ta_bind_test_gate_state());
}

void ta_rb_init_backend(void) {
  VALUE m = ta_rb_mTrimalloc;
  rb_define_singleton_method(m, "active?", m_active_p, 0);
  rb_define_singleton_method(m, "backend", m_backend, 0);
  rb_define_singleton_method(m, "core_version", m_core_version, 0);
  rb_define_singleton_method(m, "loaded_path", m_loaded_path, 0);
  rb_define_singleton_method(m, "rss", m_rss, 0);
  rb_define_singleton_method(m, "free_bytes", m_free_bytes, 0);
  rb_define_singleton_method(m, "trim", m_trim, 0);
  rb_define_module_function(ta_rb_mNative, "trim_if_due", m_trim_if_due, 2);
  rb_define_singleton_method(m, "policy_stats", m_policy_stats, 0);
  rb_define_singleton_method(m, "free_source", m_free_source, 0);
  rb_define_module_function(ta_rb_mNative, "purger_state", m_purger_state, 0);
  VALUE s = rb_singleton_class(m);
  rb_define_private_method(s, "advance_clock", m_advance_clock, 1);
  rb_define_private_method(s, "advance_cpu", m_advance_cpu, 1);
  rb_define_private_method(s, "test_refault", m_test_refault, 2);
  rb_define_private_method(s, "test_gate", m_test_gate, 1);
  rb_define_private_method(s, "test_gate_open", m_test_gate_open, 0);
  rb_define_private_method(s, "test_gate_state", m_test_gate_state, 0);
}
