/* Trimalloc::Trimmer: one hook's trim policy (core/bind's ta_bind_trimmer_t)
 * as a Ruby object. The Rack, Sidekiq and Puma integrations each hold one.
 *
 *   t = Trimalloc::Trimmer.new(every: 100, min_free: 64 << 20, min_interval: 1.0)
 *   t.event   # -> bytes released, or nil when no trim ran
 *   t.stats   # -> {events:, trims:, skipped:, coalesced:, trimmed_bytes:, refault_skips:}
 *
 * every: nil or a positive Integer; min_free: nil or an Integer >= 0 (bytes);
 * min_interval: seconds >= 0; refault_share: >= 0, the share of the CPU time
 * the refaults of trims may cost (0: no refault budget; binding.h); checked by
 * #initialize (native.rb). The trim runs without the GVL. */
#include <errno.h>
#include <stdatomic.h>

#include "trimalloc_ext.h"

static VALUE cTrimmer;

static size_t trimmer_memsize(const void *p) {
  (void)p;
  return sizeof(ta_bind_trimmer_t);
}

static const rb_data_type_t trimmer_type = {
    "Trimalloc::Trimmer",
    {NULL, RUBY_TYPED_DEFAULT_FREE, trimmer_memsize, NULL, {NULL}},
    NULL,
    NULL,
    RUBY_TYPED_FREE_IMMEDIATELY,
};

static VALUE trimmer_alloc(VALUE klass) {
  ta_bind_trimmer_t *t;
  VALUE obj = TypedData_Make_Struct(klass, ta_bind_trimmer_t, &trimmer_type, t);
  const ta_bind_defaults_t *d = ta_bind_defaults_for("trimmer");
  ta_bind_trimmer_init(t, d->every, d->min_free, d->min_interval);
  ta_bind_trimmer_set_share(t, d->refault_share);
  return obj;
}

static ta_bind_trimmer_t *get(VALUE self) {
  ta_bind_trimmer_t *t;
  TypedData_Get_Struct(self, ta_bind_trimmer_t, &trimmer_type, t);
  return t;
}

/* #setup(every, min_free, min_interval, refault_share) (private):
 * Trimmer#initialize (native.rb) checks and converts the settings (every 0:
 * off, min_free -1: off); this only stores them. */
static VALUE trimmer_setup(VALUE self, VALUE every, VALUE min_free, VALUE min_interval, VALUE refault_share) {
  if (ta_bind_trimmer_init(get(self), NUM2ULL(every), NUM2LL(min_free), NUM2DBL(min_interval)) != 0)
    rb_raise(rb_eArgError, TA_BIND_MSG_TRIMMER " (every %" PRIsVALUE ", min_free %" PRIsVALUE
             ", min_interval %" PRIsVALUE ")", rb_inspect(every), rb_inspect(min_free), rb_inspect(min_interval));
  if (ta_bind_trimmer_set_share(get(self), NUM2DBL(refault_share)) != 0)
    rb_raise(rb_eArgError, TA_BIND_MSG_TRIMMER " (refault_share %" PRIsVALUE ")", rb_inspect(refault_share));
  return self;
}

/* #event -> bytes released, or nil. The decision is taken with the GVL (a
 * few atomics, at most one clock read); only a trim releases it. */
static VALUE trimmer_event(VALUE self) {
  ta_bind_trimmer_t *t = get(self);
  return ta_bind_trimmer_decide(t, NULL) ? ta_rb_run_trim(t) : Qnil;
}

/* #stats -> {events:, trims:, ...}: the keys of Native::TRIMMER_COUNTS */
static VALUE trimmer_stats(VALUE self) {
  ta_bind_field_t f[TA_BIND_TRIMMER_NFIELDS];
  return ta_rb_fields_hash(f, ta_bind_trimmer_fields(get(self), f));
}

/* #settings (private) -> {every:, min_free:, min_interval:, refault_share:}
 * (nil: off); the readers of the same names are native.rb's. */
static VALUE trimmer_settings(VALUE self) {
  ta_bind_field_t f[TA_BIND_DEFAULTS_NFIELDS];
  return ta_rb_fields_hash(f, ta_bind_trimmer_settings(get(self), f));
}

void ta_rb_init_trimmer(void) {
  cTrimmer = rb_define_class_under(ta_rb_mTrimalloc, "Trimmer", rb_cObject);
  rb_define_alloc_func(cTrimmer, trimmer_alloc);
  rb_define_private_method(cTrimmer, "setup", trimmer_setup, 4);
  rb_define_method(cTrimmer, "event", trimmer_event, 0);
  rb_define_method(cTrimmer, "stats", trimmer_stats, 0);
  rb_define_private_method(cTrimmer, "settings", trimmer_settings, 0);
}
