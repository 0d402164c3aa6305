/* The Trimalloc module, its Error class, Trimalloc::Native and the
 * conversions every file of the extension uses (shared.h). Arguments are
 * checked in Ruby (native.rb): the C only converts them. */
#include <string.h>

#include <ruby/thread.h>

#include "shared.h"

VALUE ta_rb_mTrimalloc;
VALUE ta_rb_mNative;
VALUE ta_rb_eError;

void ta_rb_raise_errno(int err, VALUE what) {
  VALUE msg = rb_sprintf("%" PRIsVALUE ": %s", what, strerror(err));
  VALUE exc = rb_exc_new_str(ta_rb_eError, msg);
  rb_ivar_set(exc, rb_intern("@errno"), INT2NUM(err));
  rb_exc_raise(exc);
}

VALUE ta_rb_fields_hash(const ta_bind_field_t *f, size_t n) {
  VALUE h = rb_hash_new();
  for (size_t i = 0; i < n; i++) {
    if (!f[i].present) continue; /* not measured by this backend: left out */
    VALUE v = f[i].type == 'd'   ? DBL2NUM(f[i].v.d)
              : f[i].type == 'b' ? (f[i].v.u ? Qtrue : Qfalse)
              : f[i].type == 'i' ? LL2NUM(f[i].v.i)
              : f[i].type == 'n' ? Qnil
                                 : ULL2NUM(f[i].v.u);
    rb_hash_aset(h, ID2SYM(rb_intern(f[i].name)), v);
  }
  return h;
}

VALUE ta_rb_run_trim(ta_bind_trimmer_t *t) {
  ta_bind_job_t j = {.kind = TA_JOB_RUN, .trimmer = t, .released = -1};
  rb_thread_call_without_gvl(ta_bind_job_run, &j, NULL, NULL);
  return j.released < 0 ? Qnil : LL2NUM(j.released);
}

char **ta_rb_argv(VALUE argv, VALUE *held, VALUE *buf) {
  Check_Type(argv, T_ARRAY);
  long argc = RARRAY_LEN(argv);
  if (argc == 0) rb_raise(rb_eArgError, "no command given (an empty Array)");
  *held = rb_ary_new_capa(argc);
  *buf = rb_str_new(NULL, (long)((size_t)(argc + 1) * sizeof(char *))); /* not alloca: it outlives this call */
  char **cargv = (char **)RSTRING_PTR(*buf);
  for (long i = 0; i < argc; i++) {
    VALUE s = rb_ary_entry(argv, i);
    StringValue(s);
    s = rb_str_new_frozen(s);
    rb_ary_push(*held, s);
    cargv[i] = (char *)StringValueCStr(s);
  }
  cargv[argc] = NULL;
  return cargv;
}

#define SYM(s) ID2SYM(rb_intern(s))

/* Native::DEFAULTS: {hook: {every:, min_free:, min_interval:, refault_share:}},
 * frozen (nil: off). */
static VALUE make_defaults(void) {
  VALUE all = rb_hash_new();
  ta_bind_field_t f[TA_BIND_DEFAULTS_NFIELDS];
  for (const ta_bind_defaults_t *d = ta_bind_defaults; d->hook; d++)
    rb_hash_aset(all, SYM(d->hook), rb_obj_freeze(ta_rb_fields_hash(f, ta_bind_defaults_fields(d, f))));
  return rb_obj_freeze(all);
}

/* core/bind's facts (TA_BIND_FACTS) by kind, frozen. */
static VALUE names_array(const char *const *names, size_t n) {
  VALUE a = rb_ary_new_capa((long)n);
  for (size_t i = 0; i < n; i++) rb_ary_push(a, SYM(names[i]));
  return rb_obj_freeze(a);
}

static VALUE fields_hash(size_t (*fill)(ta_bind_field_t *)) {
  ta_bind_field_t f[TA_BIND_FACTS_MAXFIELDS];
  return rb_obj_freeze(ta_rb_fields_hash(f, fill(f)));
}
#define TA_RB_FACT_fields(v, n) fields_hash(v)
#define TA_RB_FACT_names(v, n) names_array(v, n)
#define TA_RB_FACT_u64(v, n) ULL2NUM(v)
#define TA_RB_FACT_str(v, n) rb_obj_freeze(rb_str_new_cstr(v))
#define TA_RB_FACT(name, kind, v, n) rb_define_const(ta_rb_mNative, #name, TA_RB_FACT_##kind(v, n));

void ta_rb_init_shared(void) {
  ta_bind_init();
  ta_rb_mTrimalloc = rb_define_module("Trimalloc");
  ta_rb_eError = rb_define_class_under(ta_rb_mTrimalloc, "Error", rb_eStandardError);
  rb_define_attr(ta_rb_eError, "errno", 1, 0);
  ta_rb_mNative = rb_define_module_under(ta_rb_mTrimalloc, "Native");
  rb_define_const(ta_rb_mNative, "DEFAULTS", make_defaults());
  TA_BIND_FACTS(TA_RB_FACT)
}
