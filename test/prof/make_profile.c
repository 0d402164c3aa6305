/* Writes a heap profile of known contents with the core's own encoder
 * (core/pprof.c), for the CLI tests of both languages (test/python/
 * test_prof_cli.py, test/ruby/prof_cli_test.rb): they build it with
 *
 *   cc -std=c11 -D_GNU_SOURCE -Icore test/prof/make_profile.c core/pprof.c core/prim/linux.c
 *
 * and run it with the output path. What it holds (values: alloc_objects,
 * alloc_space, inuse_objects, inuse_space):
 *   Python  build_report < handle, tag "GET /reports"   20, 20 MiB, 16, 16 MiB
 *   Ruby    String#* < Report#render < ReportJob#perform, tag "ReportJob",
 *           two samples summed: 10+2, 10+2 MiB, 8+1, 8+1 MiB
 *   Ruby    the same frames, tag "OtherJob"               1, 1 MiB, 1, 512 KiB
 *   C++     a vector's realloc_insert < main, no tag      4, 4 MiB, 3, 3 MiB
 *   no stack                                              1, 1000, 1, 1000
 *   Python  json.loads, all freed                         5, 5 MiB, 0, 0
 * Totals: inuse_space 29885416 (28.5 MiB + 1000), inuse_objects 30,
 * alloc_space 44041192, alloc_objects 43. Comments: exact_allocated=30000000,
 * reason=dump. Each test reads these numbers from here. */
#include "internal.h"

#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>

#define MiB ((int64_t)1 << 20)

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: make_profile OUT.pb.gz\n");
    return 2;
  }
  ta_pprof_t *p = ta_pprof_begin(524288, 1700000000000000000ll);
  if (!p) return 1;
  const char *libc = "/lib/x86_64-linux-gnu/libc.so.6", *py = "/usr/bin/python3.11",
             *rb = "/usr/lib/x86_64-linux-gnu/libruby-3.1.so.3.1", *app = "/usr/bin/app",
             *cxx = "/usr/lib/x86_64-linux-gnu/libstdc++.so.6";
  uint64_t m_libc = ta_pprof_mapping(p, 0x7f0000000000ull, 0x7f0000200000ull, 0, libc);
  uint64_t m_py = ta_pprof_mapping(p, 0x400000, 0x800000, 0, py);
  uint64_t m_rb = ta_pprof_mapping(p, 0x7f1000000000ull, 0x7f1000400000ull, 0, rb);
  uint64_t m_app = ta_pprof_mapping(p, 0x10000, 0x20000, 0, app);
  uint64_t m_cxx = ta_pprof_mapping(p, 0x7f2000000000ull, 0x7f2000100000ull, 0, cxx);
#define NATIVE(addr, map, name, file) ta_pprof_location(p, addr, map, ta_pprof_function(p, name, file), 0)
#define INTERP(name, file, line) ta_pprof_location(p, 0, 0, ta_pprof_interp_function(p, name, file), line)
  uint64_t l_malloc = NATIVE(0x7f0000001000ull, m_libc, "malloc", libc);
  uint64_t py_stack[] = {l_malloc, NATIVE(0x401000, m_py, "PyBytes_FromStringAndSize", py),
                         INTERP("app.handlers.build_report", "app/handlers.py", 42),
                         INTERP("app.main.handle", "app/main.py", 10)};
  uint64_t rb_stack[] = {l_malloc,
                         NATIVE(0x7f1000001000ull, m_rb, "ruby_xmalloc", rb),
                         NATIVE(0x7f1000002000ull, m_rb, "rb_str_buf_new", rb),
                         INTERP("String#*", "<internal:string>", 0),
                         INTERP("Report#render", "app/models/report.rb", 7),
                         INTERP("ReportJob#perform", "app/jobs/report_job.rb", 3)};
  uint64_t cxx_stack[] = {l_malloc, NATIVE(0x7f2000001000ull, m_cxx, "operator new(unsigned long)", cxx),
                          NATIVE(0x11000, m_app,
                                 "std::vector<std::pair<int, char*> >::_M_realloc_insert<&>(\"x\", 'y')", app),
                          NATIVE(0x10100, m_app, "main", app)};
  uint64_t json_stack[] = {l_malloc, INTERP("json.loads", "/usr/lib/python3.11/json/__init__.py", 346)};
  ta_pprof_sample(p, py_stack, 4, (int64_t[4]){20, 20 * MiB, 16, 16 * MiB}, "GET /reports");
  ta_pprof_sample(p, rb_stack, 6, (int64_t[4]){10, 10 * MiB, 8, 8 * MiB}, "ReportJob");
  ta_pprof_sample(p, rb_stack, 6, (int64_t[4]){2, 2 * MiB, 1, 1 * MiB}, "ReportJob");
  ta_pprof_sample(p, rb_stack, 6, (int64_t[4]){1, 1 * MiB, 1, MiB / 2}, "OtherJob");
  ta_pprof_sample(p, cxx_stack, 4, (int64_t[4]){4, 4 * MiB, 3, 3 * MiB}, NULL);
  ta_pprof_sample(p, NULL, 0, (int64_t[4]){1, 1000, 1, 1000}, NULL);
  ta_pprof_sample(p, json_stack, 2, (int64_t[4]){5, 5 * MiB, 0, 0}, NULL);
  ta_pprof_comment(p, "exact_allocated=30000000");
  ta_pprof_comment(p, "reason=dump");
  int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    perror(argv[1]);
    return 1;
  }
  int err = ta_pprof_finish(p, fd);
  if (err || close(fd)) {
    fprintf(stderr, "make_profile: %s\n", err ? "ta_pprof_finish failed" : "close failed");
    return 1;
  }
  return 0;
}
