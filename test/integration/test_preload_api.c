/* Run with LD_PRELOAD=libtrimalloc.so (by test_preload.sh): every function of
 * the malloc API, called by its standard name, must be trimalloc's, and so
 * must what glibc allocates internally for the program (strdup, asprintf,
 * getline, ...), or freeing it would crash. Prints `ok - ...` / `FAIL - ...`
 * lines; the script counts them. Built without linking the library. */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../core/trimalloc.h"

static int failures;
#define CHECK(name, cond)                                         \
  do {                                                            \
    if (cond)                                                     \
      printf("ok - %s\n", name);                                  \
    else {                                                        \
      printf("FAIL - %s (%s, line %d)\n", name, #cond, __LINE__); \
      failures++;                                                 \
    }                                                             \
  } while (0)

static int (*ta_stats)(trimalloc_stats_t *, size_t);
static size_t (*ta_usable)(const void *);

static uint64_t huge_count(void) {
  trimalloc_stats_t s;
  memset(&s, 0, sizeof s);
  ta_stats(&s, sizeof s);
  return s.huge_allocations;
}

static uint64_t trims(void) {
  trimalloc_stats_t s;
  memset(&s, 0, sizeof s);
  ta_stats(&s, sizeof s);
  return s.trims;
}

/* volatile function pointers: the compiler must not replace or drop calls
 * to the standard names it knows as builtins. */
static void *(*volatile v_malloc)(size_t) = malloc;
static void *(*volatile v_calloc)(size_t, size_t) = calloc;
static void *(*volatile v_realloc)(void *, size_t) = realloc;
static void *(*volatile v_reallocarray)(void *, size_t, size_t) = reallocarray;
static int (*volatile v_posix_memalign)(void **, size_t, size_t) = posix_memalign;
static void *(*volatile v_aligned_alloc)(size_t, size_t) = aligned_alloc;
static void *(*volatile v_memalign)(size_t, size_t) = memalign;
static void *(*volatile v_valloc)(size_t) = valloc;
static void *(*volatile v_pvalloc)(size_t) = pvalloc;

/* Each standard function, asked for a huge block (own mapping), must bump
 * trimalloc's huge_allocations counter: it reached trimalloc, not glibc. */
static void test_every_function_is_trimallocs(void) {
  size_t big = 9u << 20;
  uint64_t n0 = huge_count();
  void *p = v_malloc(big);
  CHECK("malloc is trimalloc's", p && huge_count() == n0 + 1 && ta_usable(p) >= big);
  free(p);
  n0 = huge_count();
  p = v_calloc(big / 16, 16);
  CHECK("calloc is trimalloc's", p && huge_count() == n0 + 1);
  free(p);
  n0 = huge_count();
  p = v_realloc(NULL, big);
  CHECK("realloc is trimalloc's", p && huge_count() == n0 + 1);
  free(p);
  n0 = huge_count();
  p = v_reallocarray(NULL, big / 8, 8);
  CHECK("reallocarray is trimalloc's", p && huge_count() == n0 + 1);
  free(p);
  n0 = huge_count();
  p = NULL;
  int r = v_posix_memalign(&p, 4096, big);
  CHECK("posix_memalign is trimalloc's", r == 0 && p && huge_count() == n0 + 1);
  free(p);
  n0 = huge_count();
  p = v_aligned_alloc(4096, big);
  CHECK("aligned_alloc is trimalloc's", p && huge_count() == n0 + 1);
  free(p);
  n0 = huge_count();
  p = v_memalign(4096, big);
  CHECK("memalign is trimalloc's", p && huge_count() == n0 + 1);
  free(p);
  n0 = huge_count();
  p = v_valloc(big);
  CHECK("valloc is trimalloc's", p && huge_count() == n0 + 1);
  free(p);
  n0 = huge_count();
  p = v_pvalloc(big);
  CHECK("pvalloc is trimalloc's", p && huge_count() == n0 + 1);
  free(p);
  p = malloc(100);
  CHECK("malloc_usable_size is trimalloc's", malloc_usable_size(p) == ta_usable(p));
  free(p);
  uint64_t t0 = trims();
  int mt = malloc_trim(0);
  CHECK("malloc_trim is trimalloc's", (mt == 0 || mt == 1) && trims() == t0 + 1);
  CHECK("free is trimalloc's", dlsym(RTLD_DEFAULT, "free") == dlsym(RTLD_DEFAULT, "trimalloc_free"));
  CHECK("active: dlsym malloc == trimalloc_malloc",
        dlsym(RTLD_DEFAULT, "malloc") == dlsym(RTLD_DEFAULT, "trimalloc_malloc"));
}

static void test_errors_through_standard_names(void) {
  errno = 0;
  void *p = v_calloc(SIZE_MAX / 2 + 1, 4);
  CHECK("calloc overflow: NULL, ENOMEM", p == NULL && errno == ENOMEM);
  errno = 0;
  p = v_malloc(SIZE_MAX - 8);
  CHECK("malloc(SIZE_MAX-8): NULL, ENOMEM", p == NULL && errno == ENOMEM);
  void *q = NULL;
  CHECK("posix_memalign(24): EINVAL", v_posix_memalign(&q, 24, 10) == EINVAL);
}

/* Blocks glibc allocates on the program's behalf, freed by the program. */
static int nop_filter(const struct dirent *d) {
  return d->d_name[0] != '.';
}

static void test_glibc_internal_allocations(void) {
  char *s = strdup("hello");
  CHECK("strdup block is trimalloc's", s && ta_usable(s) >= 6);
  free(s);
  char *a = NULL;
  int n = asprintf(&a, "%d-%s-%0500d", 42, "x", 7);
  CHECK("asprintf block is trimalloc's", n > 500 && ta_usable(a) >= (size_t)n + 1);
  free(a);
  FILE *f = fopen("/proc/self/status", "r");
  char *line = NULL;
  size_t cap = 0;
  ssize_t len = f ? getline(&line, &cap, f) : -1;
  CHECK("getline buffer is trimalloc's", len > 0 && ta_usable(line) >= cap);
  free(line);
  if (f) fclose(f);
  char *mem = NULL;
  size_t memlen = 0;
  FILE *ms = open_memstream(&mem, &memlen);
  for (int i = 0; ms && i < 10000; i++) fprintf(ms, "%d,", i);
  if (ms) fclose(ms);
  CHECK("open_memstream buffer is trimalloc's", mem && memlen > 10000 && ta_usable(mem) >= memlen);
  free(mem);
  char *rp = realpath("/proc/self/exe", NULL);
  CHECK("realpath buffer is trimalloc's", rp && ta_usable(rp) > strlen(rp));
  free(rp);
  struct dirent **list = NULL;
  int k = scandir("/proc/self", &list, nop_filter, alphasort);
  int ok = k > 0 && ta_usable(list) > 0;
  for (int i = 0; i < k; i++) {
    ok = ok && ta_usable(list[i]) > 0;
    free(list[i]);
  }
  free(list);
  CHECK("scandir entries are trimalloc's", ok);
}

/* glibc's introspection answers for trimalloc's heap (core/compat.c). Looked
 * up by name with the structs written out: musl declares none of these. */
struct mi2 {
  size_t arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};
struct mi {
  int arena, ordblks, smblks, hblks, hblkhd, usmblks, fsmblks, uordblks, fordblks, keepcost;
};

static int is_trimallocs(const char *name) {
  Dl_info a, b;
  void *f = dlsym(RTLD_DEFAULT, name), *t = dlsym(RTLD_DEFAULT, "trimalloc_malloc");
  return f && dladdr(f, &a) && dladdr(t, &b) && a.dli_fbase == b.dli_fbase;
}

static void test_introspection_is_trimallocs(void) {
  struct mi2 (*mallinfo2_f)(void) = (struct mi2(*)(void))dlsym(RTLD_DEFAULT, "mallinfo2");
  struct mi (*mallinfo_f)(void) = (struct mi(*)(void))dlsym(RTLD_DEFAULT, "mallinfo");
  int (*mallopt_f)(int, int) = (int (*)(int, int))dlsym(RTLD_DEFAULT, "mallopt");
  int (*info_f)(int, FILE *) = (int (*)(int, FILE *))dlsym(RTLD_DEFAULT, "malloc_info");
  void (*mstats_f)(void) = (void (*)(void))dlsym(RTLD_DEFAULT, "malloc_stats");
  void (*cfree_f)(void *) = (void (*)(void *))dlsym(RTLD_DEFAULT, "cfree");
  CHECK("mallinfo2, mallinfo, mallopt, malloc_info, malloc_stats, cfree are trimalloc's",
        is_trimallocs("mallinfo2") && is_trimallocs("mallinfo") && is_trimallocs("mallopt") &&
            is_trimallocs("malloc_info") && is_trimallocs("malloc_stats") && is_trimallocs("cfree"));
  if (!mallinfo2_f || !mallinfo_f || !mallopt_f || !info_f || !mstats_f || !cfree_f) return;
  /* 3 MiB more in live blocks shows in uordblks, as in trimalloc_stats' allocated */
  struct mi2 a = mallinfo2_f();
  char *p = v_malloc(3u << 20);
  memset(p, 1, 3u << 20);
  struct mi2 b = mallinfo2_f();
  trimalloc_stats_t s;
  ta_stats(&s, sizeof s);
  CHECK("mallinfo2: uordblks grows by a 3 MiB block", b.uordblks >= a.uordblks + (3u << 20));
  CHECK("mallinfo2: arena (resident) holds what is in use", b.arena >= b.uordblks && b.uordblks > 0);
  CHECK("mallinfo2: uordblks is trimalloc's allocated", b.uordblks <= s.allocated + (1u << 20) &&
                                                            s.allocated <= b.uordblks + (1u << 20));
  struct mi m = mallinfo_f();
  CHECK("mallinfo: the same, in ints", m.uordblks >= (3 << 20) && (size_t)m.uordblks <= s.allocated + (1u << 20));
  cfree_f(p);
  CHECK("cfree frees", mallinfo2_f().uordblks + (3u << 20) <= b.uordblks + (64u << 10));
  CHECK("mallopt(M_MMAP_THRESHOLD): 0, no such knob", mallopt_f(-3, 1 << 20) == 0);
  long long arenas = -1;
  int (*opt_get)(const char *, long long *) =
      (int (*)(const char *, long long *))dlsym(RTLD_DEFAULT, "trimalloc_option_get");
  int r = mallopt_f(-8, 2);
  CHECK("mallopt(M_ARENA_MAX, 2) sets arenas", r == 1 && opt_get && opt_get("arenas", &arenas) == 0 && arenas == 2);
  char buf[2048] = {0};
  FILE *f = fmemopen(buf, sizeof buf - 1, "w");
  int ir = f ? info_f(0, f) : -1;
  if (f) fclose(f);
  CHECK("malloc_info writes an XML document", ir == 0 && strstr(buf, "<malloc version=\"trimalloc-1\">") &&
                                                  strstr(buf, "</malloc>"));
  errno = 0;
  CHECK("malloc_info(1, ...): EINVAL", info_f(1, stdout) == -1 && errno == EINVAL);
  int fds[2];
  if (pipe(fds) == 0) {
    int saved = dup(2);
    dup2(fds[1], 2);
    mstats_f();
    dup2(saved, 2);
    close(saved);
    close(fds[1]);
    char out[1024] = {0};
    ssize_t n = read(fds[0], out, sizeof out - 1);
    close(fds[0]);
    CHECK("malloc_stats prints the heap's bytes to stderr", n > 0 && strstr(out, "in use bytes"));
  }
}

int main(void) {
  ta_stats = (int (*)(trimalloc_stats_t *, size_t))dlsym(RTLD_DEFAULT, "trimalloc_stats");
  ta_usable = (size_t(*)(const void *))dlsym(RTLD_DEFAULT, "trimalloc_malloc_usable_size");
  if (!ta_stats || !ta_usable) {
    printf("FAIL - trimalloc is not loaded (run with LD_PRELOAD)\n");
    return 1;
  }
  test_every_function_is_trimallocs();
  test_errors_through_standard_names();
  test_glibc_internal_allocations();
  test_introspection_is_trimallocs();
  return failures ? 1 : 0;
}
