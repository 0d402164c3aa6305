/* Alignment: natural alignment of every block, posix_memalign, aligned_alloc,
 * memalign, valloc, pvalloc (the page size read at run time, never assumed). */
#include "check.h"

/* Alignments up to this are served inside segments (half a 4 MiB segment,
 * core/types.h TA_MAX_ALIGN); larger ones get a mapping of their own whose
 * header sits in the segment before the block (core/huge.c). */
#define MAX_ALIGN (2 * MiB)

static int aligned(const void *p, size_t a) {
  return ((uintptr_t)p & (a - 1)) == 0;
}

/* What C requires for a block of n bytes: the alignment of any object that
 * fits, capped at 16 (max_align_t); DESIGN.md: 16 for blocks of 16 or more. */
static size_t natural_alignment(size_t n) {
  size_t a = 1;
  while (a < 16 && a * 2 <= n) a *= 2;
  return a;
}

static void test_every_block_naturally_aligned(void) {
  enum { KEEP = 8 };
  size_t bad = 0, first = 0;
  for (size_t n = 0; n <= 300 * KiB; n += (n < 4096 ? 1 : 211)) {
    void *p[KEEP];
    for (int i = 0; i < KEEP; i++) {
      p[i] = trimalloc_malloc(n);
      if (!p[i] || !aligned(p[i], natural_alignment(n))) {
        if (!bad++) first = n;
      }
    }
    for (int i = 0; i < KEEP; i++) trimalloc_free(p[i]);
  }
  CHECK(bad == 0, "%zu misaligned or NULL blocks, first of %zu bytes", bad, first);
  void *h = trimalloc_malloc(3 * MiB);
  CHECK(h && aligned(h, 16));
  trimalloc_free(h);
}

static void test_posix_memalign_valid(void) {
  size_t bad = 0, first_a = 0, first_n = 0;
  for (size_t a = sizeof(void *); a <= MAX_ALIGN; a *= 2) {
    static const size_t sizes[] = {0, 1, 8, 100, 4096, 5000, 100 * KiB, 3 * MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      size_t n = sizes[i];
      void *p = (void *)1;
      int r = trimalloc_posix_memalign(&p, a, n);
      int ok = r == 0 && p != NULL && aligned(p, a) && trimalloc_malloc_usable_size(p) >= n;
      if (ok && n) memset(p, 0x3C, n);
      if (!ok && !bad++) {
        first_a = a;
        first_n = n;
      }
      if (r == 0) trimalloc_free(p);
    }
  }
  CHECK(bad == 0, "%zu failures, first alignment %zu size %zu", bad, first_a, first_n);
}

/* Beyond half a segment, as glibc serves them (posix_memalign(&p, 4 MiB, 1)
 * failed with ENOMEM in v1): aligned, writable over the usable size, freed,
 * grown and shrunk by realloc with the contents kept, errno untouched. */
static void test_alignments_beyond_half_a_segment(void) {
  size_t bad = 0;
  for (size_t a = MAX_ALIGN * 2; a <= 256 * MiB; a *= 2) {
    static const size_t sizes[] = {0, 1, 100, 3 * MiB, 9 * MiB};
    for (size_t k = 0; k < sizeof sizes / sizeof sizes[0]; k++) {
      void *p = NULL;
      errno = 4321;
      int r = trimalloc_posix_memalign(&p, a, sizes[k]);
      if (r != 0 || !aligned(p, a) || errno != 4321) {
        bad++;
        continue;
      }
      size_t u = trimalloc_malloc_usable_size(p);
      if (u < sizes[k]) bad++;
      memset(p, 0x5a, u);
      uint8_t *q = trimalloc_realloc(p, sizes[k] + 5 * MiB);
      if (!q || errno != 4321 || q[0] != 0x5a || q[u - 1] != 0x5a) bad++;
      q = trimalloc_realloc(q, 64);
      if (!q || q[63] != 0x5a) bad++;
      trimalloc_free(q);
    }
    errno = 0;
    void *p = trimalloc_aligned_alloc(a, 3 * MiB);
    CHECK(p && aligned(p, a) && errno == 0, "aligned_alloc(%zu): %p errno %d", a, p, errno);
    trimalloc_free(p);
    p = trimalloc_memalign(a, 10);
    CHECK(p && aligned(p, a), "memalign(%zu): %p errno %d", a, p, errno);
    trimalloc_free(p);
  }
  CHECK(bad == 0, "%zu failures among alignments 4 MiB..256 MiB", bad);
}

static void test_posix_memalign_einval(void) {
  static const size_t bad_alignments[] = {
      0, 1, 2, 3, 4, 12, 24, 48, 100, 4097, 3 * 4096, sizeof(void *) / 2, sizeof(void *) + 1};
  for (size_t i = 0; i < sizeof bad_alignments / sizeof bad_alignments[0]; i++) {
    size_t a = bad_alignments[i];
    void *p = NULL;
    int r = trimalloc_posix_memalign(&p, a, 64);
    CHECK(r == EINVAL, "posix_memalign(alignment %zu) returned %d", a, r);
    if (r == 0) trimalloc_free(p);
  }
}

static void test_posix_memalign_enomem(void) {
  void *p = NULL;
  int r = trimalloc_posix_memalign(&p, 64, SIZE_MAX - 32);
  CHECK(r == ENOMEM, "posix_memalign(64, SIZE_MAX-32) returned %d", r);
  r = trimalloc_posix_memalign(&p, SIZE_MAX / 2 + 1, 64);
  CHECK(r == ENOMEM || r == EINVAL, "posix_memalign(2^63 alignment) returned %d", r);
}

static void test_aligned_alloc(void) {
  size_t bad = 0, first = 0;
  for (size_t a = 1; a <= MAX_ALIGN; a *= 2) {
    static const size_t sizes[] = {1, 16, 64, 1000, 65536, 3 * MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      void *p = trimalloc_aligned_alloc(a, sizes[i]);
      if ((!p || !aligned(p, a) || trimalloc_malloc_usable_size(p) < sizes[i]) && !bad++) first = a;
      trimalloc_free(p);
    }
  }
  CHECK(bad == 0, "%zu failures, first alignment %zu", bad, first);
  static const size_t bad_alignments[] = {0, 3, 24, 100, 4097};
  for (size_t i = 0; i < sizeof bad_alignments / sizeof bad_alignments[0]; i++) {
    errno = 0;
    void *p = trimalloc_aligned_alloc(bad_alignments[i], 64);
    CHECK(p == NULL && errno == EINVAL, "aligned_alloc(%zu, 64) = %p errno %d", bad_alignments[i], p, errno);
    trimalloc_free(p);
  }
  errno = 0;
  void *p = trimalloc_aligned_alloc(4096, SIZE_MAX - 100);
  CHECK(p == NULL && errno == ENOMEM, "aligned_alloc(4096, SIZE_MAX-100) errno %d", errno);
}

static void test_memalign(void) {
  size_t bad = 0, first = 0;
  for (size_t a = 1; a <= MAX_ALIGN; a *= 2) {
    static const size_t sizes[] = {0, 7, 256, 5000, 200 * KiB, 3 * MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      void *p = trimalloc_memalign(a, sizes[i]);
      if ((!p || !aligned(p, a) || trimalloc_malloc_usable_size(p) < sizes[i]) && !bad++) first = a;
      if (p && sizes[i]) memset(p, 0x77, sizes[i]);
      trimalloc_free(p);
    }
  }
  CHECK(bad == 0, "%zu failures, first alignment %zu", bad, first);
  /* A non-power-of-two alignment: NULL with EINVAL, or (as glibc does) a
   * block aligned to the next power of two. Never a misaligned block. */
  errno = 0;
  void *p = trimalloc_memalign(48, 100);
  CHECK(p == NULL ? errno == EINVAL : aligned(p, 64), "memalign(48) = %p errno %d", p, errno);
  trimalloc_free(p);
  errno = 0;
  p = trimalloc_memalign(64, SIZE_MAX - 10);
  CHECK(p == NULL && errno == ENOMEM);
}

static void test_valloc_pvalloc_page_aligned(void) {
  size_t ps = page_size();
  static const size_t sizes[] = {1, 100, 4095, 4096, 4097, 65536, 100000, 3 * MiB};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    size_t n = sizes[i];
    void *v = trimalloc_valloc(n);
    CHECK(v && aligned(v, ps) && trimalloc_malloc_usable_size(v) >= n, "valloc(%zu) = %p", n, v);
    if (v) memset(v, 1, n);
    trimalloc_free(v);
    size_t rounded = (n + ps - 1) / ps * ps;
    void *pv = trimalloc_pvalloc(n);
    CHECK(pv && aligned(pv, ps) && trimalloc_malloc_usable_size(pv) >= rounded,
          "pvalloc(%zu) = %p usable %zu, want >= %zu", n, pv, pv ? trimalloc_malloc_usable_size(pv) : 0,
          rounded);
    if (pv) memset(pv, 1, rounded);
    trimalloc_free(pv);
  }
  void *z = trimalloc_pvalloc(0);
  CHECK(z && aligned(z, ps));
  trimalloc_free(z);
  /* Rounding SIZE_MAX up to a page overflows: that is a failure, not a tiny block. */
  errno = 0;
  void *o = trimalloc_pvalloc(SIZE_MAX - ps / 2);
  CHECK(o == NULL && errno == ENOMEM, "pvalloc(SIZE_MAX - page/2) = %p errno %d", o, errno);
  errno = 0;
  o = trimalloc_valloc(SIZE_MAX - 1);
  CHECK(o == NULL && errno == ENOMEM, "valloc(SIZE_MAX-1) = %p errno %d", o, errno);
}

/* Sizes at the top of the largest class (128 KiB), every alignment a class
 * can give: the block holds the whole request. (In the hardened build the
 * class's last 8 bytes are its canary: pvalloc(131072) once got a block of
 * 131064 usable bytes.) Filled to the end and freed: the hardened build's
 * free checks the canary. */
static void test_aligned_at_the_largest_class(void) {
  int bad = 0;
  for (size_t n = 128 * KiB - 24; n <= 128 * KiB + 8; n++)
    for (size_t a = 32; a <= 64 * KiB; a *= 2) {
      void *p = NULL;
      int r = trimalloc_posix_memalign(&p, a, n);
      size_t u = r == 0 ? trimalloc_malloc_usable_size(p) : 0;
      if ((r != 0 || !aligned(p, a) || u < n) && bad++ < 5)
        CHECK(0, "posix_memalign(%zu, %zu): %d, %p, usable %zu", a, n, r, p, u);
      if (r == 0) memset(p, 0x5a, u);
      trimalloc_free(p);
    }
  CHECK(bad == 0, "%d (alignment, size) pairs near the largest class failed", bad);
  void *pv = trimalloc_pvalloc(128 * KiB - 1);
  size_t u = pv ? trimalloc_malloc_usable_size(pv) : 0;
  CHECK(pv && u >= 128 * KiB, "pvalloc(128 KiB - 1): %p, usable %zu", pv, u);
  if (pv) memset(pv, 0x5a, u);
  trimalloc_free(pv);
}

/* Aligned blocks are real blocks: realloc keeps their content, free works. */
static void test_aligned_blocks_realloc(void) {
  void *p = NULL;
  CHECK(trimalloc_posix_memalign(&p, 4096, 1000) == 0);
  uint8_t seed = pattern_seed(p, 1000);
  pattern_fill(p, 1000, seed);
  uint8_t *q = trimalloc_realloc(p, 50000);
  CHECK(q && pattern_ok(q, 1000, seed));
  q = trimalloc_realloc(q, 10);
  CHECK(q && pattern_ok(q, 10, seed));
  trimalloc_free(q);
  void *big = trimalloc_aligned_alloc(2 * MiB, 5 * MiB);
  CHECK(big && aligned(big, 2 * MiB));
  pattern_fill(big, 5 * MiB, 9);
  uint8_t *b2 = trimalloc_realloc(big, 7 * MiB);
  CHECK(b2 && pattern_ok(b2, 5 * MiB, 9));
  trimalloc_free(b2);
}

int main(void) {
  RUN(test_every_block_naturally_aligned);
  RUN(test_posix_memalign_valid);
  RUN(test_alignments_beyond_half_a_segment);
  RUN(test_posix_memalign_einval);
  RUN(test_posix_memalign_enomem);
  RUN(test_aligned_alloc);
  RUN(test_memalign);
  RUN(test_valloc_pvalloc_page_aligned);
  RUN(test_aligned_blocks_realloc);
  RUN(test_aligned_at_the_largest_class);
  return check_summary();
}
