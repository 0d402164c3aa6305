/* Shared helpers of the benchmark programs: clock, RSS and fault readings,
 * which allocator is loaded, its trim function, a fast RNG, and the one-line
 * JSON result format that bench/run parses ("BENCH {...}" on stdout).
 *
 * The programs call plain malloc/free, so they measure whatever allocator
 * LD_PRELOAD puts in front of glibc. */
#ifndef BENCH_COMMON_H
#define BENCH_COMMON_H

#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024.0 * 1024.0)

static inline double bench_now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline void bench_sleep_ms(double ms) {
  struct timespec ts;
  ts.tv_sec = (time_t)(ms / 1000.0);
  ts.tv_nsec = (long)((ms - (double)ts.tv_sec * 1000.0) * 1e6);
  nanosleep(&ts, NULL);
}

/* Resident set size in bytes, from /proc/self/statm (no allocation). */
static inline uint64_t bench_rss(void) {
  char buf[128];
  FILE *f = fopen("/proc/self/statm", "r");
  unsigned long long size = 0, resident = 0;
  if (f == NULL) return 0;
  if (fgets(buf, sizeof buf, f) != NULL) sscanf(buf, "%llu %llu", &size, &resident);
  fclose(f);
  return (uint64_t)resident * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* The same without calling malloc (open/read, no stdio): for readings taken
 * while the allocator must stay untouched, as in an idle program. */
static inline uint64_t bench_rss_noalloc(void) {
  char buf[128];
  int fd = open("/proc/self/statm", O_RDONLY);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *p = buf;
  while (*p && *p != ' ') p++;
  return (uint64_t)strtoull(p, NULL, 10) * (uint64_t)sysconf(_SC_PAGESIZE);
}

/* Peak RSS in bytes (VmHWM). */
static inline uint64_t bench_peak_rss(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return (uint64_t)ru.ru_maxrss * 1024;
}

static inline long bench_minflt(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

static inline double bench_cpu(void) {
  struct timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

/* Which allocator serves malloc in this process. trimalloc counts only when
 * it is active (malloc is trimalloc_malloc), not merely loaded. */
static inline const char *bench_allocator(void) {
  void *m = dlsym(RTLD_DEFAULT, "malloc");
  void *t = dlsym(RTLD_DEFAULT, "trimalloc_malloc");
  if (t != NULL && m == t) return "trimalloc";
  if (dlsym(RTLD_DEFAULT, "mi_malloc") != NULL) return "mimalloc";
  if (dlsym(RTLD_DEFAULT, "mallctl") != NULL) return "jemalloc";
  return "glibc";
}

/* The loaded allocator's "return free memory to the OS now" call, looked up
 * in this order: trimalloc_trim, mimalloc mi_collect(true), jemalloc
 * mallctl("arena.<MALLCTL_ARENAS_ALL>.purge"), glibc malloc_trim(0). */
typedef struct {
  const char *name;
  size_t (*trimalloc_trim)(void);
  void (*mi_collect)(bool);
  int (*mallctl)(const char *, void *, size_t *, void *, size_t);
  int (*malloc_trim)(size_t);
} bench_trim_t;

static inline bench_trim_t bench_trim_lookup(void) {
  bench_trim_t t;
  memset(&t, 0, sizeof t);
  if ((*(void **)&t.trimalloc_trim = dlsym(RTLD_DEFAULT, "trimalloc_trim")) != NULL) {
    t.name = "trimalloc_trim()";
  } else if ((*(void **)&t.mi_collect = dlsym(RTLD_DEFAULT, "mi_collect")) != NULL) {
    t.name = "mi_collect(true)";
  } else if ((*(void **)&t.mallctl = dlsym(RTLD_DEFAULT, "mallctl")) != NULL) {
    t.name = "mallctl(arena.4096.purge)";
  } else if ((*(void **)&t.malloc_trim = dlsym(RTLD_DEFAULT, "malloc_trim")) != NULL) {
    t.name = "malloc_trim(0)";
  } else {
    t.name = "none";
  }
  return t;
}

static inline void bench_trim(const bench_trim_t *t) {
  if (t->trimalloc_trim != NULL) t->trimalloc_trim();
  else if (t->mi_collect != NULL) t->mi_collect(true);
  else if (t->mallctl != NULL) t->mallctl("arena.4096.purge", NULL, NULL, NULL, 0);
  else if (t->malloc_trim != NULL) t->malloc_trim(0);
}

/* What the loaded allocator says about itself: bytes in use by the program
 * and bytes it holds (committed), or -1 when it cannot say.
 *   trimalloc  stats "allocated" / "resident"
 *   jemalloc   "stats.allocated" / "stats.resident" (after an "epoch" refresh)
 *   mimalloc   - / mi_process_info's current_commit
 *   glibc      mallinfo2: uordblks + hblkhd / arena + hblkhd */
typedef struct {
  double in_use, held;
} bench_alloc_stats_t;

struct bench_mallinfo2 { /* glibc's struct mallinfo2 (2.33+) */
  size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};

static inline double bench_json_field(const char *json, const char *key) {
  char pat[64];
  snprintf(pat, sizeof pat, "\"%s\":", key);
  const char *p = strstr(json, pat);
  return p == NULL ? -1 : strtod(p + strlen(pat), NULL);
}

static inline bench_alloc_stats_t bench_alloc_stats(void) {
  bench_alloc_stats_t st = {-1, -1};
  const char *who = bench_allocator();
  if (strcmp(who, "trimalloc") == 0) {
    size_t (*json)(char *, size_t);
    *(void **)&json = dlsym(RTLD_DEFAULT, "trimalloc_stats_json");
    static char buf[4096];
    if (json != NULL) {
      json(buf, sizeof buf);
      st.in_use = bench_json_field(buf, "allocated");
      st.held = bench_json_field(buf, "resident");
    }
  } else if (strcmp(who, "jemalloc") == 0) {
    int (*ctl)(const char *, void *, size_t *, void *, size_t);
    *(void **)&ctl = dlsym(RTLD_DEFAULT, "mallctl");
    uint64_t epoch = 1;
    size_t v, sz = sizeof epoch;
    ctl("epoch", &epoch, &sz, &epoch, sz);
    sz = sizeof v;
    if (ctl("stats.allocated", &v, &sz, NULL, 0) == 0) st.in_use = (double)v;
    sz = sizeof v;
    if (ctl("stats.resident", &v, &sz, NULL, 0) == 0) st.held = (double)v;
  } else if (strcmp(who, "mimalloc") == 0) {
    void (*info)(size_t *, size_t *, size_t *, size_t *, size_t *, size_t *, size_t *, size_t *);
    *(void **)&info = dlsym(RTLD_DEFAULT, "mi_process_info");
    size_t e, u, s, rss, prss, commit, pcommit, pf;
    if (info != NULL) {
      info(&e, &u, &s, &rss, &prss, &commit, &pcommit, &pf);
      st.held = (double)commit;
    }
  } else {
    struct bench_mallinfo2 (*mi)(void);
    *(void **)&mi = dlsym(RTLD_DEFAULT, "mallinfo2");
    if (mi != NULL) {
      struct bench_mallinfo2 m = mi();
      st.in_use = (double)(m.uordblks + m.hblkhd);
      st.held = (double)(m.arena + m.hblkhd);
    }
  }
  return st;
}

/* xorshift64*: fast, deterministic, good enough for picking sizes. */
typedef struct { uint64_t s; } bench_rng_t;

static inline uint64_t bench_rand(bench_rng_t *r) {
  uint64_t x = r->s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  r->s = x;
  return x * 0x2545F4914F6CDD1DULL;
}

/* Uniform in [lo, hi]. */
static inline size_t bench_range(bench_rng_t *r, size_t lo, size_t hi) {
  return lo + (size_t)(bench_rand(r) % (uint64_t)(hi - lo + 1));
}

/* Log-uniform in [lo, hi]: every power of two between them equally likely. */
static inline size_t bench_log_range(bench_rng_t *r, size_t lo, size_t hi) {
  double u = (double)(bench_rand(r) >> 11) * (1.0 / 9007199254740992.0);
  double l = __builtin_log((double)lo), h = __builtin_log((double)hi);
  size_t n = (size_t)__builtin_exp(l + u * (h - l));
  return n < lo ? lo : n > hi ? hi : n;
}

static inline void *bench_xmalloc(size_t n) {
  void *p = malloc(n);
  if (p == NULL) {
    fprintf(stderr, "bench: malloc(%zu) failed\n", n);
    exit(2);
  }
  return p;
}

/* "--name value" option parsing, integers only. */
static inline long long bench_opt(int argc, char **argv, const char *name, long long dflt) {
  for (int i = 1; i + 1 < argc; i++)
    if (strcmp(argv[i], name) == 0) return strtoll(argv[i + 1], NULL, 0);
  return dflt;
}

/* The result line. Build it with bench_json_* and finish with bench_json_end,
 * which prints it. Fixed buffer, no malloc (the programs measure malloc). */
typedef struct {
  char buf[8192];
  size_t len;
} bench_json_t;

static inline void bench_json_raw(bench_json_t *j, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(j->buf + j->len, sizeof j->buf - j->len, fmt, ap);
  va_end(ap);
  if (n > 0) j->len += (size_t)n;
  if (j->len >= sizeof j->buf) j->len = sizeof j->buf - 1;
}

static inline void bench_json_begin(bench_json_t *j, const char *workload) {
  j->len = 0;
  bench_json_raw(j, "{\"workload\":\"%s\",\"allocator\":\"%s\"", workload, bench_allocator());
}

static inline void bench_json_num(bench_json_t *j, const char *key, double v) {
  bench_json_raw(j, ",\"%s\":%.9g", key, v);
}

static inline void bench_json_str(bench_json_t *j, const char *key, const char *v) {
  bench_json_raw(j, ",\"%s\":\"%s\"", key, v);
}

/* key_in_use and key_held from bench_alloc_stats(), -1 meaning unknown. */
static inline void bench_json_alloc_stats(bench_json_t *j, const char *key, bench_alloc_stats_t st) {
  char k[64];
  snprintf(k, sizeof k, "%s_in_use", key);
  bench_json_num(j, k, st.in_use);
  snprintf(k, sizeof k, "%s_held", key);
  bench_json_num(j, k, st.held);
}

static inline void bench_json_end(bench_json_t *j) {
  bench_json_raw(j, "}");
  printf("BENCH %s\n", j->buf);
  fflush(stdout);
}

/* Keeps the compiler from dropping work whose result is never used. */
static volatile uint64_t bench_sink;

#endif
