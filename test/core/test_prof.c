/* The heap profiler (core/prof*.c), read back through its dumps (gunzipped
 * and decoded here, prof_decode.h):
 *  - accuracy: sites with known live bytes (small, medium, large, huge and
 *    aligned blocks, 8 MiB and up each): each site's estimate within 3
 *    standard deviations sqrt(R x bytes) of the truth, the sum within 5% of
 *    the exact allocated counter the dump carries;
 *  - a freed site leaves the live set; realloc in place of a sampled block;
 *    off samples nothing;
 *  - stacks: the site is the leaf, its callers follow (through libc's qsort
 *    with libgcc's unwinder); interpreter frames from a hook replace the
 *    native frames from the eval function up, named by name_frame; the tag;
 *  - interval 1 (every allocation) in threads, with signals and forks, no
 *    deadlock; growth dumps at the right points; keep; a fork child's
 *    numbering; the peak set; a dump of 10,000 samples from a second thread
 *    while others allocate (its time and their longest malloc);
 *  - `go tool pprof -raw` parses a dump (when /usr/bin/go exists). */
#include "prof_decode.h"

#include <dirent.h>
#include <math.h>
#include <signal.h>
#include <sys/wait.h>

static char tmpdir[64];

/* ---- reading a dump ---- */

static prof_t pr;
static uint8_t *raw;

static int dump_and_load(int kind, char *path) {
  char written[512];
  int r = trimalloc_prof_dump(path, kind, written, sizeof written);
  if (!CHECK(r == 0, "trimalloc_prof_dump: %s", strerror(r))) return 0;
  if (!CHECK(!path || !strcmp(written, path), "written %s", written)) return 0;
  unload(&pr, raw);
  raw = NULL;
  return load(written, &pr, &raw);
}

/* The function name of a sample's i-th location (leaf first). */
static const char *frame_name(const dsample_t *s, size_t i) {
  if (i >= s->nlocs) return "";
  const dloc_t *l = loc_by_id(&pr, s->locs[i]);
  const dfunc_t *f = l ? func_by_id(&pr, l->function) : NULL;
  return f ? S(&pr, f->name) : "<no function>";
}

/* Sum of a value (index v: 0 alloc_objects .. 3 inuse_space) over samples
 * whose leaf is `leaf` (NULL: all). */
static int64_t sum_leaf(const char *leaf, int v) {
  int64_t t = 0;
  for (size_t i = 0; i < pr.nsample; i++)
    if (!leaf || !strcmp(frame_name(&pr.sample[i], 0), leaf)) t += pr.sample[i].vals[v];
  return t;
}

static int64_t comment_value(const char *key) {
  for (size_t i = 0; i < pr.ncomment; i++) {
    const char *c = S(&pr, pr.comment[i]);
    size_t n = strlen(key);
    if (!strncmp(c, key, n) && c[n] == '=') return strtoll(c + n + 1, NULL, 10);
  }
  return -1;
}

/* ---- allocation sites (their names are what the dump's leaf shows; the
 * test is linked with -rdynamic so that dladdr finds them) ---- */
#define SITE __attribute__((noinline, used))
SITE void **site_small(size_t n, size_t size) {
  void **v = calloc(n, sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = trimalloc_malloc(size);
  return v;
}
SITE void **site_medium(size_t n, size_t size) {
  void **v = calloc(n, sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = trimalloc_malloc(size);
  return v;
}
SITE void **site_calloc(size_t n, size_t size) {
  void **v = calloc(n, sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = trimalloc_calloc(1, size);
  return v;
}
SITE void **site_large(size_t n, size_t size) {
  void **v = calloc(n, sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = trimalloc_malloc(size);
  return v;
}
SITE void **site_aligned(size_t n, size_t size) {
  void **v = calloc(n, sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = trimalloc_aligned_alloc(4096, size);
  return v;
}
SITE void **site_huge(size_t n, size_t size) {
  void **v = calloc(n, sizeof *v);
  for (size_t i = 0; i < n; i++) v[i] = trimalloc_malloc(size);
  return v;
}

static void free_all(void **v, size_t n) {
  for (size_t i = 0; i < n; i++) trimalloc_free(v[i]);
  free(v);
}

static uint64_t stat_samples(void) {
  trimalloc_stats_t st;
  trimalloc_stats(&st, sizeof st);
  return st.prof_samples;
}

/* ---- accuracy ---- */
typedef struct {
  const char *name;
  void **(*fn)(size_t, size_t);
  size_t n, size;
  void **v;
  double truth;
} site_t;

static void test_accuracy(void) {
  const size_t R = 16 << 10;
  CHECK(trimalloc_prof_start(R) == 0);
  CHECK(trimalloc_prof_interval() == R);
  site_t sites[] = {
      {"site_small", site_small, (8 << 20) / 48, 48, NULL, 0},
      {"site_medium", site_medium, (10 << 20) / 3000, 3000, NULL, 0},
      {"site_calloc", site_calloc, (8 << 20) / 20000, 20000, NULL, 0},
      {"site_aligned", site_aligned, (8 << 20) / 5000, 5000, NULL, 0},
      {"site_large", site_large, 12, 700 << 10, NULL, 0},
      {"site_huge", site_huge, 3, 3 << 20, NULL, 0},
  };
  size_t ns = sizeof sites / sizeof sites[0];
  for (size_t i = 0; i < ns; i++) {
    sites[i].v = sites[i].fn(sites[i].n, sites[i].size);
    for (size_t k = 0; k < sites[i].n; k++) sites[i].truth += (double)trimalloc_malloc_usable_size(sites[i].v[k]);
  }
  char path[256];
  snprintf(path, sizeof path, "%s/accuracy.pb.gz", tmpdir);
  if (dump_and_load(TRIMALLOC_PROF_LIVE, path)) {
    CHECK(pr.ntypes == 4 && pr.period == R, "period %llu", (unsigned long long)pr.period);
    double total = 0;
    for (size_t i = 0; i < ns; i++) {
      double est = (double)sum_leaf(sites[i].name, 3), sd = sqrt((double)R * sites[i].truth);
      printf("   %-13s truth %9.0f estimate %9.0f (%+.2f sd)\n", sites[i].name, sites[i].truth, est,
             (est - sites[i].truth) / sd);
      CHECK(fabs(est - sites[i].truth) <= 3 * sd, "%s: estimate %.0f, truth %.0f, sd %.0f", sites[i].name, est,
            sites[i].truth, sd);
      total += est;
    }
    int64_t exact = comment_value("exact_allocated");
    printf("   all sites: estimate %.0f, exact_allocated %lld\n", total, (long long)exact);
    CHECK(exact > 0 && fabs(total - (double)exact) <= 0.05 * (double)exact, "total %.0f exact %lld", total,
          (long long)exact);
    CHECK(fabs((double)sum_leaf(NULL, 3) - total) < 1, "no sample outside the sites");
    /* blocks >= R are exact: weight 1, one object each */
    CHECK(sum_leaf("site_large", 2) == 12 && sum_leaf("site_huge", 2) == 3);
  }
  /* a freed site disappears from the live set, its allocations stay in alloc_space */
  uint64_t before = stat_samples();
  free_all(sites[0].v, sites[0].n);
  free_all(sites[4].v, sites[4].n);
  CHECK(stat_samples() < before);
  if (dump_and_load(TRIMALLOC_PROF_LIVE, path)) {
    CHECK(sum_leaf("site_small", 3) == 0 && sum_leaf("site_large", 3) == 0, "freed sites still live");
    CHECK(sum_leaf("site_small", 1) > 0 && sum_leaf("site_large", 1) > 0, "alloc_space keeps them");
    CHECK(sum_leaf("site_medium", 3) > 0);
  }
  for (size_t i = 1; i < ns; i++)
    if (i != 4) free_all(sites[i].v, sites[i].n);
  CHECK(stat_samples() == 0, "%llu samples left after every block was freed", (unsigned long long)stat_samples());
  trimalloc_prof_stop();
  CHECK(trimalloc_prof_interval() == 0);
}

/* Off: nothing is sampled (the countdowns only look at the epoch). */
static void test_off(void) {
  trimalloc_prof_stop();
  trimalloc_stats_t a, b;
  trimalloc_stats(&a, sizeof a);
  void **v = site_small(200000, 64);
  void **w = site_large(20, 1 << 20);
  trimalloc_stats(&b, sizeof b);
  CHECK(b.prof_samples == a.prof_samples && b.prof_dropped == a.prof_dropped);
  free_all(v, 200000);
  free_all(w, 20);
  CHECK(trimalloc_prof_start((size_t)2 << 30) == EINVAL, "an interval above 1 GiB");
}

/* realloc keeping a sampled block in place is a free and an allocation. */
static void test_realloc(void) {
  CHECK(trimalloc_prof_start(1) == 0);
  void *p = trimalloc_malloc(1000);
  uint64_t n = stat_samples();
  CHECK(n >= 1);
  void *q = trimalloc_realloc(p, 990); /* in place */
  CHECK(q == p);
  CHECK(stat_samples() == n, "the block is sampled once (%llu, was %llu)", (unsigned long long)stat_samples(),
        (unsigned long long)n);
  trimalloc_prof_stop();
  void *r = trimalloc_realloc(q, 980);
  CHECK(r == q && stat_samples() == n - 1, "off: the in-place realloc forgets the sample");
  trimalloc_free(r);
  CHECK(stat_samples() == n - 1);
}

int main(void) {
  snprintf(tmpdir, sizeof tmpdir, "/tmp/test_prof.XXXXXX");
  if (!mkdtemp(tmpdir)) return perror("mkdtemp"), 1;
  setenv("TRIMALLOC_PROF_PREFIX", tmpdir, 1);
  RUN(test_off);
  RUN(test_accuracy);
  RUN(test_realloc);
  unload(&pr, raw);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
  if (system(cmd) != 0) fprintf(stdout, "could not remove %s\n", tmpdir);
  return check_summary();
}
