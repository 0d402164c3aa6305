/* The heap-profile readers (core/bind/bind_prof*.c) for Ruby: the rows of
 * Trimalloc::Profile.top and the `trimalloc top` / `trimalloc flame` CLI.
 * A file that is not a profile, or a bad sample type: ArgumentError; a file
 * that cannot be read or written: Errno::*; the message names the file. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include <ruby/thread.h>

#include "trimalloc_ext.h"

NORETURN(static void raise_prof(int err, const char *msg));
static void raise_prof(int err, const char *msg) {
  if (ta_bind_error_kind(err) == TA_ERR_MEMORY) rb_memerror();
  if (ta_bind_error_kind(err) == TA_ERR_ARGUMENT) rb_raise(rb_eArgError, "%s", msg);
  /* Errno::X's message already says strerror(err): the reader's line without it */
  size_t n = strlen(msg), k = strlen(strerror(err));
  if (n > k + 2 && !strcmp(msg + n - k, strerror(err)) && !strncmp(msg + n - k - 2, ": ", 2)) n -= k + 2;
  rb_syserr_fail_str(err, rb_str_new(msg, (long)n));
}

/* A sample type: nil -> NULL, else a String (Profile.top and the CLI check
 * it; one the reader does not know is its ArgumentError). */
static const char *type_or_null(VALUE *v) {
  return NIL_P(*v) ? NULL : StringValueCStr(*v);
}

/* n: an Integer >= 0 (checked by the callers; a negative one has no size_t) */
static size_t rows_n(VALUE n) {
  if (NUM2LL(n) < 0) rb_raise(rb_eArgError, TA_BIND_MSG_ROWS " (given %" PRIsVALUE ")", rb_inspect(n));
  return NUM2SIZET(n);
}

static VALUE str_or_nil(const char *s) {
  return s ? rb_utf8_str_new_cstr(s) : Qnil;
}

static void top_row(void *arg, const ta_bind_prof_row_t *r) {
  ta_bind_field_t f[TA_BIND_PROF_ROW_NFIELDS];
  VALUE rows = (VALUE)arg, h = ta_rb_fields_hash(f, ta_bind_prof_row_fields(r, f));
  VALUE frames = rb_ary_new_capa((long)r->nframes);
  for (size_t i = 0; i < r->nframes; i++) rb_ary_push(frames, str_or_nil(r->frames[i]));
  rb_hash_aset(h, ID2SYM(rb_intern("frames")), frames);
  rb_hash_aset(h, ID2SYM(rb_intern("tag")), str_or_nil(r->tag));
  rb_ary_push(rows, h);
}

/* Native.prof_top(path, by, n) -> [{inuse_space:, inuse_objects:,
 * alloc_space:, alloc_objects:, frames: [leaf first], tag:}]: the call paths
 * with the most `by` (nil: inuse_space), n of them (0: all). The rows are
 * built with the GVL held, inside the reader's callback: only NoMemoryError
 * can unwind through it (leaking the reader's buffers then). */
static VALUE m_prof_top(VALUE self, VALUE path, VALUE by, VALUE n) {
  (void)self;
  FilePathValue(path);
  const char *cby = type_or_null(&by);
  size_t cn = rows_n(n);
  VALUE rows = rb_ary_new();
  char err[1024];
  if (ta_bind_prof_top(StringValueCStr(path), cby, cn, top_row, (void *)rows, err, sizeof err))
    raise_prof(errno, err);
  RB_GC_GUARD(path);
  RB_GC_GUARD(by);
  return rows;
}

/* Native.prof_top_text(path, by, n) -> the `trimalloc top` table. */
static VALUE m_prof_top_text(VALUE self, VALUE path, VALUE by, VALUE n) {
  (void)self;
  FilePathValue(path);
  ta_bind_job_t j = {.kind = TA_JOB_TOP_TEXT, .path = StringValueCStr(path), .type = type_or_null(&by), .n = rows_n(n)};
  rb_thread_call_without_gvl(ta_bind_job_run, &j, RUBY_UBF_IO, NULL); /* reads a file: no GVL */
  RB_GC_GUARD(path);
  RB_GC_GUARD(by);
  if (j.rc) raise_prof(j.err, j.msg);
  VALUE s = rb_utf8_str_new_cstr(j.text);
  free(j.text);
  return s;
}

/* Native.prof_flame(path, out, type, collapsed) -> nil: writes the SVG
 * flame graph, or collapsed stacks, of sample type `type` (nil: inuse_space)
 * to out ("-": stdout). */
static VALUE m_prof_flame(VALUE self, VALUE path, VALUE out, VALUE type, VALUE collapsed) {
  (void)self;
  FilePathValue(path);
  FilePathValue(out);
  ta_bind_job_t j = {.kind = TA_JOB_FLAME, .path = StringValueCStr(path), .type = type_or_null(&type),
                     .out = StringValueCStr(out), .collapsed = RTEST(collapsed)};
  rb_thread_call_without_gvl(ta_bind_job_run, &j, RUBY_UBF_IO, NULL);
  RB_GC_GUARD(path);
  RB_GC_GUARD(out);
  RB_GC_GUARD(type);
  if (j.rc) raise_prof(j.err, j.msg);
  return Qnil;
}

void ta_rb_init_prof_read(void) {
  rb_define_module_function(ta_rb_mNative, "prof_top", m_prof_top, 3);
  rb_define_module_function(ta_rb_mNative, "prof_top_text", m_prof_top_text, 3);
  rb_define_module_function(ta_rb_mNative, "prof_flame", m_prof_flame, 4);
}
