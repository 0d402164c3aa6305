/* Trimalloc.trim, Native.trim_if_due, the policy's counters and the tests'
 * clocks, and core/bind's argument-free calls (Trimalloc.active?, .backend,
 * .free_bytes, .rss, .forked_child?, Native.purger_state, Profile.interval,
 * ...: TA_BIND_CALLS): which allocator answers, and trimming it. */
#include "trimalloc_ext.h"

#include <ruby/thread.h>

static VALUE cstr_or_nil(const char *s) {
  return s ? rb_str_new_cstr(s) : Qnil;
}

/* core/bind's argument-free calls (TA_BIND_CALLS, binding.h): a wrapper each,
 * converting the result by its kind, defined where `where` says. */
#define TA_RB_bool(e) ((e) ? Qtrue : Qfalse)
#define TA_RB_name(e) ID2SYM(rb_intern(e))
#define TA_RB_str(e) cstr_or_nil(e)
#define TA_RB_path(e) cstr_or_nil(e)
#define TA_RB_u64(e) ULL2NUM(e)
#define TA_RB_int(e) INT2NUM(e)
#define TA_RB_none(e) ((e), Qnil)
#define TA_RB_CALL(name, kind, expr, where, doc) \
  static VALUE call_##name(VALUE self) {         \
    (void)self;                                  \
    return TA_RB_##kind(expr);                   \
  }
TA_BIND_CALLS(TA_RB_CALL)
#define TA_RB_NAME_bool(name) #name "?" /* a predicate */
#define TA_RB_NAME_name(name) #name
#define TA_RB_NAME_str(name) #name
#define TA_RB_NAME_path(name) #name
#define TA_RB_NAME_u64(name) #name
#define TA_RB_NAME_int(name) #name
#define TA_RB_NAME_none(name) #name
#define TA_RB_DEF_api(name, fn) rb_define_singleton_method(ta_rb_mTrimalloc, name, fn, 0)
#define TA_RB_DEF_internal(name, fn) rb_define_module_function(ta_rb_mNative, name, fn, 0)
#define TA_RB_DEF_test(name, fn) rb_define_private_method(rb_singleton_class(ta_rb_mTrimalloc), name, fn, 0)
#define TA_RB_DEF_profile(name, fn) \
  rb_define_singleton_method(rb_define_module_under(ta_rb_mTrimalloc, "Profile"), name, fn, 0)
#define TA_RB_DEF(name, kind, expr, where, doc) TA_RB_DEF_##where(TA_RB_NAME_##kind(name), call_##name);

/* Trims run without the GVL: they touch no Ruby object, and glibc's
 * malloc_trim can take milliseconds on a large heap. */
static VALUE m_trim(VALUE self) {
  ta_bind_job_t j = {.kind = TA_JOB_TRIM};
  rb_thread_call_without_gvl(ta_bind_job_run, &j, NULL, NULL);
  return ULL2NUM((uint64_t)j.released);
}

/* Native.trim_if_due(min_interval, min_free) -> Integer or nil (nil:
 * skipped, too soon or too little free): Trimalloc.trim_if_due (native.rb)
 * checks the arguments and calls this. */
static VALUE m_trim_if_due(VALUE self, VALUE min_interval, VALUE min_free) {
  /* decided with the GVL (a clock read), trimmed without it */
  return ta_bind_due(NUM2DBL(min_interval), NUM2ULL(min_free), NULL) ? ta_rb_run_trim(NULL) : Qnil;
}

/* The tests' hooks that take numbers (TA_BIND_TEST_CALLS): private. */
static double number(VALUE v) {
  return v == Qtrue ? 1 : v == Qfalse || NIL_P(v) ? 0 : NUM2DBL(v);
}

#define TA_RB_TEST(name, n, expr, doc)                          \
  static VALUE test_##name(int argc, VALUE *argv, VALUE self) { \
    double a[TA_BIND_TEST_MAXARGS];                             \
    rb_check_arity(argc, n, n);                                 \
    for (int i = 0; i < n; i++) a[i] = number(argv[i]);         \
    expr;                                                       \
    return Qnil;                                                \
  }
TA_BIND_TEST_CALLS(TA_RB_TEST)
#define TA_RB_TEST_DEF(name, n, expr, doc) rb_define_private_method(rb_singleton_class(m), #name, test_##name, -1);

/* Trimalloc.policy_stats -> process-wide counters of the trim policy. */
static VALUE m_policy_stats(VALUE self) {
  ta_bind_field_t f[TA_BIND_POLICY_NFIELDS];
  return ta_rb_fields_hash(f, ta_bind_policy_fields(f));
}

void ta_rb_init_backend(void) {
  VALUE m = ta_rb_mTrimalloc;
  TA_BIND_CALLS(TA_RB_DEF)
  rb_define_singleton_method(m, "trim", m_trim, 0);
  rb_define_module_function(ta_rb_mNative, "trim_if_due", m_trim_if_due, 2);
  rb_define_singleton_method(m, "policy_stats", m_policy_stats, 0);
  TA_BIND_TEST_CALLS(TA_RB_TEST_DEF)
}
