/* Options: one table. Each is read once from TRIMALLOC_<NAME> at start,
 * without allocating; a bad value warns once and keeps the default. */
#include "internal.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>

/* The one table: X(ID, name, default, min, max, doc); the variable is
 * TRIMALLOC_<ID>, and the option's slot ta_options[TA_OPT_<ID>]. */
#define TA_OPTIONS(X)                                                                                          \
  X(PURGE_DELAY_MS, "purge_delay_ms", 100, 0, 3600000, "free pages idle this long are returned to the OS")     \
  X(UNMAP_DELAY_MS, "unmap_delay_ms", 1000, 0, 3600000, "empty segments idle this long are unmapped")          \
  X(ARENAS, "arenas", 0, 0, TA_ARENAS_MAX,                                                                     \
    "shared arenas (0: one, and more up to one per CPU for threads that allocate at once; N: by CPU)")          \
  X(TCACHE_BYTES, "tcache_bytes", 256 << 10, 0, 64 << 20,                                                      \
    "least bound on the free blocks one thread caches (0: no thread caches)")                                  \
  X(TCACHE_TOTAL, "tcache_total", 4 << 20, 0, 1 << 30,                                                         \
    "thread caches' bytes shared out: each takes this / threads (to a power of two), at least tcache_bytes")   \
  X(BACKGROUND, "background", 1, 0, 1, "a background thread purges what stays free purge_delay_ms")            \
  X(THP, "thp", 0, 0, 1, "1: transparent huge pages for heaps over 8 MiB; routine purges keep them whole")     \
  X(SHOW_STATS, "show_stats", 0, 0, 1, "print the stats to stderr at exit")                                    \
  X(VERBOSE, "verbose", 0, 0, 1, "say at start that trimalloc is active")                                      \
  X(PROF, "prof", 0, 0, 1, "heap profiler: sample allocations from the start")                                 \
  X(PROF_INTERVAL, "prof_interval", 512 << 10, 1, TA_PROF_INTERVAL_MAX,                                        \
    "mean bytes between samples (per-byte Poisson sampling)")                                                  \
  X(PROF_MAX_BYTES, "prof_max_bytes", 64 << 20, 1 << 20, (long long)1 << 40,                                   \
    "bound on the profiler's own metadata (samples, stacks, names)")                                           \
  X(PROF_GROWTH, "prof_growth", 0, 0, (long long)1 << 50,                                                      \
    "dump each time estimated live bytes pass the last growth dump's by this much (0: off)")                   \
  X(PROF_AT_EXIT, "prof_at_exit", 0, 0, 1, "dump the live set at exit")                                        \
  X(PROF_KEEP, "prof_keep", 20, 0, 4096, "profile files kept per process and reason (0: all)")                 \
  X(PROF_UNWIND, "prof_unwind", 0, 0, 3,                                                                       \
    "native stacks: 0 default (libgcc on glibc, frame pointers on musl), 1 libgcc, 2 frame pointers, "         \
    "3 libgcc without the x86-64 rule cache")

#define TA_COUNT_OPTION(ID, name, def, min, max, doc) +1
_Static_assert(0 TA_OPTIONS(TA_COUNT_OPTION) == TA_OPT_COUNT, "one row of TA_OPTIONS per ta_opt_t");

typedef struct {
  const char *name, *env;
  long long min, max;
  const char *doc;
} ta_option_desc_t;

static const ta_option_desc_t descs[TA_OPT_COUNT] = {
#define TA_DESC(ID, name, def, min, max, doc) [TA_OPT_##ID] = {name, "TRIMALLOC_" #ID, min, max, doc},
    TA_OPTIONS(TA_DESC)
#undef TA_DESC
};

/* The defaults are in place before ta_options_init runs (an option read
 * before the process is initialised sees its default). */
_Atomic long long ta_options[TA_OPT_COUNT] = {
#define TA_DEFAULT(ID, name, def, min, max, doc) [TA_OPT_##ID] = def,
    TA_OPTIONS(TA_DEFAULT)
#undef TA_DEFAULT
};

static bool parse(const char *s, long long *out) {
  if (!s || !*s) return false;
  if (!strcmp(s, "true") || !strcmp(s, "yes") || !strcmp(s, "on")) return *out = 1, true;
  if (!strcmp(s, "false") || !strcmp(s, "no") || !strcmp(s, "off")) return *out = 0, true;
  char *end;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (errno || end == s) return false;
  int shift = *end == 'K' || *end == 'k' ? 10 : *end == 'M' || *end == 'm' ? 20 : *end == 'G' || *end == 'g' ? 30 : 0;
  if (shift) { /* byte values: 512K, 64M, 1G */
    end++;
    if (v < 0 || v > (LLONG_MAX >> shift)) return false;
    v <<= shift;
  }
  if (*end) return false;
  *out = v;
  return true;
}

void ta_options_init(void) {
  int saved = errno;
  for (size_t i = 0; i < TA_OPT_COUNT; i++) {
    const char *v = ta_prim_getenv(descs[i].env);
    if (!v) continue;
    long long x;
    if (parse(v, &x) && x >= descs[i].min && x <= descs[i].max) ta_relaxed_store(&ta_options[i], x);
    else ta_say("warning: ", descs[i].env, "=", v, " is not a valid value; keeping the default");
  }
  errno = saved;
}

static int find(const char *name) {
  if (!name) return -1;
  for (size_t i = 0; i < TA_OPT_COUNT; i++)
    if (!strcmp(name, descs[i].name)) return (int)i;
  return -1;
}

TRIMALLOC_API int trimalloc_option_get(const char *name, long long *value) {
  int i = find(name);
  if (i < 0 || !value) return EINVAL;
  *value = ta_opt((ta_opt_t)i);
  return 0;
}

/* trimalloc_option_set (init.c) without its side effects. */
int ta_option_set(const char *name, long long value) {
  int i = find(name);
  if (i < 0) return EINVAL;
  if (value < descs[i].min || value > descs[i].max) return ERANGE;
  ta_relaxed_store(&ta_options[i], value);
  return 0;
}

TRIMALLOC_API const char *trimalloc_option_name(size_t i) {
  return i < TA_OPT_COUNT ? descs[i].name : NULL;
}

/* "name=value name=value" for the verbose start line. */
size_t ta_options_format(char *buf, size_t size) {
  size_t len = 0;
  for (size_t i = 0; i < TA_OPT_COUNT; i++) {
    char num[24];
    size_t nl = ta_fmt_u64(num, (uint64_t)ta_opt((ta_opt_t)i));
    const char *parts[] = {i ? " " : "", descs[i].name, "=", num};
    size_t lens[] = {i ? 1u : 0u, strlen(descs[i].name), 1, nl};
    for (size_t k = 0; k < 4; k++)
      for (size_t j = 0; j < lens[k]; j++, len++)
        if (len + 1 < size) buf[len] = parts[k][j];
  }
  if (size) buf[len < size ? len : size - 1] = 0;
  return len;
}
