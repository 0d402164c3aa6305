/* The core's heap profiler as the bindings drive it: its entry points found
 * at run time among the loaded objects (like the rest of bind_backend.c's
 * core), and what to say when there is none. See binding.h ("bind_sampler.c"). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "bind_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>

static struct {
  atomic_int ready;
  int (*start)(size_t);
  int (*stop)(void);
  size_t (*interval)(void);
  int (*dump)(const char *, int, char *, size_t);
  void (*reset_peak)(void);
  void (*set_tag)(const char *);
  char why[256];
} prof;

static void prof_init(void) {
  if (atomic_load_explicit(&prof.ready, memory_order_acquire)) return;
  if (ta_bind_backend() != TA_BACKEND_TRIMALLOC) {
    snprintf(prof.why, sizeof prof.why,
             "trimalloc is not the process's allocator (it runs on glibc's): start the program "
             "with `trimalloc run -- CMD` (or `trimalloc run --profile DIR -- CMD`)");
  } else {
    prof.start = (int (*)(size_t))dlsym(RTLD_DEFAULT, "trimalloc_prof_start");
    prof.stop = (int (*)(void))dlsym(RTLD_DEFAULT, "trimalloc_prof_stop");
    prof.interval = (size_t(*)(void))dlsym(RTLD_DEFAULT, "trimalloc_prof_interval");
    prof.dump = (int (*)(const char *, int, char *, size_t))dlsym(RTLD_DEFAULT, "trimalloc_prof_dump");
    prof.reset_peak = (void (*)(void))dlsym(RTLD_DEFAULT, "trimalloc_prof_reset_peak");
    prof.set_tag = (void (*)(const char *))dlsym(RTLD_DEFAULT, "trimalloc_prof_set_tag");
    if (!prof.start || !prof.stop || !prof.interval || !prof.dump || !prof.reset_peak || !prof.set_tag) {
      prof.start = NULL;
      snprintf(prof.why, sizeof prof.why,
               "the loaded trimalloc core (%s, version %s) has no heap profiler: upgrade it",
               ta_bind_loaded_path() ? ta_bind_loaded_path() : "?",
               ta_bind_core_version() ? ta_bind_core_version() : "?");
    }
  }
  /* two threads may both get here: they write the same values */
  atomic_store_explicit(&prof.ready, 1, memory_order_release);
}

int ta_bind_sampler_available(void) {
  prof_init();
  return prof.start != NULL;
}

const char *ta_bind_sampler_unavailable(void) {
  prof_init();
  return prof.start ? "" : prof.why;
}

int ta_bind_sampler_start(size_t interval) {
  return ta_bind_sampler_available() ? prof.start(interval) : ENOSYS;
}

int ta_bind_sampler_stop(void) {
  return ta_bind_sampler_available() ? prof.stop() : 0;
}

size_t ta_bind_sampler_interval(void) {
  return ta_bind_sampler_available() ? prof.interval() : 0;
}

int ta_bind_sampler_dump(const char *path, int kind, char *written, size_t size) {
  if (written && size) written[0] = 0;
  if (kind != TRIMALLOC_PROF_LIVE && kind != TRIMALLOC_PROF_PEAK) return EINVAL;
  return ta_bind_sampler_available() ? prof.dump(path, kind, written, size) : ENOSYS;
}

void ta_bind_sampler_reset_peak(void) {
  if (ta_bind_sampler_available()) prof.reset_peak();
}

void ta_bind_sampler_set_tag(const char *tag) {
  if (ta_bind_sampler_available()) prof.set_tag(tag);
}
