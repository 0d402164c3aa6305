/* Exec with the preload (the `trimalloc run` launcher) and the re-exec behind
 * `require "trimalloc/preload"`. Both replace the process image; the Ruby
 * side flushes its IO buffers first. */
#include <errno.h>
#include <stdlib.h>

#include "trimalloc_ext.h"

/* Trimalloc.exec_preloaded(lib, argv) (private): prepends lib to LD_PRELOAD
 * and execs argv[0] (searched in PATH). Returns only by raising the
 * Errno::* exception Ruby's own exec raises (Errno::ENOENT, Errno::EACCES,
 * ...), naming the command. */
static VALUE m_exec_preloaded(VALUE self, VALUE lib, VALUE argv) {
  const char *clib = StringValueCStr(lib);
  VALUE held, buf;
  ta_bind_exec(clib, ta_rb_argv(argv, &held, &buf), 0);
  int err = errno;
  RB_GC_GUARD(lib);
  RB_GC_GUARD(buf);
  rb_syserr_fail_str(err, rb_ary_entry(held, 0));
}

/* Trimalloc.search_path (private): the directories exec_preloaded searches
 * for a command (PATH, or execvp's default when it is unset), for the
 * launcher's "command not found" line. */
static VALUE m_search_path(VALUE self) {
  char *p = ta_bind_search_path(NULL);
  if (!p) rb_memerror();
  VALUE s = rb_str_new_cstr(p);
  free(p);
  return s;
}

/* Trimalloc.preload_reexec(lib, script, title_changed, argv, title)
 * (private): the shared preload (ta_bind_preload_req). argv nil: from the
 * command line the process was started with; else an Array of Strings, the
 * command line that `title` (what /proc/self/cmdline must show) stands for.
 * Re-executes, or returns [code, reason]: 0 already active, else why not
 * (TA_PRELOAD_*). Raises the Errno::* exception when the re-exec itself
 * failed. */
static VALUE m_preload_reexec(VALUE self, VALUE lib, VALUE script, VALUE title_changed, VALUE argv,
                              VALUE title) {
  ta_bind_preload_req_t req = {StringValueCStr(lib), 0, NULL, NULL, RTEST(title_changed), NULL};
  if (!NIL_P(script)) req.script = StringValueCStr(script);
  VALUE held = Qnil, buf = Qnil;
  if (!NIL_P(argv)) {
    req.argv = ta_rb_argv(argv, &held, &buf);
    if (!NIL_P(title)) req.title = StringValueCStr(title);
  }
  int rc = ta_bind_preload_req(&req);
  if (rc == TA_PRELOAD_FAILED) {
    int err = errno;
    rb_syserr_fail_str(err, rb_str_new_cstr("re-exec with LD_PRELOAD"));
  }
  RB_GC_GUARD(lib);
  RB_GC_GUARD(script);
  RB_GC_GUARD(held);
  RB_GC_GUARD(title);
  RB_GC_GUARD(buf);
  return rb_assoc_new(INT2FIX(rc), rb_str_new_cstr(ta_bind_preload_reason(rc)));
}

void ta_rb_init_launcher(void) {
  VALUE s = rb_singleton_class(ta_rb_mTrimalloc);
  rb_define_private_method(s, "exec_preloaded", m_exec_preloaded, 2);
  rb_define_private_method(s, "preload_reexec", m_preload_reexec, 5);
  rb_define_private_method(s, "search_path", m_search_path, 0);
}
