/* The Ruby extension: conversions and error mapping over core/bind/binding.h.
 * Each file includes shared.h (the module, Error, the conversions) and this
 * header for its own init, which Init_trimalloc_ext (trimalloc_ext.c) calls. */
#ifndef TRIMALLOC_EXT_H
#define TRIMALLOC_EXT_H

#include "shared.h"

void ta_rb_init_backend(void);    /* backend.c:   active?, backend, trim, rss, ... */
void ta_rb_init_stats(void);      /* stats.c:     Trimalloc.stats */
void ta_rb_init_gc_hook(void);    /* gc_hook.c:   Trimalloc::GC */
void ta_rb_init_launcher(void);   /* launcher.c:  exec with the preload, re-exec */
void ta_rb_init_trimmer(void);    /* trimmer.c:   Trimalloc::Trimmer (a hook's policy) */
void ta_rb_init_frames(void);     /* frames.c:    the Ruby frames of the profiler's samples */
void ta_rb_init_profile(void);    /* profile.c:   Trimalloc::Profile (start, dump, tags) */
void ta_rb_init_prof_read(void);  /* prof_read.c: the profile readers */

/* frames.c: names the Ruby frames seen in samples and not yet named (the
 * GVL held; allocates; never raises). Called before every dump. */
void ta_rb_frames_name_pending(void);

#endif
