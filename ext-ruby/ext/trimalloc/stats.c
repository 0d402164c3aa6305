/* Trimalloc.stats: one Hash, keys from the core's field list (through
 * ta_bind_stats), plus :backend. Fields the backend cannot measure are left
 * out, never reported as 0. */
#include "trimalloc_ext.h"

static VALUE m_stats(VALUE self) {
  size_t n = ta_bind_nfields();
  ta_bind_field_t *f = ALLOCA_N(ta_bind_field_t, n);
  int err = ta_bind_stats(f);
  if (err) ta_rb_raise_errno(err, rb_str_new_cstr("trimalloc_stats"));
  VALUE h = ta_rb_fields_hash(f, n);
  rb_hash_aset(h, ID2SYM(rb_intern("backend")), ID2SYM(rb_intern(ta_bind_backend_name())));
  return h;
}

void ta_rb_init_stats(void) {
  rb_define_singleton_method(ta_rb_mTrimalloc, "stats", m_stats, 0);
}
