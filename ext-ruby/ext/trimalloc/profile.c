/* Trimalloc::Profile: start, stop, dump, top's dump, tags, and `trimalloc
 * run --profile`'s environment, over core/bind/bind_sampler.c (the core's
 * profiler, shared with Python). The Ruby frames of the samples are
 * frames.c's; a dump names the new ones first (with the GVL: it allocates
 * Ruby strings), then encodes and writes without the GVL. Profile.interval
 * and .reset_peak are core/bind's argument-free calls (TA_BIND_CALLS,
 * defined by backend.c). */
#include "trimalloc_ext.h"

#include <errno.h>

#include <ruby/thread.h>

static VALUE mProfile;

/* Trimalloc::Error saying why there is no profiler and how to run under
 * trimalloc, unless there is one. */
static void need_profiler(void) {
  if (!ta_bind_sampler_available()) rb_raise(ta_rb_eError, "%s", ta_bind_sampler_unavailable());
}

/* Profile.__start(interval) (interval an Integer >= 0; 0 keeps the current) */
static VALUE p_start(VALUE self, VALUE interval) {
  need_profiler();
  size_t r = NUM2SIZET(interval);
  int err = ta_bind_sampler_start(r);
  if (err == EINVAL) rb_raise(rb_eArgError, TA_BIND_MSG_INTERVAL " (given %" PRIsVALUE ")", interval);
  if (err) ta_rb_raise_errno(err, rb_str_new_cstr("trimalloc_prof_start"));
  return Qnil;
}

/* Profile.stop: stops sampling (the live samples stay until freed); nothing
 * to stop when trimalloc is not the allocator. */
static VALUE p_stop(VALUE self) {
  int err = ta_bind_sampler_stop();
  if (err) ta_rb_raise_errno(err, rb_str_new_cstr("trimalloc_prof_stop"));
  return Qnil;
}

/* Profile.__set_tag(tag or nil): this thread's tag; a no-op when trimalloc
 * is not the allocator (the job integrations call it on every job). */
static VALUE p_set_tag(VALUE self, VALUE tag) {
  if (!NIL_P(tag)) StringValueCStr(tag);
  ta_bind_sampler_set_tag(NIL_P(tag) ? NULL : RSTRING_PTR(tag));
  return Qnil;
}

/* Profile.__dump(path or nil, kind 0/1) -> the path written. Names the new
 * frames first (with the GVL: it allocates Ruby strings), then encodes and
 * writes without it: a dump may take milliseconds. */
static VALUE p_dump(VALUE self, VALUE path, VALUE kind) {
  need_profiler();
  if (!NIL_P(path)) {
    FilePathValue(path);
    path = rb_str_new_frozen(path);
    StringValueCStr(path);
  }
  ta_bind_job_t j = {.kind = TA_JOB_DUMP, .path = NIL_P(path) ? NULL : RSTRING_PTR(path), .dump_kind = NUM2INT(kind)};
  ta_rb_frames_name_pending();
  rb_thread_call_without_gvl(ta_bind_job_run, &j, NULL, NULL); /* not interruptible: a few ms */
  RB_GC_GUARD(path);
  if (j.rc) {
    VALUE what = NIL_P(path) ? rb_str_new_cstr("trimalloc_prof_dump (TRIMALLOC_PROF_PREFIX)") : path;
    rb_syserr_fail_str(j.rc, what);
  }
  return rb_str_new_cstr(j.msg);
}

/* Trimalloc.profile_env(dir, cmd) (private): `trimalloc run --profile DIR`
 * (ta_bind_profile_env): makes DIR, sets TRIMALLOC_PROF=1 and
 * TRIMALLOC_PROF_PREFIX=DIR/<basename of cmd> in this process's environment
 * (the exec that follows passes it on). Raises Errno::* naming DIR. */
static VALUE m_profile_env(VALUE self, VALUE dir, VALUE cmd) {
  FilePathValue(dir);
  StringValue(cmd);
  if (ta_bind_profile_env(StringValueCStr(dir), StringValueCStr(cmd)) != 0) {
    if (errno == EINVAL)
      rb_raise(rb_eArgError, TA_BIND_MSG_PROFILE_ENV " (given %" PRIsVALUE " and %" PRIsVALUE ")",
               rb_inspect(dir), rb_inspect(cmd));
    rb_syserr_fail_str(errno, dir);
  }
  return Qnil;
}

void ta_rb_init_profile(void) {
  mProfile = rb_define_module_under(ta_rb_mTrimalloc, "Profile");
  rb_define_private_method(rb_singleton_class(ta_rb_mTrimalloc), "profile_env", m_profile_env, 2);
  VALUE s = rb_singleton_class(mProfile);
  rb_define_singleton_method(mProfile, "stop", p_stop, 0);
  rb_define_private_method(s, "__start", p_start, 1);
  rb_define_private_method(s, "__dump", p_dump, 2);
  rb_define_private_method(s, "__set_tag", p_set_tag, 1);
}
