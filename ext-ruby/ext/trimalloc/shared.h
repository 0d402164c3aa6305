/* What the Ruby extension's files share: the Trimalloc module, its Error
 * class, Trimalloc::Native (the internals), and the conversions. Defined in
 * shared.c, which depends on no other file of the extension. */
#ifndef TRIMALLOC_RB_SHARED_H
#define TRIMALLOC_RB_SHARED_H

#include <ruby.h>

#include "binding.h"

extern VALUE ta_rb_mTrimalloc; /* Trimalloc */
extern VALUE ta_rb_mNative;    /* Trimalloc::Native: internals (private_constant, native.rb) */
extern VALUE ta_rb_eError;     /* Trimalloc::Error */

/* Defines the three above and Native's constants (core/bind's facts:
 * DEFAULTS and TA_BIND_FACTS). First of the inits. */
void ta_rb_init_shared(void);

/* Raises Trimalloc::Error "<what>: <strerror(err)>", with #errno set. */
NORETURN(void ta_rb_raise_errno(int err, VALUE what));

/* {name: value} (symbol keys) for the present fields of f[0..n-1]. */
VALUE ta_rb_fields_hash(const ta_bind_field_t *f, size_t n);

/* The trim a decision asked for, without the GVL: t's (ta_bind_trimmer_run)
 * or, t NULL, the policy's (ta_bind_run_trim). Bytes released, or nil when
 * it was coalesced into a running trim. */
VALUE ta_rb_run_trim(ta_bind_trimmer_t *t);

/* argv (an Array of Strings) as a NULL-terminated char *[], held in the
 * String *buf, the frozen copies holding the strings in *held (the caller
 * RB_GC_GUARDs both). ArgumentError when empty. */
char **ta_rb_argv(VALUE argv, VALUE *held, VALUE *buf);

#endif
