/* The Ruby extension: conversions and error mapping over core/bind/binding.h.
 * One init per file, called from Init_trimalloc_ext. */
#ifndef TRIMALLOC_EXT_H
#define TRIMALLOC_EXT_H

#include <ruby.h>

#include "binding.h"

extern VALUE ta_rb_mTrimalloc; /* Trimalloc */
extern VALUE ta_rb_eError;     /* Trimalloc::Error */

/* Raises Trimalloc::Error "<what>: <strerror(err)>", with #errno set. */
NORETURN(void ta_rb_raise_errno(int err, VALUE what));

/* Converts a Numeric to a double >= 0, raising TypeError or ArgumentError
 * naming `name` and the value. */
double ta_rb_nonneg_double(VALUE v, const char *name);

/* nil -> -1; an Integer >= 0 -> itself (clamped to INT64_MAX); raises
 * TypeError or ArgumentError naming `name` and the value otherwise. */
int64_t ta_rb_bytes_or_nil(VALUE v, const char *name);

void ta_rb_init_backend(void);  /* backend.c:  active?, backend, trim, rss, ... */
void ta_rb_init_stats(void);    /* stats.c:    Trimalloc.stats */
void ta_rb_init_gc_hook(void);  /* gc_hook.c:  Trimalloc::GC */
void ta_rb_init_launcher(void); /* launcher.c: exec with the preload, re-exec */
void ta_rb_init_trimmer(void);  /* trimmer.c:  Trimalloc::Trimmer (a hook's policy) */
void ta_rb_init_frames(void);   /* frames.c:   the Ruby frames of the profiler's samples */
void ta_rb_init_profile(void);  /* profile.c:  Trimalloc::Profile (start, dump, tags) */

/* frames.c: names the Ruby frames seen in samples and not yet named (the
 * GVL held; allocates; never raises). Called before every dump. */
void ta_rb_frames_name_pending(void);
void ta_rb_init_prof_read(void); /* prof_read.c: Trimalloc.__prof_top, __prof_top_text, __prof_flame */

#endif
