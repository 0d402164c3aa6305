/* Init_trimalloc_ext: the shared module and conversions (shared.c), then
 * one init per file. No file calls back into this one. */
#include "trimalloc_ext.h"

RUBY_FUNC_EXPORTED void Init_trimalloc_ext(void) {
  ta_rb_init_shared();
  ta_rb_init_backend();
  ta_rb_init_stats();
  ta_rb_init_gc_hook();
  ta_rb_init_launcher();
  ta_rb_init_trimmer();
  ta_rb_init_frames();
  ta_rb_init_profile();
  ta_rb_init_prof_read();
}
