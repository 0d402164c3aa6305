/* The backend: find the core among the loaded objects, or drive glibc
 * (malloc_trim, mallinfo2). Trims, stats, the free-but-resident figure, RSS.
 * See binding.h for the contract of each function. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "bind_internal.h"

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
typedef int (*option_get_fn)(const char *, long long *);
typedef int (*glibc_trim_fn)(size_t);
struct ta_mallinfo2 { /* glibc 2.33+ struct mallinfo2, looked up at run time */
  size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};
typedef struct ta_mallinfo2 (*mallinfo2_fn)(void);
struct ta_mallinfo { /* struct mallinfo: int fields, wrap past 2 GiB; all glibc has before 2.33 */
  int arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};
typedef struct ta_mallinfo (*mallinfo_fn)(void);

static struct {
  atomic_int ready;
  ta_backend_t backend;
  trim_fn trim;
  stats_fn stats;
  version_fn version;
  option_get_fn option_get; /* NULL in a core without options */
  glibc_trim_fn glibc_trim;
  mallinfo2_fn mallinfo2;
  mallinfo_fn mallinfo;
  size_t dirty_off; /* offset of the core's `dirty` stats field, 0 when the list has none */
  char path[PATH_MAX];
} core;

/* Counters for trims done on the glibc backend (the core counts its own). */
static _Atomic uint64_t g_trims, g_trimmed, g_trim_ns;

/* Where each field of the core's list sits in trimalloc_stats_t, so that a
 * field is found by name at run time: the binding compiles against any
 * version of the list (`dirty` came with core v2) without an #ifdef. */
static const struct {
  const char *name;
  size_t off;
} field_offsets[] = {
#define TA_OFFSET(T, N, U, D) {#N, offsetof(trimalloc_stats_t, N)},
    TRIMALLOC_STATS_FIELDS(TA_OFFSET)
#undef TA_OFFSET
};

static size_t field_offset(const char *name) {
  for (size_t i = 0; i < sizeof field_offsets / sizeof field_offsets[0]; i++)
    if (strcmp(field_offsets[i].name, name) == 0) return field_offsets[i].off;
  return 0;
}

uint64_t ta_bind_mono_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
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
    core.option_get = (option_get_fn)dlsym(RTLD_DEFAULT, "trimalloc_option_get");
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
  core.mallinfo = (mallinfo_fn)dlsym(RTLD_DEFAULT, "mallinfo");
  /* Tests pretend to run on an older glibc: 1 = no mallinfo2 (glibc < 2.33),
   * 2 = neither (a libc without either). Internal, undocumented. */
  const char *old = getenv("TRIMALLOC_TEST_OLD_GLIBC");
  if (old && (old[0] == '1' || old[0] == '2')) core.mallinfo2 = NULL;
  if (old && old[0] == '2') core.mallinfo = NULL;
  core.dirty_off = field_offset("dirty");
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

const char *ta_bind_purger_state(void) {
  ta_bind_init();
  if (core.backend != TA_BACKEND_TRIMALLOC) return "none (glibc: memory goes back only when something trims)";
  trimalloc_stats_t s;
  memset(&s, 0, sizeof s);
  size_t off = field_offset("background");
  uint64_t running = 0;
  if (off && core.stats(&s, sizeof s) == 0 && s.size >= off + sizeof running)
    memcpy(&running, (const char *)&s + off, sizeof running);
  if (running) return "running (returns what stays free for the purge delay)";
  long long on = 1; /* the core's own reading of TRIMALLOC_BACKGROUND, or its setting since */
  if (core.option_get && core.option_get("background", &on) == 0 && on == 0)
    return "off (TRIMALLOC_BACKGROUND=0: only allocator calls and trims purge)";
  return "not started (starts when 4 MiB are left to purge)";
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

static uint64_t (*_Atomic host_trim)(int), (*_Atomic host_free)(int);
static _Thread_local int policy_thread;

void ta_bind_mark_policy_thread(void) {
  policy_thread = 1;
}

int ta_bind_on_policy_thread(void) {
  return policy_thread;
}

void ta_bind_set_host(uint64_t (*trim)(int), uint64_t (*free_bytes)(int)) {
  atomic_store(&host_trim, trim);
  atomic_store(&host_free, free_bytes);
}

uint64_t ta_bind_trim(void) {
  ta_bind_init();
  uint64_t (*host)(int) = atomic_load(&host_trim);
  /* first: the pages it frees are not the allocator's */
  uint64_t hosted = host ? host(ta_bind_on_policy_thread()) : 0;
  if (core.backend == TA_BACKEND_TRIMALLOC) return hosted + core.trim();
  uint64_t t0 = ta_bind_mono_ns(), before = ta_bind_rss();
  if (core.glibc_trim) core.glibc_trim(0);
  uint64_t after = ta_bind_rss(), released = before > after ? before - after : 0;
  atomic_fetch_add(&g_trims, 1);
  atomic_fetch_add(&g_trimmed, released);
  atomic_fetch_add(&g_trim_ns, ta_bind_mono_ns() - t0);
  return hosted + released;
}

uint64_t ta_bind_host_free(void) {
  uint64_t (*host)(int) = atomic_load(&host_free);
  return host ? host(ta_bind_on_policy_thread()) : 0;
}

int ta_bind_free_known(uint64_t *out) {
  ta_bind_init();
  *out = 0;
  if (core.backend == TA_BACKEND_TRIMALLOC) {
    trimalloc_stats_t s;
    memset(&s, 0, sizeof s);
    if (core.stats(&s, sizeof s) != 0) return 0;
    if (core.dirty_off && s.size >= core.dirty_off + sizeof(uint64_t)) {
      memcpy(out, (const char *)&s + core.dirty_off, sizeof(uint64_t)); /* the core's own counter */
      return 1;
    }
    *out = s.resident > s.allocated ? s.resident - s.allocated : 0;
    return 1;
  }
  if (core.mallinfo2) {
    *out = core.mallinfo2().fordblks;
    return 1;
  }
  if (core.mallinfo) {
    *out = (uint64_t)(unsigned int)core.mallinfo().fordblks;
    return 1;
  }
  return 0;
}

uint64_t ta_bind_free_bytes(void) {
  uint64_t v;
  ta_bind_free_known(&v);
  return v;
}

int ta_bind_free_source(void) {
  ta_bind_init();
  if (core.backend == TA_BACKEND_TRIMALLOC) return core.dirty_off ? TA_FREE_DIRTY : TA_FREE_RESIDENT;
  if (core.mallinfo2) return TA_FREE_MALLINFO2;
  if (core.mallinfo) return TA_FREE_MALLINFO;
  return TA_FREE_UNKNOWN;
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
  int have_mi = core.mallinfo2 != NULL || core.mallinfo != NULL;
  if (core.mallinfo2) {
    mi = core.mallinfo2();
  } else if (core.mallinfo) {
    struct ta_mallinfo o = core.mallinfo();
    mi = (struct ta_mallinfo2){(unsigned)o.arena, (unsigned)o.ordblks, (unsigned)o.smblks,
                               (unsigned)o.hblks, (unsigned)o.hblkhd, (unsigned)o.usmblks,
                               (unsigned)o.fsmblks, (unsigned)o.uordblks, (unsigned)o.fordblks,
                               (unsigned)o.keepcost};
  }
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

