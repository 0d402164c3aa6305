/* Stats: the versioned struct (argument checks, partial fills), the fields'
 * relations, how they move with allocation, free and trim, reading from
 * another thread while threads allocate, and the JSON text (valid JSON with
 * every field, truncated like snprintf). */
#include <math.h>
#include <pthread.h>
#include <stddef.h>
#include <sys/resource.h>
#include <sys/wait.h>

#include "check.h"

#define U(x) ((unsigned long long)(x))

/* ---- a small strict JSON reader: enough to say "valid" and to find the
 * top-level numbers ---- */
typedef struct json_s {
  const char *s;
  int depth;
  /* top-level members seen */
  char keys[64][48];
  double vals[64];
  int is_num[64];
  int n;
} json_t;

static void ws(json_t *j) {
  while (*j->s == ' ' || *j->s == '\n' || *j->s == '\t' || *j->s == '\r') j->s++;
}
static int value(json_t *j, double *num, int *is_num);
static int string(json_t *j, char *out, size_t outlen) {
  if (*j->s != '"') return 0;
  j->s++;
  size_t o = 0;
  while (*j->s != '"') {
    unsigned char c = (unsigned char)*j->s;
    if (c < 0x20) return 0;
    if (c == '\\') {
      j->s++;
      if (!strchr("\"\\/bfnrtu", *j->s)) return 0;
      if (*j->s == 'u') {
        for (int i = 1; i <= 4; i++)
          if (!strchr("0123456789abcdefABCDEF", j->s[i]) || !j->s[i]) return 0;
        j->s += 4;
      }
    }
    if (out && o + 1 < outlen) out[o++] = (char)c;
    j->s++;
  }
  if (out) out[o] = 0;
  j->s++;
  return 1;
}
static int number(json_t *j, double *num) {
  const char *start = j->s;
  if (*j->s == '-') j->s++;
  if (*j->s == '0')
    j->s++;
  else if (*j->s >= '1' && *j->s <= '9')
    while (*j->s >= '0' && *j->s <= '9') j->s++;
  else
    return 0;
  if (*j->s == '.') {
    j->s++;
    if (!(*j->s >= '0' && *j->s <= '9')) return 0;
    while (*j->s >= '0' && *j->s <= '9') j->s++;
  }
  if (*j->s == 'e' || *j->s == 'E') {
    j->s++;
    if (*j->s == '+' || *j->s == '-') j->s++;
    if (!(*j->s >= '0' && *j->s <= '9')) return 0;
    while (*j->s >= '0' && *j->s <= '9') j->s++;
  }
  if (num) *num = strtod(start, NULL);
  return 1;
}
static int members(json_t *j, char close, int is_object) {
  ws(j);
  if (*j->s == close) {
    j->s++;
    return 1;
  }
  for (;;) {
    ws(j);
    char key[48];
    int top = is_object && j->depth == 1;
    if (is_object) {
      if (!string(j, key, sizeof key)) return 0;
      ws(j);
      if (*j->s++ != ':') return 0;
      ws(j);
    }
    double num = 0;
    int isn = 0;
    if (!value(j, &num, &isn)) return 0;
    if (top && j->n < 64) {
      snprintf(j->keys[j->n], sizeof j->keys[0], "%s", key);
      j->vals[j->n] = num;
      j->is_num[j->n] = isn;
      j->n++;
    }
    ws(j);
    if (*j->s == ',') {
      j->s++;
      continue;
    }
    if (*j->s++ == close) return 1;
    return 0;
  }
}
static int value(json_t *j, double *num, int *is_num) {
  ws(j);
  *is_num = 0;
  char c = *j->s;
  if (c == '{' || c == '[') {
    j->s++;
    j->depth++;
    int ok = members(j, c == '{' ? '}' : ']', c == '{');
    j->depth--;
    return ok;
  }
  if (c == '"') return string(j, NULL, 0);
  if (!strncmp(j->s, "true", 4) || !strncmp(j->s, "null", 4)) return j->s += 4, 1;
  if (!strncmp(j->s, "false", 5)) return j->s += 5, 1;
  *is_num = 1;
  return number(j, num);
}
/* Valid JSON whose top level is an object. */
static int json_parse(json_t *j, const char *text) {
  memset(j, 0, sizeof *j);
  j->s = text;
  ws(j);
  if (*j->s != '{') return 0;
  double d;
  int isn;
  if (!value(j, &d, &isn)) return 0;
  ws(j);
  return *j->s == 0;
}
static int json_get(const json_t *j, const char *key, double *out) {
  for (int i = 0; i < j->n; i++)
    if (!strcmp(j->keys[i], key) && j->is_num[i]) return *out = j->vals[i], 1;
  return 0;
}

/* ---- the struct ---- */

static void test_stats_arguments(void) {
  trimalloc_stats_t s;
  CHECK(trimalloc_stats(NULL, sizeof s) == EINVAL);
  CHECK(trimalloc_stats(&s, 0) == EINVAL);
  CHECK(trimalloc_stats(&s, 4) == EINVAL);
  CHECK(trimalloc_stats(&s, 7) == EINVAL);
  memset(&s, 0xEE, sizeof s);
  CHECK(trimalloc_stats(&s, sizeof s) == 0);
  CHECK(s.version == TRIMALLOC_STATS_VERSION, "version %u", s.version);
  CHECK(s.size == sizeof s, "size %u, struct %zu", s.size, sizeof s);
}

/* An older caller's smaller struct: filled up to its size, not a byte past. */
static void test_stats_partial_fill(void) {
  struct {
    trimalloc_stats_t s;
    unsigned char guard[64];
  } big;
  size_t sizes[] = {8, offsetof(trimalloc_stats_t, active), offsetof(trimalloc_stats_t, fragmentation),
                    sizeof(trimalloc_stats_t) - 8};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    memset(&big, 0xEE, sizeof big);
    int r = trimalloc_stats(&big.s, sizes[i]);
    CHECK(r == 0, "size %zu: returned %d", sizes[i], r);
    CHECK(big.s.version == TRIMALLOC_STATS_VERSION && big.s.size <= sizes[i],
          "size %zu: version %u, size field %u", sizes[i], big.s.version, big.s.size);
    const unsigned char *b = (const unsigned char *)&big;
    size_t touched = 0;
    for (size_t k = sizes[i]; k < sizeof big; k++) touched += b[k] != 0xEE;
    CHECK(touched == 0, "size %zu: %zu bytes written past it", sizes[i], touched);
  }
  /* A newer caller's bigger struct: the known part filled, the rest left. */
  memset(&big, 0xEE, sizeof big);
  CHECK(trimalloc_stats(&big.s, sizeof big) == 0);
  CHECK(big.s.size == sizeof big.s, "size field %u", big.s.size);
  size_t touched = 0;
  for (size_t k = 0; k < sizeof big.guard; k++) touched += big.guard[k] != 0xEE;
  CHECK(touched == 0, "%zu bytes written past the struct", touched);
}

static int consistent(const trimalloc_stats_t *s, char *why, size_t len) {
  double frag = s->resident ? 1.0 - (double)s->allocated / (double)s->resident : 0.0;
  if (s->version != TRIMALLOC_STATS_VERSION) return snprintf(why, len, "version %u", s->version), 0;
  if (s->allocated > s->active)
    return snprintf(why, len, "allocated %llu > active %llu", U(s->allocated), U(s->active)), 0;
  if (s->active > s->resident)
    return snprintf(why, len, "active %llu > resident %llu", U(s->active), U(s->resident)), 0;
  if (s->resident + s->purged > s->mapped)
    return snprintf(why, len, "resident %llu + purged %llu > mapped %llu", U(s->resident), U(s->purged),
                    U(s->mapped)),
           0;
  if (s->peak_active < s->active)
    return snprintf(why, len, "peak_active %llu < active %llu", U(s->peak_active), U(s->active)), 0;
  if (fabs(s->fragmentation - frag) > 1e-6)
    return snprintf(why, len, "fragmentation %f, 1 - allocated/resident = %f", s->fragmentation, frag), 0;
  if (s->fragmentation < 0 || s->fragmentation > 1)
    return snprintf(why, len, "fragmentation %f", s->fragmentation), 0;
  if (s->frees > s->allocations)
    return snprintf(why, len, "frees %llu > allocations %llu", U(s->frees), U(s->allocations)), 0;
  return 1;
}

static void test_stats_fields_consistent(void) {
  char why[160] = "";
  trimalloc_stats_t s = stats_now();
  CHECK(consistent(&s, why, sizeof why), "at start: %s", why);
  void *p[1000];
  for (int i = 0; i < 1000; i++) p[i] = trimalloc_malloc((size_t)i * 97 + 1);
  void *h = trimalloc_malloc(9 * MiB);
  s = stats_now();
  CHECK(consistent(&s, why, sizeof why), "with blocks: %s", why);
  CHECK(s.segments >= 1 && s.heaps >= 1 && s.metadata > 0 && s.mapped > 0,
        "segments %llu heaps %llu metadata %llu mapped %llu", U(s.segments), U(s.heaps), U(s.metadata),
        U(s.mapped));
  for (int i = 0; i < 1000; i += 2) trimalloc_free(p[i]);
  s = stats_now();
  CHECK(consistent(&s, why, sizeof why), "half freed: %s", why);
  for (int i = 1; i < 1000; i += 2) trimalloc_free(p[i]);
  trimalloc_free(h);
  trimalloc_trim();
  s = stats_now();
  CHECK(consistent(&s, why, sizeof why), "after trim: %s", why);
}

/* allocated follows N allocated bytes up and back down. */
static void test_stats_follow_allocation(void) {
  enum { N = 65536, SZ = 1024 };
  static void *p[N];
  trimalloc_trim();
  trimalloc_stats_t s0 = stats_now();
  size_t usable = 0;
  for (int i = 0; i < N; i++) {
    p[i] = trimalloc_malloc(SZ);
    usable += trimalloc_malloc_usable_size(p[i]);
  }
  trimalloc_stats_t s1 = stats_now();
  CHECK(s1.allocated >= s0.allocated + usable * 9 / 10 &&
            s1.allocated <= s0.allocated + usable * 5 / 4 + 4 * MiB,
        "allocated %llu -> %llu after allocating %zu usable bytes", U(s0.allocated), U(s1.allocated), usable);
  CHECK(s1.peak_active >= s1.active);
  CHECK(s1.allocations >= s0.allocations + N * 9 / 10, "allocations %llu -> %llu", U(s0.allocations),
        U(s1.allocations));
  CHECK(s1.resident >= s0.resident + usable * 9 / 10, "resident %llu -> %llu", U(s0.resident),
        U(s1.resident));
  for (int i = 0; i < N; i++) trimalloc_free(p[i]);
  trimalloc_stats_t s2 = stats_now();
  CHECK(s2.allocated <= s0.allocated + usable / 10 + 4 * MiB,
        "allocated %llu after freeing everything (was %llu before, %llu at peak)", U(s2.allocated),
        U(s0.allocated), U(s1.allocated));
  trimalloc_trim();
  trimalloc_stats_t s3 = stats_now();
  CHECK(s3.allocated <= s0.allocated + 1 * MiB, "allocated %llu after free and trim (was %llu)",
        U(s3.allocated), U(s0.allocated));
  CHECK(s3.frees >= s0.frees + N * 9 / 10, "frees %llu -> %llu", U(s0.frees), U(s3.frees));
  CHECK(s3.peak_active >= s1.active, "peak_active %llu < active %llu seen before", U(s3.peak_active),
        U(s1.active));
  /* Counters only grow. */
  CHECK(s2.allocations >= s1.allocations && s3.allocations >= s2.allocations,
        "allocations went down: %llu -> %llu -> %llu", U(s1.allocations), U(s2.allocations),
        U(s3.allocations));
  CHECK(s3.resident <= s1.resident - usable / 2, "resident %llu -> %llu after trim", U(s1.resident),
        U(s3.resident));
}

/* A huge block: its own mapping, counted; no longer allocated once freed,
 * and unmapped by trim at the latest (a freed mapping may be kept a moment
 * for reuse). */
static void test_stats_huge_block(void) {
  trimalloc_stats_t s0 = stats_now();
  void *h = trimalloc_malloc(20 * MiB);
  trimalloc_stats_t s1 = stats_now();
  CHECK(s1.huge_allocations == s0.huge_allocations + 1, "huge_allocations %llu -> %llu",
        U(s0.huge_allocations), U(s1.huge_allocations));
  CHECK(s1.allocated >= s0.allocated + 20 * MiB, "allocated %llu -> %llu", U(s0.allocated), U(s1.allocated));
  CHECK(s1.mapped >= s0.mapped + 20 * MiB, "mapped %llu -> %llu", U(s0.mapped), U(s1.mapped));
  trimalloc_free(h);
  trimalloc_stats_t s2 = stats_now();
  CHECK(s2.allocated + 20 * MiB <= s1.allocated, "allocated %llu -> %llu", U(s1.allocated), U(s2.allocated));
  CHECK(s2.active + 20 * MiB <= s1.active, "active %llu -> %llu", U(s1.active), U(s2.active));
  size_t released = trimalloc_trim();
  trimalloc_stats_t s3 = stats_now();
  CHECK(s3.mapped + 20 * MiB <= s1.mapped, "mapped %llu -> %llu after freeing a huge block and trim",
        U(s1.mapped), U(s3.mapped));
  CHECK(released >= 20 * MiB || s2.mapped + 20 * MiB <= s1.mapped,
        "trim released %zu bytes with a freed 20 MiB block pending", released);
}

/* A freed huge mapping reused for a smaller request keeps only what the
 * request needs: the rest is neither counted as allocated nor kept resident
 * (issue 17, item 4: a 16 MiB malloc got a cached 60 MiB mapping as it was,
 * all resident, counted as allocated, out of a trim's reach). */
static void test_stats_huge_reuse_counts_request(void) {
  long long delay = option_swap("purge_delay_ms", 60000); /* the freed mapping stays cached, */
  long long bg = option_swap("background", 0);           /* and no idle purger expires it */
  trimalloc_trim();
  trimalloc_stats_t s0 = stats_now();
  size_t base = memory_now();
  uint8_t *big = trimalloc_malloc(60 * MiB);
  memset(big, 0x5a, 60 * MiB);
  trimalloc_free(big);
  uint8_t *p = trimalloc_malloc(16 * MiB);
  trimalloc_stats_t s1 = stats_now();
  size_t m = memory_now(), usable = trimalloc_malloc_usable_size(p);
  CHECK(p == big, "the cached mapping was not reused (%p, then %p)", (void *)big, (void *)p);
  CHECK(usable < 16 * MiB + 64 * KiB, "a 16 MiB malloc has %zu KiB usable", usable / KiB);
  CHECK(s1.allocated < s0.allocated + 17 * MiB, "allocated %llu -> %llu KiB for a 16 MiB block",
        U(s0.allocated / KiB), U(s1.allocated / KiB));
  CHECK(m < base + 24 * MiB, "%s %zu -> %zu KiB holding a 16 MiB block", TEST_SANITIZED ? "resident" : "RSS",
        base / KiB, m / KiB);
  trimalloc_free(p);
  option_swap("purge_delay_ms", delay);
  option_swap("background", bg);
  trimalloc_trim();
}

/* A cached mapping at most twice the request is taken whole and comes back
 * whole: a 12 MiB block from a freed 20 MiB mapping, then an 18 MiB one,
 * fault nothing in (mimalloc-bench's malloc-large: each cut tail was faulted
 * in again by the next bigger block, 1.79M faults against glibc's 0.51M);
 * what is allocated is the request. */
static void test_stats_huge_reuse_whole_within_twice(void) {
#ifdef TEST_HARDENED
  return; /* the hardened build cuts every reused mapping to its block (huge.c, TA_HUGE_SLACK) */
#endif
  long long delay = option_swap("purge_delay_ms", 60000);
  long long bg = option_swap("background", 0);
  trimalloc_trim();
  trimalloc_stats_t s0 = stats_now();
  uint8_t *big = trimalloc_malloc(20 * MiB);
  memset(big, 0x5a, 20 * MiB);
  trimalloc_free(big);
  long f0 = minor_faults();
  uint8_t *p = trimalloc_malloc(12 * MiB);
  memset(p, 0x11, 12 * MiB);
  trimalloc_stats_t s1 = stats_now();
  size_t usable = trimalloc_malloc_usable_size(p);
  trimalloc_free(p);
  uint8_t *q = trimalloc_malloc(18 * MiB);
  memset(q, 0x22, 18 * MiB);
  long faults = minor_faults() - f0;
  CHECK(p == big && q == big, "the cached mapping was not reused whole (%p, %p, %p)", (void *)big, (void *)p,
        (void *)q);
  CHECK(faults < 256, "a 12 MiB then an 18 MiB block from a cached 20 MiB mapping: %ld faults", faults);
  CHECK(usable < 12 * MiB + 64 * KiB, "a 12 MiB malloc has %zu KiB usable", usable / KiB);
  CHECK(s1.allocated < s0.allocated + 13 * MiB, "allocated %llu -> %llu KiB for a 12 MiB block",
        U(s0.allocated / KiB), U(s1.allocated / KiB));
  trimalloc_free(q);
  option_swap("purge_delay_ms", delay);
  option_swap("background", bg);
  trimalloc_trim();
}

/* A request more than half again as big as every cached mapping gets a
 * fresh one and leaves the cache as it was, for the next smaller request:
 * a freed 6 MiB block's mapping serves a later 5 MiB block with no fault,
 * though a 20 MiB block came between (before, the 20 MiB block grew that
 * mapping and the 5 MiB one faulted in afresh: mimalloc-bench's
 * malloc-large, 5-25 MiB blocks each replaced by one of another size, 1.37M
 * faults against glibc's 0.51M). The cache grows so only while it holds no
 * more than the live huge blocks (here a 24 MiB block, never touched). */
static void test_stats_huge_cache_kept_past_bigger_request(void) {
  long long delay = option_swap("purge_delay_ms", 60000);
  long long bg = option_swap("background", 0);
  trimalloc_trim();
  uint8_t *live = trimalloc_malloc(24 * MiB);
  uint8_t *a = trimalloc_malloc(6 * MiB);
  memset(a, 0x5a, 6 * MiB);
  trimalloc_free(a);
  uint8_t *b = trimalloc_malloc(20 * MiB);
  memset(b, 0x33, 20 * MiB);
  long f0 = minor_faults();
  uint8_t *c = trimalloc_malloc(5 * MiB);
  memset(c, 0x11, 5 * MiB);
  long faults = minor_faults() - f0;
  CHECK(b != a && c == a, "the cached 6 MiB mapping was not kept for the 5 MiB block (%p, then %p and %p)",
        (void *)a, (void *)b, (void *)c);
  CHECK(faults < 256, "a 5 MiB block after a 20 MiB one, a freed 6 MiB mapping cached: %ld faults", faults);
  trimalloc_free(c);
  trimalloc_free(b);
  trimalloc_free(live);
  option_swap("purge_delay_ms", delay);
  option_swap("background", bg);
  trimalloc_trim();
}

/* ---- reading from another thread while threads allocate ---- */
static atomic_int busy_stop;

static void *busy(void *arg) {
  uint64_t rng = (uintptr_t)arg + 11;
  void *slot[128] = {0};
  while (!atomic_load(&busy_stop)) {
    unsigned i = (unsigned)(rng_next(&rng) % 128);
    trimalloc_free(slot[i]);
    slot[i] = trimalloc_malloc(rng_size(&rng) % (256 * KiB) + 1);
  }
  for (int i = 0; i < 128; i++) trimalloc_free(slot[i]);
  return NULL;
}

/* Threads that come and go while stats walk the heaps. */
static void *brief(void *arg) {
  (void)arg;
  void *p[32];
  for (int i = 0; i < 32; i++) p[i] = trimalloc_malloc((size_t)i * 300 + 1);
  for (int i = 0; i < 32; i++)
    if (i != 1) trimalloc_free(p[i]);
  return p[1]; /* outlives the thread; freed by another */
}

static void *comings_and_goings(void *arg) {
  (void)arg;
  while (!atomic_load(&busy_stop)) {
    pthread_t t;
    void *r = NULL;
    if (pthread_create(&t, NULL, brief, NULL) != 0) break;
    pthread_join(t, &r);
    trimalloc_free(r);
  }
  return NULL;
}

static void test_stats_from_another_thread(void) {
  pthread_t t[4];
  for (long i = 0; i < 3; i++) pthread_create(&t[i], NULL, busy, (void *)i);
  pthread_create(&t[3], NULL, comings_and_goings, NULL);
  long bad = 0, bad_json = 0;
  int reads = test_slow() ? 2000 : 20000;
  static char buf[8192];
  for (int i = 0; i < reads; i++) {
    trimalloc_stats_t s;
    if (trimalloc_stats(&s, sizeof s) != 0 || s.version != TRIMALLOC_STATS_VERSION ||
        !(s.fragmentation <= 1.0) || s.mapped == 0)
      bad++;
    if (i % 16 == 0) {
      size_t n = trimalloc_stats_json(buf, sizeof buf);
      json_t j;
      if (n >= sizeof buf || !json_parse(&j, buf)) bad_json++;
    }
  }
  atomic_store(&busy_stop, 1);
  for (int i = 0; i < 4; i++) pthread_join(t[i], NULL);
  CHECK(bad == 0, "%ld bad reads", bad);
  CHECK(bad_json == 0, "%ld bad JSON reads", bad_json);
}

/* ---- JSON ---- */

/* The background purger may change the numbers between two reads (it did,
 * in CI: purges and resident moved between the calls of a test). A test that
 * compares two reads takes them inside a window in which the JSON text read
 * before and after is the same, retried a few times. */
static int same_json(const char *before, size_t n) {
  static char after[16384];
  return trimalloc_stats_json(after, sizeof after) == n && memcmp(before, after, n) == 0;
}

static void test_stats_json_has_every_field(void) {
  static char buf[16384];
  size_t n = 0;
  trimalloc_stats_t s;
  int tries = 0;
  do {
    if (tries) usleep(2000);
    n = trimalloc_stats_json(buf, sizeof buf);
    s = stats_now();
  } while (!same_json(buf, n) && ++tries < 50);
  CHECK(tries < 50, "the stats changed between every pair of reads, 50 times");
  CHECK(n > 0 && n < sizeof buf && strlen(buf) == n, "length %zu, strlen %zu", n, strlen(buf));
  json_t j;
  if (!CHECK(json_parse(&j, buf), "not valid JSON: %.300s", buf)) return;
  double v;
  int missing = 0;
#define X_CHECK(type, name, unit, doc)                                            \
  if (!json_get(&j, #name, &v)) {                                                 \
    missing++;                                                                    \
    CHECK(0, "field %s missing or not a number", #name);                          \
  } else {                                                                        \
    double want = (double)s.name;                                                 \
    double tol = _Generic(s.name, double : 1e-3, default : 0.5);                  \
    CHECK(fabs(v - want) <= tol, "%s: JSON %.17g, struct %.17g", #name, v, want); \
  }
  TRIMALLOC_STATS_FIELDS(X_CHECK)
#undef X_CHECK
  CHECK(missing == 0);
}

/* Cross-check with a real JSON parser: Debian's python3 (not the allocator's
 * process: it reads the text on stdin). */
static void test_stats_json_python_parses(void) {
  const char *py = "/usr/bin/python3";
  if (access(py, X_OK) != 0) {
    SKIP(test_stats_json_python_parses, "no /usr/bin/python3");
    return;
  }
  static char buf[16384], cmd[4096];
  trimalloc_stats_json(buf, sizeof buf);
  int off = snprintf(cmd, sizeof cmd,
                     "%s -c 'import json,sys; d=json.load(sys.stdin); "
                     "sys.exit(0 if all(isinstance(d[k],(int,float)) for k in sys.argv[1:]) else 3)'",
                     py);
#define X_ARG(type, name, unit, doc) off += snprintf(cmd + off, sizeof cmd - (size_t)off, " %s", #name);
  TRIMALLOC_STATS_FIELDS(X_ARG)
#undef X_ARG
  fflush(stdout);
  FILE *f = popen(cmd, "w");
  if (!CHECK(f != NULL)) return;
  fputs(buf, f);
  int st = pclose(f);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "python3 json.load failed (status %d) on: %.300s", st, buf);
}

/* One pass over the sizes against `full` (n bytes); 0 and why on the first
 * difference. */
static int truncates_like_snprintf(const char *full, size_t n, char *why, size_t len) {
  static char buf[16384 + 64];
  if (trimalloc_stats_json(NULL, 0) != n) return snprintf(why, len, "NULL, 0 must return the needed length"), 0;
  memset(buf, '#', sizeof buf);
  if (trimalloc_stats_json(buf, 0) != n || buf[0] != '#') return snprintf(why, len, "size 0 must write nothing"), 0;
  size_t sizes[] = {1, 2, 10, n / 2, n, n + 1, n + 2};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t k = sizes[i];
    memset(buf, '#', sizeof buf);
    size_t r = trimalloc_stats_json(buf, k);
    size_t want_len = k - 1 < n ? k - 1 : n;
    if (r != n) return snprintf(why, len, "size %zu: returned %zu, want %zu", k, r, n), 0;
    if (buf[want_len] != 0 || strlen(buf) != want_len || memcmp(buf, full, want_len) != 0)
      return snprintf(why, len, "size %zu: wrong text or terminator", k), 0;
    if (buf[want_len + 1] != '#' || buf[k] != '#') return snprintf(why, len, "size %zu: wrote past the buffer", k), 0;
  }
  return 1;
}

static void test_stats_json_truncates_like_snprintf(void) {
  static char full[16384];
  char why[160] = "";
  int ok = 0, tries = 0;
  size_t n = 0;
  do {
    if (tries) usleep(2000);
    n = trimalloc_stats_json(full, sizeof full);
    ok = truncates_like_snprintf(full, n, why, sizeof why);
  } while (!same_json(full, n) && ++tries < 50);
  CHECK(tries < 50, "the stats changed during every pass, 50 times");
  CHECK(ok, "%s", why);
}

/* peak_active is the high-water mark of active (pages holding a live block,
 * and huge blocks): 40 new slabs of one small block each raise it by their
 * pages, not by their 64 KiB slices (2.5 MiB: what it counted before). First,
 * while little is allocated. */
static void test_peak_is_of_active(void) {
  trimalloc_stats_t s0 = stats_now();
  void *p[40];
  for (int c = 0; c < 40; c++) {
    size_t n = c < 8 ? 16 * (size_t)(c + 1) : ((size_t)128 << ((c - 8) / 8)) * (9 + (c - 8) % 8) / 8;
    p[c] = trimalloc_malloc(n);
  }
  trimalloc_stats_t s1 = stats_now();
  uint64_t before = s0.peak_active > s0.active ? s0.peak_active : s0.active;
  CHECK(s1.peak_active >= s1.active, "peak_active %llu < active %llu", U(s1.peak_active), U(s1.active));
  CHECK(s1.peak_active <= before + (s1.active - s0.active) + 64 * KiB,
        "peak_active %llu -> %llu for active %llu -> %llu: not the peak of active", U(s0.peak_active),
        U(s1.peak_active), U(s0.active), U(s1.active));
  for (int c = 0; c < 40; c++) trimalloc_free(p[c]);
}

int main(void) {
  RUN(test_peak_is_of_active);
  RUN(test_stats_arguments);
  RUN(test_stats_partial_fill);
  RUN(test_stats_fields_consistent);
  RUN(test_stats_follow_allocation);
  RUN(test_stats_huge_block);
  RUN(test_stats_huge_reuse_counts_request);
  RUN(test_stats_huge_reuse_whole_within_twice);
  RUN(test_stats_huge_cache_kept_past_bigger_request);
  RUN(test_stats_from_another_thread);
  RUN(test_stats_json_has_every_field);
  RUN(test_stats_json_python_parses);
  RUN(test_stats_json_truncates_like_snprintf);
  return check_summary();
}
