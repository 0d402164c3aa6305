/* Shared by the Ruby and Python bindings: find the core, or drive glibc.
 * See binding.h for the contract of each function. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "binding.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <link.h>
#include <malloc.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef size_t (*trim_fn)(void);
typedef int (*stats_fn)(trimalloc_stats_t *, size_t);
typedef const char *(*version_fn)(void);
typedef int (*glibc_trim_fn)(size_t);
struct ta_mallinfo2 { /* glibc 2.33+ struct mallinfo2, looked up at run time */
  size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};
typedef struct ta_mallinfo2 (*mallinfo2_fn)(void);

static struct {
  atomic_int ready;
  ta_backend_t backend;
  trim_fn trim;
  stats_fn stats;
  version_fn version;
  glibc_trim_fn glibc_trim;
  mallinfo2_fn mallinfo2;
  char path[PATH_MAX];
} core;

/* Counters for trims done on the glibc backend (the core counts its own). */
static _Atomic uint64_t g_trims, g_trimmed, g_trim_ns;
static _Atomic uint64_t last_trim_ns; /* for ta_bind_trim_if_due */
static atomic_flag trim_busy = ATOMIC_FLAG_INIT;

/* The binding's clock: CLOCK_MONOTONIC plus an offset that only
 * ta_bind_clock_advance (tests) moves, so that rate limits and deferred trims
 * can be tested without depending on how fast the machine runs. */
static _Atomic uint64_t clock_offset_ns;

static uint64_t mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static uint64_t now_ns(void) {
  return mono_ns() + atomic_load_explicit(&clock_offset_ns, memory_order_relaxed);
}

size_t ta_bind_nfields(void) {
#define COUNT(T, N, U, D) +1
  return 0 TRIMALLOC_STATS_FIELDS(COUNT);
#undef COUNT
}

/* The malloc that calls in this process bind to. dlsym(RTLD_DEFAULT,
 * "malloc") alone is not it in a non-PIE executable that takes malloc's
 * address (Debian's /usr/bin/python3 is one): it returns the executable's
 * canonical PLT entry. So when that answer is not trimalloc_malloc, walk the
 * global scope in search order and take the first object after the executable
 * whose own symbol table defines malloc. */
static void *bound_malloc(void *tm) {
  void *m = dlsym(RTLD_DEFAULT, "malloc");
  if (!m || !tm || m == tm) return m;
  void *main_handle = dlopen(NULL, RTLD_LAZY | RTLD_NOLOAD);
  struct link_map *lm = NULL;
  if (!main_handle) return m;
  if (dlinfo(main_handle, RTLD_DI_LINKMAP, &lm) != 0 || !lm) lm = NULL;
  void *found = NULL;
  for (struct link_map *l = lm ? lm->l_next : NULL; l && !found; l = l->l_next) {
    if (!l->l_name || !l->l_name[0]) continue;
    void *h = dlopen(l->l_name, RTLD_LAZY | RTLD_NOLOAD);
    if (!h) continue;
    void *s = dlsym(h, "malloc");
    Dl_info di;
    if (s && dladdr(s, &di) && di.dli_fname && strcmp(di.dli_fname, l->l_name) == 0) found = s;
    dlclose(h);
  }
  dlclose(main_handle);
  return found ? found : m;
}

void ta_bind_init(void) {
  if (atomic_load_explicit(&core.ready, memory_order_acquire)) return;
  void *tm = dlsym(RTLD_DEFAULT, "trimalloc_malloc");
  void *m = bound_malloc(tm);
  core.backend = TA_BACKEND_GLIBC;
  if (m && tm && m == tm) {
    core.trim = (trim_fn)dlsym(RTLD_DEFAULT, "trimalloc_trim");
    core.stats = (stats_fn)dlsym(RTLD_DEFAULT, "trimalloc_stats");
    core.version = (version_fn)dlsym(RTLD_DEFAULT, "trimalloc_version");
    if (core.trim && core.stats && core.version) {
      core.backend = TA_BACKEND_TRIMALLOC;
      Dl_info info;
      if (dladdr(tm, &info) && info.dli_fname) {
        char *real = realpath(info.dli_fname, NULL);
        snprintf(core.path, sizeof core.path, "%s", real ? real : info.dli_fname);
        free(real);
      }
    }
  }
  /* glibc's own entry points, for the fallback (absent on musl: then trims
   * and stats answer with what they can). */
  core.glibc_trim = (glibc_trim_fn)dlsym(RTLD_DEFAULT, "malloc_trim");
  core.mallinfo2 = (mallinfo2_fn)dlsym(RTLD_DEFAULT, "mallinfo2");
  atomic_store_explicit(&core.ready, 1, memory_order_release);
}

ta_backend_t ta_bind_backend(void) {
  ta_bind_init();
  return core.backend;
}

const char *ta_bind_backend_name(void) {
  return ta_bind_backend() == TA_BACKEND_TRIMALLOC ? "trimalloc" : "glibc";
}

const char *ta_bind_loaded_path(void) {
  ta_bind_init();
  return core.backend == TA_BACKEND_TRIMALLOC && core.path[0] ? core.path : NULL;
}

const char *ta_bind_core_version(void) {
  ta_bind_init();
  return core.backend == TA_BACKEND_TRIMALLOC ? core.version() : NULL;
}

uint64_t ta_bind_rss(void) {
  char buf[128];
  int fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  unsigned long long size = 0, resident = 0;
  if (sscanf(buf, "%llu %llu", &size, &resident) != 2) return 0;
  return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

uint64_t ta_bind_trim(void) {
  ta_bind_init();
  if (core.backend == TA_BACKEND_TRIMALLOC) return core.trim();
  uint64_t t0 = mono_ns(), before = ta_bind_rss();
  if (core.glibc_trim) core.glibc_trim(0);
  uint64_t after = ta_bind_rss(), released = before > after ? before - after : 0;
  atomic_fetch_add(&g_trims, 1);
  atomic_fetch_add(&g_trimmed, released);
  atomic_fetch_add(&g_trim_ns, mono_ns() - t0);
  return released;
}

uint64_t ta_bind_free_bytes(void) {
  ta_bind_init();
  if (core.backend == TA_BACKEND_TRIMALLOC) {
    trimalloc_stats_t s;
    if (core.stats(&s, sizeof s) != 0) return 0;
    return s.resident > s.allocated ? s.resident - s.allocated : 0;
  }
  if (core.mallinfo2) return core.mallinfo2().fordblks;
  return 0;
}

/* ---- deferred trims ----
 * A hook's trim skipped because the last one is too recent would leave the
 * memory of the last job or GC before an idle period in place for good (an
 * idle worker runs no more hooks). So the skip schedules a trim for when it
 * is due, run by one background thread of the binding's (started on first
 * need; trimming takes neither the GIL nor the GVL). A fork child starts
 * without it. */
static pthread_mutex_t defer_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t defer_cv;
static int defer_started;
static uint64_t defer_at_ns;  /* 0: nothing scheduled */
static uint64_t defer_min_free;
static _Atomic uint64_t deferred_trims;

static void defer_child(void) {
  pthread_mutex_init(&defer_mu, NULL);
  defer_started = 0;
  defer_at_ns = 0;
}

static void *defer_main(void *unused) {
  (void)unused;
  pthread_mutex_lock(&defer_mu);
  for (;;) {
    while (defer_at_ns == 0) pthread_cond_wait(&defer_cv, &defer_mu);
    uint64_t at = defer_at_ns, now = now_ns();
    if (now < at) {
      /* the condvar waits on CLOCK_MONOTONIC, without the test offset */
      uint64_t real = mono_ns() + (at - now);
      struct timespec ts = {(time_t)(real / 1000000000u), (long)(real % 1000000000u)};
      pthread_cond_timedwait(&defer_cv, &defer_mu, &ts);
      continue;
    }
    uint64_t min_free = defer_min_free;
    defer_at_ns = 0;
    pthread_mutex_unlock(&defer_mu);
    if (ta_bind_trim_if_due(0, min_free) >= 0) atomic_fetch_add(&deferred_trims, 1);
    pthread_mutex_lock(&defer_mu);
  }
  return NULL;
}

static void defer_trim(uint64_t at, uint64_t min_free) {
  pthread_mutex_lock(&defer_mu);
  if (!defer_started) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&defer_cv, &ca);
    pthread_condattr_destroy(&ca);
    static int atfork_done;
    if (!atfork_done) atfork_done = pthread_atfork(NULL, NULL, defer_child) == 0;
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 64 * 1024);
    defer_started = pthread_create(&t, &a, defer_main, NULL) == 0;
    pthread_attr_destroy(&a);
  }
  if (defer_started && (defer_at_ns == 0 || at < defer_at_ns)) {
    defer_at_ns = at;
    defer_min_free = min_free;
    pthread_cond_signal(&defer_cv);
  }
  pthread_mutex_unlock(&defer_mu);
}

void ta_bind_clock_advance(double seconds) {
  if (!(seconds > 0)) return;
  atomic_fetch_add(&clock_offset_ns, (uint64_t)(seconds * 1e9));
  pthread_mutex_lock(&defer_mu);
  if (defer_started) pthread_cond_signal(&defer_cv);
  pthread_mutex_unlock(&defer_mu);
}

uint64_t ta_bind_deferred_trims(void) {
  return atomic_load(&deferred_trims);
}

int64_t ta_bind_trim_if_due(double min_interval, uint64_t min_free) {
  uint64_t now = now_ns();
  uint64_t last = atomic_load(&last_trim_ns);
  uint64_t interval = min_interval > 0 ? (uint64_t)(min_interval * 1e9) : 0;
  if (last != 0 && now - last < interval) {
    defer_trim(last + interval, min_free); /* runs it when due */
    return -1;
  }
  if (min_free > 0 && ta_bind_free_bytes() < min_free) return -1;
  if (atomic_flag_test_and_set(&trim_busy)) return -1; /* another thread trims */
  int64_t released = (int64_t)ta_bind_trim(); /* full: the rate limit bounds the churn */
  atomic_store(&last_trim_ns, now_ns());
  atomic_flag_clear(&trim_busy);
  return released;
}

int ta_bind_stats(ta_bind_field_t *out) {
  ta_bind_init();
  size_t i = 0;
  if (core.backend == TA_BACKEND_TRIMALLOC) {
    trimalloc_stats_t s;
    memset(&s, 0, sizeof s);
    int ok = core.stats(&s, sizeof s) == 0;
#define FILL(T, N, U, D)                                              \
  out[i].name = #N;                                                   \
  out[i].type = _Generic(s.N, double: 'd', default: 'u');             \
  out[i].present = ok;                                                \
  if (out[i].type == 'd') out[i].v.d = (double)s.N;                   \
  else out[i].v.u = (uint64_t)s.N;                                    \
  i++;
    TRIMALLOC_STATS_FIELDS(FILL)
#undef FILL
    return 0;
  }
  /* glibc: only what mallinfo2 measures, plus our own trim counters. */
  struct ta_mallinfo2 mi;
  int have_mi = core.mallinfo2 != NULL;
  if (have_mi) mi = core.mallinfo2();
  trimalloc_stats_t z;
  (void)z;
#define FILL_GLIBC(T, N, U, D)                                        \
  out[i].name = #N;                                                   \
  out[i].type = _Generic(z.N, double: 'd', default: 'u');             \
  out[i].present = 0;                                                 \
  out[i].v.u = 0;                                                     \
  i++;
  TRIMALLOC_STATS_FIELDS(FILL_GLIBC)
#undef FILL_GLIBC
  for (i = 0; i < ta_bind_nfields(); i++) {
    const char *n = out[i].name;
    if (have_mi && strcmp(n, "allocated") == 0) out[i].v.u = mi.uordblks + mi.hblkhd;
    else if (have_mi && strcmp(n, "mapped") == 0) out[i].v.u = mi.arena + mi.hblkhd;
    else if (strcmp(n, "trims") == 0) out[i].v.u = atomic_load(&g_trims);
    else if (strcmp(n, "trimmed_bytes") == 0) out[i].v.u = atomic_load(&g_trimmed);
    else if (strcmp(n, "trim_ns") == 0) out[i].v.u = atomic_load(&g_trim_ns);
    else continue;
    out[i].present = 1;
  }
  return 0;
}

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

int ta_bind_exec(const char *lib, char *const argv[], int pythonmalloc) {
  if (!lib || !argv || !argv[0]) {
    errno = EINVAL;
    return -1;
  }
  if (access(lib, R_OK) != 0) return -1;
  if (prepend_preload(lib) != 0) return -1;
  if (pythonmalloc && setenv("PYTHONMALLOC", "malloc", 1) != 0) return -1;
  execvp(argv[0], argv);
  return -1;
}

/* argv of this process from /proc/self/cmdline, NULL-terminated (malloc'd). */
static char **read_cmdline(void) {
  int fd = open("/proc/self/cmdline", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return NULL;
  size_t cap = 4096, len = 0;
  char *buf = malloc(cap);
  for (;;) {
    if (!buf) break;
    ssize_t n = read(fd, buf + len, cap - len - 1);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) break;
    len += (size_t)n;
    if (cap - len < 2) {
      char *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
  }
  close(fd);
  if (!buf || len == 0) {
    free(buf);
    return NULL;
  }
  buf[len] = 0;
  size_t argc = 0;
  for (size_t i = 0; i < len; i++)
    if (buf[i] == 0) argc++;
  if (buf[len - 1] != 0) argc++;
  char **argv = malloc((argc + 1) * sizeof *argv);
  if (!argv) {
    free(buf);
    return NULL;
  }
  size_t k = 0;
  for (size_t i = 0; i < len && k < argc; i += strlen(buf + i) + 1) argv[k++] = buf + i;
  argv[k] = NULL;
  return argv;
}

int ta_bind_preload(const char *lib, int pythonmalloc) {
  if (ta_bind_backend() == TA_BACKEND_TRIMALLOC) return 0;
  const char *guard = getenv(TA_BIND_GUARD_ENV);
  if (guard && *guard) return 1;
  if (!lib || access(lib, R_OK) != 0) {
    if (!lib) errno = EINVAL;
    return -1;
  }
  char **argv = read_cmdline();
  if (!argv) {
    if (!errno) errno = ENOENT;
    return -1;
  }
  if (setenv(TA_BIND_GUARD_ENV, "1", 1) != 0 || prepend_preload(lib) != 0 ||
      (pythonmalloc && setenv("PYTHONMALLOC", "malloc", 1) != 0)) {
    int e = errno;
    free(argv[0]);
    free(argv);
    errno = e;
    return -1;
  }
  fflush(NULL);
  execv("/proc/self/exe", argv);
  int e = errno;
  unsetenv(TA_BIND_GUARD_ENV);
  free(argv[0]);
  free(argv);
  errno = e;
  return -1;
}
