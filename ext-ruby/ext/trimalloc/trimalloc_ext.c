/* Init_trimalloc_ext: the module, the error class, then one init per file. */
#include <errno.h>
#include <string.h>

#include "trimalloc_ext.h"

VALUE ta_rb_mTrimalloc;
VALUE ta_rb_eError;

void ta_rb_raise_errno(int err, VALUE what) {
  VALUE msg = rb_sprintf("%" PRIsVALUE ": %s", what, strerror(err));
  VALUE exc = rb_exc_new_str(ta_rb_eError, msg);
  rb_ivar_set(exc, rb_intern("@errno"), INT2NUM(err));
  rb_exc_raise(exc);
}

double ta_rb_nonneg_double(VALUE v, const char *name) {
  if (!rb_obj_is_kind_of(v, rb_cNumeric))
    rb_raise(rb_eTypeError, "%s must be Numeric (given %" PRIsVALUE ")", name, rb_inspect(v));
  double d = NUM2DBL(v);
  if (!(d >= 0)) /* also rejects NaN */
    rb_raise(rb_eArgError, "%s must be >= 0 (given %" PRIsVALUE ")", name, rb_inspect(v));
  return d;
}

RUBY_FUNC_EXPORTED void Init_trimalloc_ext(void) {
  ta_bind_init();
  ta_rb_mTrimalloc = rb_define_module("Trimalloc");
  ta_rb_eError = rb_define_class_under(ta_rb_mTrimalloc, "Error", rb_eStandardError);
  rb_define_attr(ta_rb_eError, "errno", 1, 0);
  ta_rb_init_backend();
  ta_rb_init_stats();
  ta_rb_init_gc_hook();
  ta_rb_init_launcher();
  ta_rb_init_trimmer();
  ta_rb_init_frames();
  ta_rb_init_profile();
  ta_rb_init_prof_read();
}
