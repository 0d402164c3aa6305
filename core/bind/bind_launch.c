/* The launcher (`trimalloc run`: exec with the library preloaded) and the
 * preload re-exec behind `require "trimalloc/preload"` / `import
 * trimalloc.preload`, with the checks that keep it from ever running a
 * program twice. See binding.h ("bind_launch.c"). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include "bind_internal.h"

/* LD_PRELOAD with lib in front, unless it is already there. */
static int prepend_preload(const char *lib) {
  const char *cur = getenv("LD_PRELOAD");
  if (cur && *cur) {
    size_t n = strlen(lib);
    for (const char *p = cur; (p = strstr(p, lib)) != NULL; p += n) {
      int starts = p == cur || p[-1] == ':' || p[-1] == ' ';
      int ends = p[n] == 0 || p[n] == ':' || p[n] == ' ';
      if (starts && ends) return 0;
    }
    size_t len = strlen(lib) + 1 + strlen(cur) + 1;
    char *v = malloc(len);
    if (!v) return -1;
    snprintf(v, len, "%s:%s", lib, cur);
    int rc = setenv("LD_PRELOAD", v, 1);
    free(v);
    return rc;
  }
  return setenv("LD_PRELOAD", lib, 1);
}

/* ---- finding the command ----
 * As a shell does (and execvp): a name with a '/' is the file itself;
 * otherwise the first executable regular file of that name in the search
 * path's directories, in order (an empty entry is the current directory). */

static char *search_path(const char *first, int *added) {
  const char *path = getenv("PATH");
  char def[256];
  if (!path) { /* execvp's default */
    size_t n = confstr(_CS_PATH, def, sizeof def);
    path = n > 0 && n <= sizeof def ? def : "/bin:/usr/bin";
  }
  if (first && *first) {
    size_t n = strlen(first);
    /* already first (an activated environment): nothing to add */
    if (strncmp(path, first, n) == 0 && (path[n] == ':' || path[n] == 0)) first = NULL;
  } else {
    first = NULL;
  }
  size_t len = (first ? strlen(first) + 1 : 0) + strlen(path) + 1;
  char *out = malloc(len);
  if (!out) return NULL;
  snprintf(out, len, "%s%s%s", first ? first : "", first ? ":" : "", path);
  *added = first != NULL;
  return out;
}

char *ta_bind_search_path(const char *first) {
  int added;
  return search_path(first, &added);
}

char *ta_bind_which(const char *cmd, const char *path) {
  if (!cmd || !*cmd || !path) {
    errno = cmd && !*cmd ? ENOENT : EINVAL;
    return NULL;
  }
  if (strchr(cmd, '/')) return strdup(cmd);
  size_t cl = strlen(cmd);
  int denied = 0;
  for (const char *d = path;; d++) {
    const char *e = strchr(d, ':');
    size_t dl = e ? (size_t)(e - d) : strlen(d);
    char *f = malloc(dl + 2 + cl + 1);
    if (!f) return NULL;
    if (dl == 0) snprintf(f, 2 + cl + 1, "./%s", cmd);
    else snprintf(f, dl + 1 + cl + 1, "%.*s/%s", (int)dl, d, cmd);
    struct stat st;
    if (stat(f, &st) == 0 && S_ISREG(st.st_mode)) {
      if (access(f, X_OK) == 0) return f;
      denied = 1;
    }
    free(f);
    if (!e) break;
    d = e;
  }
  errno = denied ? EACCES : ENOENT;
  return NULL;
}

int ta_bind_exec_in(const char *lib, char *const argv[], int pythonmalloc, const char *first) {
  if (!lib || !argv || !argv[0]) {
    errno = EINVAL;
    return -1;
  }
  if (access(lib, R_OK) != 0) return -1;
  int added = 0;
  char *path = search_path(first, &added);
  if (!path) return -1;
  char *file = ta_bind_which(argv[0], path);
  if (!file) {
    int e = errno;
    free(path);
    errno = e;
    return -1;
  }
  /* The environment's directory goes in front of PATH for the command too,
   * as activating it would: an interpreter started as `python3` finds itself
   * (and its venv) through PATH, and so do the command's own children. */
  int rc = added ? setenv("PATH", path, 1) : 0;
  free(path);
  if (rc != 0 || prepend_preload(lib) != 0 ||
      (pythonmalloc && setenv("PYTHONMALLOC", "malloc", 1) != 0)) {
    free(file);
    return -1;
  }
  /* execvp on a path: an executable without a #! line runs under /bin/sh,
   * as the shell would */
  execvp(file, argv);
  int e = errno;
  free(file);
  errno = e;
  return -1;
}

int ta_bind_exec(const char *lib, char *const argv[], int pythonmalloc) {
  return ta_bind_exec_in(lib, argv, pythonmalloc, NULL);
}

/* ---- `run --profile DIR` ---- */

/* mkdir -p: each missing component made with mode 0777 (the umask applies);
 * one that exists must be a directory. */
static int mkdir_p(const char *dir) {
  char buf[PATH_MAX];
  size_t n = strlen(dir);
  if (n >= sizeof buf) {
    errno = ENAMETOOLONG;
    return -1;
  }
  memcpy(buf, dir, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] != '/' && buf[i] != 0) continue;
    char c = buf[i];
    buf[i] = 0;
    struct stat st;
    if (mkdir(buf, 0777) != 0) {
      int e = errno;
      /* EEXIST, or EACCES/EROFS on a parent that exists: fine if it is a directory */
      if (stat(buf, &st) != 0) {
        errno = e;
        return -1;
      }
      if (!S_ISDIR(st.st_mode)) {
        errno = ENOTDIR;
        return -1;
      }
    }
    buf[i] = c;
  }
  return 0;
}

int ta_bind_profile_env(const char *dir, const char *cmd) {
  if (!dir || !*dir || !cmd || !*cmd) {
    errno = EINVAL;
    return -1;
  }
  if (mkdir_p(dir) != 0) return -1;
  /* absolute, so that a command that changes directory still writes there */
  char *real = realpath(dir, NULL);
  if (!real) return -1;
  const char *base = strrchr(cmd, '/');
  base = base ? base + 1 : cmd;
  if (!*base) base = "prof"; /* "cmd/": no name to take */
  size_t len = strlen(real) + 1 + strlen(base) + 1;
  char *prefix = malloc(len);
  if (!prefix) {
    free(real);
    return -1;
  }
  snprintf(prefix, len, "%s%s%s", real, strcmp(real, "/") == 0 ? "" : "/", base);
  free(real);
  int rc = setenv("TRIMALLOC_PROF", "1", 1) != 0 || setenv("TRIMALLOC_PROF_PREFIX", prefix, 1) != 0
               ? -1 : 0;
  int e = errno;
  free(prefix);
  errno = e;
  return rc;
}

/* ---- the command line the process was started with ----
 * glibc passes (argc, argv, envp) to the constructors of every object it
 * loads, dlopen'ed extensions included: argv is the array main() got. Its
 * strings live in the area /proc/self/cmdline shows, which a process title
 * (Ruby's $0= and Process.setproctitle, Python's setproctitle) overwrites in
 * place; so what is kept here is checked before use (see argv_intact). */
static int start_argc;
static char **start_argv;

#ifdef __GLIBC__
__attribute__((constructor)) static void capture_argv(int argc, char **argv, char **envp) {
  (void)envp;
  if (argc > 0 && argv) {
    start_argc = argc;
    start_argv = argv;
  }
}
#endif

/* Reads a whole small /proc file (NUL-terminated; *len without the NUL). */
static char *read_file(const char *path, size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  size_t cap = 4096, n = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (!buf) break;
    if (cap - n < 2) {
      char *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
    ssize_t r = read(fd, buf + n, cap - n - 1);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    n += (size_t)r;
  }
  close(fd);
  if (!buf) return NULL;
  buf[n] = 0;
  *len = n;
  return buf;
}

/* 1 when /proc/self/cmdline is exactly argv's strings, each NUL-terminated. */
static int cmdline_is(char *const *argv) {
  size_t len = 0;
  char *cl = read_file("/proc/self/cmdline", &len);
  if (!cl) return 0;
  size_t off = 0;
  int same = 1;
  for (size_t i = 0; argv[i] && same; i++) {
    size_t n = strlen(argv[i]) + 1;
    same = off + n <= len && memcmp(cl + off, argv[i], n) == 0;
    off += n;
  }
  same = same && off == len;
  free(cl);
  return same;
}

/* 1 when /proc/self/cmdline shows `title` as a process title leaves it: the
 * string, then nothing but NUL padding (what is left of the area it was
 * written over). */
static int cmdline_titled(const char *title) {
  size_t len = 0, n = strlen(title);
  char *cl = read_file("/proc/self/cmdline", &len);
  if (!cl) return 0;
  int same = n > 0 && len >= n && memcmp(cl, title, n) == 0;
  for (size_t i = n; same && i < len; i++) same = cl[i] == 0;
  free(cl);
  return same;
}

/* The start argv is usable when nothing overwrote it: every string is where
 * the kernel put it (one after the other, none cut or lengthened, no entry
 * cleared) and /proc/self/cmdline still shows them. */
static int argv_intact(void) {
  if (!start_argv || start_argc < 1) return 0;
  for (int i = 0; i < start_argc; i++) {
    if (!start_argv[i]) return 0;
    if (i > 0 && start_argv[i] != start_argv[i - 1] + strlen(start_argv[i - 1]) + 1) return 0;
  }
  if (start_argv[start_argc] != NULL) return 0;
  return cmdline_is(start_argv);
}

/* ---- forked children ----
 * A server's worker is a fork of the server: same executable, same memory
 * layout (with address-space randomisation every exec gets its own stack and
 * vDSO addresses, a fork keeps its parent's). Re-executing there would start
 * a second server. */
static int maps_marks(pid_t pid, unsigned long *stack, unsigned long *vdso) {
  char path[64];
  snprintf(path, sizeof path, "/proc/%d/maps", (int)pid);
  size_t len = 0;
  char *m = read_file(path, &len);
  if (!m) return 0;
  *stack = *vdso = 0;
  for (char *line = m; line && *line;) {
    char *nl = strchr(line, '\n');
    if (nl) *nl = 0;
    if (strstr(line, "[stack]")) *stack = strtoul(line, NULL, 16);
    else if (strstr(line, "[vdso]")) *vdso = strtoul(line, NULL, 16);
    line = nl ? nl + 1 : NULL;
  }
  free(m);
  return *stack || *vdso;
}

static int same_file(const char *a, const char *b) {
  struct stat sa, sb;
  return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

static int aslr_on(void) {
  int p = personality(0xffffffff);
  if (p != -1 && (p & ADDR_NO_RANDOMIZE)) return 0;
  size_t len = 0;
  char *v = read_file("/proc/sys/kernel/randomize_va_space", &len);
  int on = !v || v[0] != '0';
  free(v);
  return on;
}

int ta_bind_forked_child(void) {
  pid_t ppid = getppid();
  if (ppid <= 1) return 0;
  char exe[64];
  snprintf(exe, sizeof exe, "/proc/%d/exe", (int)ppid);
  if (!same_file("/proc/self/exe", exe)) return 0;
  if (!aslr_on()) {
    /* no layout to compare: the parent showing the same command line is
     * the best sign there is */
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/cmdline", (int)ppid);
    size_t la = 0, lb = 0;
    char *a = read_file("/proc/self/cmdline", &la), *b = read_file(path, &lb);
    int same = a && b && la == lb && memcmp(a, b, la) == 0;
    free(a);
    free(b);
    return same;
  }
  unsigned long s1, v1, s2, v2;
  if (!maps_marks(getpid(), &s1, &v1) || !maps_marks(ppid, &s2, &v2)) return 0;
  return s1 == s2 && v1 == v2;
}

/* ---- the preload re-exec ---- */

/* The kernel names a process (/proc/PID/comm: what ps, top and pgrep show)
 * after the file it executes: re-executed through /proc/self/exe, every
 * preloaded program would be called "exe", and a `puma` or `gunicorn` started
 * from its script would be called after its interpreter. So the exec uses the
 * executable's own path (/proc/self/exe only when that path no longer names
 * the same file), and the name the process had is handed to the new image in
 * TA_BIND_COMM_ENV ("pid:name"), which this file's constructor restores when
 * the extension is loaded again, by the same line of the program. The pid
 * keeps any other program that inherits the variable from taking the name. */
#define TA_BIND_COMM_ENV "TRIMALLOC_PRELOAD_COMM"

static const char *reexec_path(char *buf, size_t cap) {
  const char *self = "/proc/self/exe";
  ssize_t r = readlink(self, buf, cap - 1);
  if (r <= 0 || (size_t)r >= cap - 1) return self;
  buf[r] = 0;
  return buf[0] == '/' && same_file(buf, self) ? buf : self;
}

static int save_comm(void) {
  size_t len = 0;
  char *c = read_file("/proc/self/comm", &len);
  if (!c) return 0; /* nothing to restore: not a failure */
  while (len > 0 && c[len - 1] == '\n') c[--len] = 0;
  char v[64];
  snprintf(v, sizeof v, "%d:%.15s", (int)getpid(), c);
  free(c);
  return setenv(TA_BIND_COMM_ENV, v, 1);
}

__attribute__((constructor)) static void restore_comm(void) {
  const char *v = getenv(TA_BIND_COMM_ENV);
  if (!v) return;
  char *end;
  long pid = strtol(v, &end, 10);
  if (end != v && *end == ':' && pid == (long)getpid()) prctl(PR_SET_NAME, end + 1, 0, 0, 0);
  unsetenv(TA_BIND_COMM_ENV);
}

static int not_a_file(const char *script) {
  return script && (!*script || strcmp(script, "-c") == 0 || strcmp(script, "-e") == 0 ||
                    strcmp(script, "-") == 0);
}

int ta_bind_preload_req(const ta_bind_preload_req_t *req) {
  if (ta_bind_backend() == TA_BACKEND_TRIMALLOC) return TA_PRELOAD_ACTIVE;
  if (!req->lib || access(req->lib, R_OK) != 0) {
    if (!req->lib) errno = EINVAL;
    return TA_PRELOAD_NO_LIBRARY;
  }
  if (ta_bind_forked_child()) return TA_PRELOAD_FORKED;
  const char *guard = getenv(TA_BIND_GUARD_ENV);
  if (guard && *guard) return TA_PRELOAD_GUARD;
  if (not_a_file(req->script)) return TA_PRELOAD_NOT_A_FILE;
  if (req->title_changed) return TA_PRELOAD_REWRITTEN;
  char *const *argv = req->argv;
  if (argv) {
    if (!argv[0] || !(req->title ? cmdline_titled(req->title) : cmdline_is(argv)))
      return TA_PRELOAD_REWRITTEN;
  } else {
    if (!argv_intact()) return TA_PRELOAD_REWRITTEN;
    argv = start_argv;
  }
  if (setenv(TA_BIND_GUARD_ENV, "1", 1) != 0 || prepend_preload(req->lib) != 0 ||
      (req->pythonmalloc && setenv("PYTHONMALLOC", "malloc", 1) != 0) || save_comm() != 0)
    return TA_PRELOAD_FAILED;
  fflush(NULL);
  char path[PATH_MAX];
  execv(reexec_path(path, sizeof path), argv);
  int e = errno;
  unsetenv(TA_BIND_GUARD_ENV);
  unsetenv(TA_BIND_COMM_ENV);
  errno = e;
  return TA_PRELOAD_FAILED;
}

int ta_bind_preload(const char *lib, int pythonmalloc) {
  ta_bind_preload_req_t req = {lib, pythonmalloc, NULL, NULL, 0, NULL};
  return ta_bind_preload_req(&req);
}

const char *ta_bind_preload_reason(int code) {
  switch (code) {
  case TA_PRELOAD_ACTIVE: return "";
  case TA_PRELOAD_GUARD:
    return "re-executed once with the library in LD_PRELOAD, but malloc is still not "
           "trimalloc's (is LD_PRELOAD cleared or overridden?)";
  case TA_PRELOAD_FORKED:
    return "this process is a fork of one running the same program (a server's worker): "
           "re-executing it would start the program, a second server, again";
  case TA_PRELOAD_REWRITTEN:
    return "this process's command line was rewritten (a process title), so it cannot be "
           "started again as it was";
  case TA_PRELOAD_NOT_A_FILE:
    return "the program came from -c, -e or standard input: running it again would not run "
           "the same program";
  case TA_PRELOAD_NO_LIBRARY: return "the bundled libtrimalloc.so is missing or unreadable";
  default: return "the re-exec failed";
  }
}
