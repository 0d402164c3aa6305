/* malloc_usable_size: at least the request, and every usable byte is the
 * block's own: fill whole blocks of one size side by side, then check that no
 * block's bytes were overwritten by a neighbour's. */
#include "check.h"

enum { GROUP = 24 };

/* Allocates GROUP blocks of n bytes (with the given allocation function),
 * fills each to its usable end, and checks them all afterwards. Returns the
 * number of bad blocks. */
static size_t fill_group(size_t n, int how) {
  void *p[GROUP];
  size_t u[GROUP];
  size_t bad = 0;
  for (int i = 0; i < GROUP; i++) {
    switch (how) {
      case 0:
        p[i] = trimalloc_malloc(n);
        break;
      case 1:
        p[i] = trimalloc_calloc(1, n);
        break;
      case 2:
        p[i] = trimalloc_memalign(64, n);
        break;
      default: /* realloc(p, 0) may free p and return NULL (glibc does): use 1 */
        p[i] = trimalloc_realloc(trimalloc_malloc(n / 2 + 1), n ? n : 1);
        break;
    }
    if (!p[i]) {
      bad++;
      u[i] = 0;
      continue;
    }
    u[i] = trimalloc_malloc_usable_size(p[i]);
    if (u[i] < n) bad++;
    pattern_fill(p[i], u[i], pattern_seed(p[i], u[i]));
  }
  for (int i = 0; i < GROUP; i++)
    if (p[i] && !pattern_ok(p[i], u[i], pattern_seed(p[i], u[i]))) bad++;
  for (int i = 0; i < GROUP; i++) trimalloc_free(p[i]);
  return bad;
}

static void check_sizes(int how, const char *name) {
  size_t bad = 0, first = 0, sizes = 0;
  for (size_t n = 0; n <= 400 * KiB; n += (n < 2048 ? 1 : n < 65536 ? 509 : 16381)) {
    size_t b = fill_group(n, how);
    if (b && !bad) first = n;
    bad += b;
    sizes++;
  }
  CHECK(bad == 0, "%s: %zu bad blocks over %zu sizes, first at %zu bytes", name, bad, sizes, first);
}

static void test_malloc_usable_to_end(void) {
  check_sizes(0, "malloc");
}
static void test_calloc_usable_to_end(void) {
  check_sizes(1, "calloc");
}
static void test_memalign_usable_to_end(void) {
  check_sizes(2, "memalign");
}
static void test_realloc_usable_to_end(void) {
  check_sizes(3, "realloc");
}

/* Huge blocks: fill to the usable end, neighbours in other mappings intact. */
static void test_huge_usable_to_end(void) {
  static const size_t sizes[] = {2 * MiB + 1, 3 * MiB, 4 * MiB - 1, 5 * MiB + 4095, 17 * MiB};
  void *p[5];
  size_t u[5];
  for (int i = 0; i < 5; i++) {
    p[i] = trimalloc_malloc(sizes[i]);
    u[i] = p[i] ? trimalloc_malloc_usable_size(p[i]) : 0;
    CHECK(p[i] && u[i] >= sizes[i], "huge %zu: usable %zu", sizes[i], u[i]);
    if (p[i]) memset(p[i], 0x40 + i, u[i]);
  }
  for (int i = 0; i < 5; i++) {
    size_t bad = 0;
    const uint8_t *b = p[i];
    for (size_t k = 0; b && k < u[i]; k++) bad += b[k] != 0x40 + i;
    CHECK(bad == 0, "huge block %d: %zu bytes overwritten", i, bad);
    trimalloc_free(p[i]);
  }
}

/* Usable size is stable for a live block and the same from any call. */
static void test_usable_size_stable(void) {
  size_t changed = 0;
  for (size_t n = 1; n < 100000; n = n * 3 / 2 + 1) {
    void *p = trimalloc_malloc(n);
    size_t u = trimalloc_malloc_usable_size(p);
    void *q = trimalloc_malloc(n);
    if (trimalloc_malloc_usable_size(p) != u) changed++;
    trimalloc_free(q);
    if (trimalloc_malloc_usable_size(p) != u) changed++;
    trimalloc_free(p);
  }
  CHECK(changed == 0);
}

int main(void) {
  RUN(test_malloc_usable_to_end);
  RUN(test_calloc_usable_to_end);
  RUN(test_memalign_usable_to_end);
  RUN(test_realloc_usable_to_end);
  RUN(test_huge_usable_to_end);
  RUN(test_usable_size_stable);
  return check_summary();
}
