/* The Trimalloc module, its Error class, Trimalloc::Native and the
 * conversions every file of the extension uses (shared.h). Arguments are
 * checked in Ruby (native.rb): the C only converts them. */
#include <string.h>

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
    VALUE v = f[i].type == 'd' ? DBL2NUM(f[i].v.d) : f[i].type == 'b' ? (f[i].v.u ? Qtrue : Qfalse) : ULL2NUM(f[i].v.u);
    rb_hash_aset(h, ID2SYM(rb_intern(f[i].name)), v);
  }
  return h;
}

#define SYM(s) ID2SYM(rb_intern(s))

/* Native::DEFAULTS: {hook: {every:, min_free:, min_interval:, refault_share:}},
 * frozen (nil: off). */
static VALUE make_defaults(void) {
  VALUE all = rb_hash_new();
  for (const ta_bind_defaults_t *d = ta_bind_defaults; d->hook; d++) {
    VALUE h = rb_hash_new();
    rb_hash_aset(h, SYM("every"), d->every ? ULL2NUM(d->every) : Qnil);
    rb_hash_aset(h, SYM("min_free"), d->min_free < 0 ? Qnil : LL2NUM(d->min_free));
    rb_hash_aset(h, SYM("min_interval"), DBL2NUM(d->min_interval));
    rb_hash_aset(h, SYM("refault_share"), DBL2NUM(d->refault_share));
    rb_hash_aset(all, SYM(d->hook), rb_obj_freeze(h));
  }
  return rb_obj_freeze(all);
}

/* Native::PRELOAD: {name: code} for the preload's results. */
static VALUE make_preload_codes(void) {
  VALUE h = rb_hash_new();
  for (int code = TA_PRELOAD_FAILED; ta_bind_preload_name(code); code++)
    rb_hash_aset(h, SYM(ta_bind_preload_name(code)), INT2FIX(code));
  return rb_obj_freeze(h);
}

/* Native::TRIMMER_COUNTS: the keys of Trimmer#stats, in order. */
static VALUE make_trimmer_counts(void) {
  ta_bind_trimmer_t t;
  ta_bind_field_t f[TA_BIND_TRIMMER_NFIELDS];
  ta_bind_trimmer_init(&t, 1, -1, 0);
  size_t n = ta_bind_trimmer_fields(&t, f);
  VALUE a = rb_ary_new_capa((long)n);
  for (size_t i = 0; i < n; i++) rb_ary_push(a, SYM(f[i].name));
  return rb_obj_freeze(a);
}

void ta_rb_init_shared(void) {
  ta_bind_init();
  ta_rb_mTrimalloc = rb_define_module("Trimalloc");
  ta_rb_eError = rb_define_class_under(ta_rb_mTrimalloc, "Error", rb_eStandardError);
  rb_define_attr(ta_rb_eError, "errno", 1, 0);
  ta_rb_mNative = rb_define_module_under(ta_rb_mTrimalloc, "Native");
  rb_define_const(ta_rb_mNative, "DEFAULTS", make_defaults());
  rb_define_const(ta_rb_mNative, "PRELOAD", make_preload_codes());
  rb_define_const(ta_rb_mNative, "TRIMMER_COUNTS", make_trimmer_counts());
}
