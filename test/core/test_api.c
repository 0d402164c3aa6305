/* API edge cases of malloc, calloc, reallocarray, free, malloc_usable_size,
 * malloc_trim and version: zero sizes, overflow, failure with errno, zeroing. */
#include "check.h"

/* Sizes no allocator can serve: each must give NULL with errno = ENOMEM. */
static const size_t impossible[] = {
    SIZE_MAX,
    SIZE_MAX - 1,
    SIZE_MAX - 4096,
    SIZE_MAX - (64 * MiB),
    SIZE_MAX / 2,
    (size_t)PTRDIFF_MAX,
    (size_t)PTRDIFF_MAX + 1,
    (size_t)1 << 48, /* beyond a 47/48-bit user address space */
};
#define N_IMPOSSIBLE (sizeof impossible / sizeof impossible[0])

static void test_version(void) {
  CHECK(trimalloc_version() != NULL);
  CHECK(strcmp(trimalloc_version(), TRIMALLOC_VERSION) == 0, "got %s", trimalloc_version());
}

static void test_malloc_zero_is_unique_and_freeable(void) {
  enum { N = 200 };
  void *p[N];
  int nulls = 0, dups = 0;
  for (int i = 0; i < N; i++) {
    p[i] = trimalloc_malloc(0);
    if (!p[i]) nulls++;
  }
  for (int i = 0; i < N; i++)
    for (int j = i + 1; j < N; j++)
      if (p[i] && p[i] == p[j]) dups++;
  CHECK(nulls == 0, "%d of %d malloc(0) returned NULL", nulls, N);
  CHECK(dups == 0, "%d duplicate malloc(0) pointers", dups);
#ifndef TEST_HARDENED
  /* The default build gives a small block, as glibc, jemalloc and mimalloc
   * do: a program that writes a NUL into malloc(0) is wrong but runs. (The
   * hardened build's zero-size blocks fault: test_misuse.) */
  int small = 0;
  for (int i = 0; i < N; i++) {
    small += trimalloc_malloc_usable_size(p[i]) < 16;
    ((char *)p[i])[0] = 0;
  }
  CHECK(small == 0, "%d of %d malloc(0) blocks with a usable size under 16 bytes", small, N);
#endif
  for (int i = 0; i < N; i++) trimalloc_free(p[i]);
  /* And the memory is handed out again without trouble. */
  void *q = trimalloc_malloc(0);
  CHECK(q != NULL);
  trimalloc_free(q);
}

static void test_malloc_impossible_sizes(void) {
  for (size_t i = 0; i < N_IMPOSSIBLE; i++) {
    errno = 0;
    void *p = trimalloc_malloc(impossible[i]);
    CHECK(p == NULL && errno == ENOMEM, "malloc(%zu) = %p errno %d", impossible[i], p, errno);
    if (p) trimalloc_free(p);
  }
  /* The allocator still works after failing. */
  void *p = trimalloc_malloc(100);
  CHECK(p != NULL);
  trimalloc_free(p);
}

static void test_free_null(void) {
  trimalloc_free(NULL);
  trimalloc_free(NULL);
  CHECK(trimalloc_malloc_usable_size(NULL) == 0);
}

static void test_calloc_zero_sizes(void) {
  size_t cases[][2] = {{0, 0}, {0, 1}, {1, 0}, {0, SIZE_MAX}, {SIZE_MAX, 0}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    errno = 0;
    void *p = trimalloc_calloc(cases[i][0], cases[i][1]);
    void *q = trimalloc_calloc(cases[i][0], cases[i][1]);
    CHECK(p && q && p != q, "calloc(%zu, %zu) = %p, %p errno %d", cases[i][0], cases[i][1], p, q, errno);
    trimalloc_free(p);
    trimalloc_free(q);
  }
}

static void test_calloc_overflow(void) {
  size_t cases[][2] = {
      {SIZE_MAX / 2 + 1, 2}, {2, SIZE_MAX / 2 + 1}, {(size_t)1 << 32, (size_t)1 << 32},
      {SIZE_MAX, SIZE_MAX},  {SIZE_MAX, 2},         {65537, SIZE_MAX / 65536},
      {1, SIZE_MAX},         {SIZE_MAX, 1},         {(size_t)PTRDIFF_MAX, 1},
  };
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    errno = 0;
    void *p = trimalloc_calloc(cases[i][0], cases[i][1]);
    CHECK(p == NULL && errno == ENOMEM, "calloc(%zu, %zu) = %p errno %d", cases[i][0], cases[i][1], p, errno);
    if (p) trimalloc_free(p);
  }
}

/* calloc must zero even when it gets blocks that were just dirtied and freed:
 * small, medium, large and huge, freed in both orders. */
static void test_calloc_zeroes_reused_dirty_blocks(void) {
  static const size_t sizes[] = {1,     8,     16,     24,     40,     64,   100,     128,
                                 255,   500,   1000,   1024,   2048,   4000, 8192,    10000,
                                 32768, 65536, 100000, 200000, 500000, MiB,  3 * MiB, 5 * MiB};
  enum { MAXN = 256 };
  void *p[MAXN];
  for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
    size_t n = sizes[s];
    size_t count = (8 * MiB) / n;
    if (count > MAXN) count = MAXN;
    if (count < 3) count = 3;
    for (int round = 0; round < 2; round++) {
      for (size_t i = 0; i < count; i++) {
        p[i] = trimalloc_malloc(n);
        if (p[i]) memset(p[i], 0xA5, trimalloc_malloc_usable_size(p[i]));
      }
      if (round == 0)
        for (size_t i = 0; i < count; i++) trimalloc_free(p[i]);
      else
        for (size_t i = count; i-- > 0;) trimalloc_free(p[i]);
      size_t bad = 0, nulls = 0;
      for (size_t i = 0; i < count; i++) {
        p[i] = trimalloc_calloc(1, n);
        if (!p[i]) {
          nulls++;
          continue;
        }
        const uint8_t *b = p[i];
        for (size_t k = 0; k < n; k++)
          if (b[k]) {
            bad++;
            break;
          }
      }
      CHECK(nulls == 0 && bad == 0, "size %zu round %d: %zu NULL, %zu blocks not zeroed", n, round, nulls,
            bad);
      for (size_t i = 0; i < count; i++) trimalloc_free(p[i]);
    }
  }
  /* calloc(count, size) with count > 1 zeroes count * size bytes. */
  void *d = trimalloc_malloc(4000);
  memset(d, 0xFF, 4000);
  trimalloc_free(d);
  uint32_t *z = trimalloc_calloc(1000, sizeof(uint32_t));
  size_t nonzero = 0;
  for (int i = 0; z && i < 1000; i++) nonzero += z[i] != 0;
  CHECK(z && nonzero == 0, "%zu nonzero words", nonzero);
  trimalloc_free(z);
}

static void test_reallocarray(void) {
  uint8_t *p = trimalloc_reallocarray(NULL, 10, 10);
  CHECK(p != NULL && trimalloc_malloc_usable_size(p) >= 100);
  if (!p) return;
  pattern_fill(p, 100, 7);
  uint8_t *q = trimalloc_reallocarray(p, 100, 10);
  CHECK(q != NULL && pattern_ok(q, 100, 7), "contents lost growing 100 -> 1000");
  if (!q) return;
  p = q;
  size_t overflow[][2] = {{SIZE_MAX / 2 + 1, 2}, {(size_t)1 << 33, (size_t)1 << 32}, {SIZE_MAX, 3}};
  for (size_t i = 0; i < 3; i++) {
    errno = 0;
    q = trimalloc_reallocarray(p, overflow[i][0], overflow[i][1]);
    CHECK(q == NULL && errno == ENOMEM, "reallocarray(p, %zu, %zu) = %p errno %d", overflow[i][0],
          overflow[i][1], q, errno);
    CHECK(pattern_ok(p, 100, 7), "block changed by a failed reallocarray");
  }
  errno = 0;
  q = trimalloc_reallocarray(NULL, SIZE_MAX / 4 + 1, 8);
  CHECK(q == NULL && errno == ENOMEM);
  trimalloc_free(p);
}

static void test_usable_size_at_least_requested(void) {
  size_t bad = 0, first = 0;
  for (size_t n = 0; n <= 70000; n += (n < 4096 ? 1 : 97)) {
    void *p = trimalloc_malloc(n);
    size_t u = p ? trimalloc_malloc_usable_size(p) : 0;
    if (!p || u < n) {
      if (!bad++) first = n;
    }
    trimalloc_free(p);
  }
  CHECK(bad == 0, "%zu sizes, first %zu: NULL or usable < requested", bad, first);
  /* Size classes keep internal waste at or below 12.5% (DESIGN.md section 3;
   * blocks of 16 bytes or more round to 16 for alignment, hence the 15). */
  size_t wasteful = 0, worst = 0;
  for (size_t n = 1; n <= 8192; n++) {
    void *p = trimalloc_malloc(n);
    size_t u = trimalloc_malloc_usable_size(p);
    size_t slack = n / 8 > 15 ? n / 8 : 15;
    if (u > n + slack && !wasteful++) worst = n;
    trimalloc_free(p);
  }
  CHECK(wasteful == 0, "%zu sizes waste more than 12.5%%, first %zu", wasteful, worst);
  /* Nothing up to 1 MiB gets more than twice its request. */
  wasteful = 0;
  for (size_t n = 8192; n <= MiB; n += 997) {
    void *p = trimalloc_malloc(n);
    if (trimalloc_malloc_usable_size(p) > 2 * n && !wasteful++) worst = n;
    trimalloc_free(p);
  }
  CHECK(wasteful == 0, "%zu sizes got more than twice their request, first %zu", wasteful, worst);
}

static void test_malloc_trim_returns_0_or_1(void) {
  long long old = 0;
  int have = trimalloc_option_get("purge_delay_ms", &old) == 0;
  /* Keep the delayed purge from releasing the pages before malloc_trim. */
  if (have) trimalloc_option_set("purge_delay_ms", 60000);
  enum { N = 40000 };
  void **p = trimalloc_malloc(N * sizeof(void *));
  for (int i = 0; i < N; i++) {
    p[i] = trimalloc_malloc(1000);
    if (p[i]) memset(p[i], 1, 1000);
  }
  for (int i = 0; i < N; i++) trimalloc_free(p[i]);
  trimalloc_free(p);
  int r1 = trimalloc_malloc_trim(0);
  int r2 = trimalloc_malloc_trim(0);
  CHECK(r1 == 1, "malloc_trim after freeing 40 MB returned %d", r1);
  CHECK(r2 == 0, "malloc_trim with nothing to release returned %d", r2);
  if (have) trimalloc_option_set("purge_delay_ms", old);
}

int main(void) {
  RUN(test_version);
  RUN(test_malloc_zero_is_unique_and_freeable);
  RUN(test_malloc_impossible_sizes);
  RUN(test_free_null);
  RUN(test_calloc_zero_sizes);
  RUN(test_calloc_overflow);
  RUN(test_calloc_zeroes_reused_dirty_blocks);
  RUN(test_reallocarray);
  RUN(test_usable_size_at_least_requested);
  RUN(test_malloc_trim_returns_0_or_1);
  return check_summary();
}
