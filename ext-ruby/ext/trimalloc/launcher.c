/* Exec with the preload (the `trimalloc run` launcher) and the re-exec behind
 * `require "trimalloc/preload"`. Both replace the process image; the Ruby
 * side flushes its IO buffers first. */
#include <errno.h>

#include "trimalloc_ext.h"

/* Trimalloc.exec_preloaded(lib, argv) (private): prepends lib to LD_PRELOAD
 * and execs argv[0] (searched in PATH). Returns only by raising. */
static VALUE m_exec_preloaded(VALUE self, VALUE lib, VALUE argv) {
  const char *clib = StringValueCStr(lib);
  Check_Type(argv, T_ARRAY);
  long argc = RARRAY_LEN(argv);
  if (argc == 0) rb_raise(rb_eArgError, "no command given");
  VALUE held = rb_ary_new_capa(argc); /* keeps the C strings alive */
  VALUE buf;
  char **cargv = ALLOCV_N(char *, buf, argc + 1);
  for (long i = 0; i < argc; i++) {
    VALUE s = rb_ary_entry(argv, i);
    StringValue(s);
    s = rb_str_new_frozen(s);
    rb_ary_push(held, s);
    cargv[i] = (char *)StringValueCStr(s);
  }
  cargv[argc] = NULL;
  ta_bind_exec(clib, cargv, 0);
  int err = errno;
  RB_GC_GUARD(lib);
  RB_GC_GUARD(buf);
  ta_rb_raise_errno(err, rb_ary_entry(held, 0));
}

/* Trimalloc.preload_reexec(lib) (private): 0 when trimalloc is already the
 * allocator, 1 when the guard says a re-exec already happened and did not
 * take; re-executes this command line otherwise, raising Trimalloc::Error if
 * that fails. */
static VALUE m_preload_reexec(VALUE self, VALUE lib) {
  const char *clib = StringValueCStr(lib);
  int rc = ta_bind_preload(clib, 0);
  if (rc < 0) {
    int err = errno;
    ta_rb_raise_errno(err, rb_str_new_cstr("re-exec with LD_PRELOAD"));
  }
  RB_GC_GUARD(lib);
  return INT2FIX(rc);
}

void ta_rb_init_launcher(void) {
  VALUE s = rb_singleton_class(ta_rb_mTrimalloc);
  rb_define_private_method(s, "exec_preloaded", m_exec_preloaded, 2);
  rb_define_private_method(s, "preload_reexec", m_preload_reexec, 1);
}
