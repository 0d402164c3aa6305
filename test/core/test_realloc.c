/* realloc: NULL, failure, in place, every size-class boundary up and down,
 * into huge blocks and back, with the contents checked at every step; a
 * large block grows in place into the free slices after it (and moves when
 * they are taken), its contents kept and the heap valid. */
#include "check.h"

static void test_realloc_null_is_malloc(void) {
  void *p = trimalloc_realloc(NULL, 100);
  CHECK(p != NULL && trimalloc_malloc_usable_size(p) >= 100);
  trimalloc_free(p);
  p = trimalloc_realloc(NULL, 0);
  CHECK(p != NULL, "realloc(NULL, 0) must behave as malloc(0)");
  trimalloc_free(p);
  p = trimalloc_realloc(NULL, 5 * MiB);
  CHECK(p != NULL && trimalloc_malloc_usable_size(p) >= 5 * MiB);
  trimalloc_free(p);
}

/* A failed realloc returns NULL, sets ENOMEM and leaves the block as it was,
 * for small, large and huge blocks. */
static void test_realloc_failure_leaves_block_intact(void) {
  static const size_t start[] = {24, 3000, 200 * KiB, 4 * MiB};
  static const size_t too_big[] = {SIZE_MAX, SIZE_MAX - 4096, (size_t)PTRDIFF_MAX + 1, (size_t)1 << 48};
  for (size_t i = 0; i < 4; i++) {
    size_t n = start[i];
    uint8_t *p = trimalloc_malloc(n);
    if (!CHECK(p != NULL)) continue;
    uint8_t seed = pattern_seed(p, n);
    pattern_fill(p, n, seed);
    for (size_t j = 0; j < 4; j++) {
      errno = 0;
      void *q = trimalloc_realloc(p, too_big[j]);
      CHECK(q == NULL && errno == ENOMEM, "realloc(%zu-byte block, %zu) = %p errno %d", n, too_big[j], q,
            errno);
      CHECK(pattern_ok(p, n, seed), "%zu-byte block changed by a failed realloc", n);
      CHECK(trimalloc_malloc_usable_size(p) >= n);
    }
    /* Still a live block: it can grow and be freed. */
    uint8_t *q = trimalloc_realloc(p, n * 2);
    CHECK(q && pattern_ok(q, n, seed));
    trimalloc_free(q ? q : p);
  }
}

/* Growing up to the usable size never moves the block. */
static void test_realloc_in_place_within_usable(void) {
  size_t moved = 0, first = 0;
  for (size_t n = 1; n < 600 * KiB; n += (n < 2048 ? 1 : n / 16)) {
    void *p = trimalloc_malloc(n);
    size_t u = trimalloc_malloc_usable_size(p);
    void *q = trimalloc_realloc(p, u);
    if (q != p && !moved++) first = n;
    trimalloc_free(q ? q : p);
  }
  CHECK(moved == 0, "%zu blocks moved growing to their usable size, first of %zu bytes", moved, first);
}

/* Walks up from 1 byte to ~300 KiB visiting each class twice: at its usable
 * size (in place) and one byte past it (the next class), then back down.
 * At every step the bytes written so far must have survived. */
static void test_realloc_walks_every_class_boundary(void) {
  size_t n = 1, steps = 0, bad = 0, bad_at = 0, small = 0;
  uint8_t *p = trimalloc_realloc(NULL, n);
  uint8_t seed = 0x5B;
  pattern_fill(p, n, seed);
  while (n < 300 * KiB) {
    size_t u = trimalloc_malloc_usable_size(p);
    size_t next = n < u ? u : u + 1;
    uint8_t *q = trimalloc_realloc(p, next);
    if (!q) {
      bad++;
      bad_at = next;
      break;
    }
    if (!pattern_ok(q, n, seed) && !bad++) bad_at = next;
    if (trimalloc_malloc_usable_size(q) < next && !small++) bad_at = next;
    pattern_fill(q, next, seed);
    p = q;
    n = next;
    steps++;
  }
  CHECK(bad == 0 && small == 0, "growing: %zu corrupt, %zu too small, first at %zu", bad, small, bad_at);
  CHECK(steps > 40, "only %zu steps: size classes too coarse?", steps);
  /* Down again: shrink through the same boundaries, checking the prefix. */
  bad = 0;
  while (n > 1) {
    size_t next = n - 1;
    void *probe = trimalloc_malloc(next);
    size_t class_u = trimalloc_malloc_usable_size(probe);
    trimalloc_free(probe);
    /* Jump to just past the class below, and to its usable size. */
    if (class_u >= n) next = n * 7 / 8;
    uint8_t *q = trimalloc_realloc(p, next);
    if (!q) {
      bad++;
      bad_at = next;
      break;
    }
    if (!pattern_ok(q, next, seed) && !bad++) bad_at = next;
    p = q;
    n = next;
  }
  CHECK(bad == 0, "shrinking: %zu corrupt, first at %zu", bad, bad_at);
  trimalloc_free(p);
}

/* Small -> huge -> bigger huge (mremap path) -> huge -> small, contents kept. */
static void test_realloc_into_huge_and_back(void) {
  static const size_t path[] = {1000,    3 * MiB,      5 * MiB + 1, 64 * MiB, 65 * MiB,
                                9 * MiB, 2 * MiB + 17, 300 * KiB,   5000,     17};
  size_t n = path[0];
  uint8_t *p = trimalloc_malloc(n);
  uint8_t seed = pattern_seed(p, n);
  pattern_fill(p, n, seed);
  for (size_t i = 1; i < sizeof path / sizeof path[0]; i++) {
    size_t next = path[i];
    uint8_t *q = trimalloc_realloc(p, next);
    if (!CHECK(q != NULL, "realloc %zu -> %zu failed", n, next)) break;
    size_t keep = n < next ? n : next;
    size_t at = pattern_find_bad(q, keep, seed);
    CHECK(at == keep, "realloc %zu -> %zu: byte %zu differs", n, next, at);
    CHECK(trimalloc_malloc_usable_size(q) >= next, "realloc %zu -> %zu: usable %zu", n, next,
          trimalloc_malloc_usable_size(q));
    pattern_fill(q, next, seed);
    p = q;
    n = next;
  }
  trimalloc_free(p);
}

/* A huge block grown in a loop (a Ruby string or Python list doubling): each
 * step keeps the content. */
static void test_realloc_huge_growth_loop(void) {
  size_t n = 2 * MiB + 1;
  uint8_t *p = trimalloc_malloc(n);
  uint8_t seed = pattern_seed(p, n);
  pattern_fill(p, n, seed);
  size_t bad = 0;
  while (n < 96 * MiB) {
    size_t next = n + n / 4 + 4096;
    uint8_t *q = trimalloc_realloc(p, next);
    if (!q) {
      bad++;
      break;
    }
    if (!pattern_ok(q, n, seed)) bad++;
    pattern_fill(q, next, seed);
    p = q;
    n = next;
  }
  CHECK(bad == 0, "%zu bad steps growing a huge block", bad);
  CHECK(pattern_ok(p, n, seed), "huge block content lost during growth");
  trimalloc_free(p);
}

/* Shrinking a block keeps its prefix; growing after shrinking works. */
/* A large block (over 128 KiB) followed by free slices grows into them: the
 * same address comes back, with its contents, 192 KiB -> 1.5 MiB in steps.
 * When a neighbour sits right after it, it moves. v2 always moved (0 of 70);
 * here 50 of 70 stay in place, 32 under TSan (another layout): at least 1 in
 * 7 is asked. */
static void test_realloc_large_grows_in_place(void) {
  int in_place = 0, steps = 0;
  for (int round = 0; round < 10; round++) {
    size_t n = 192 * KiB;
    uint8_t *p = trimalloc_malloc(n);
    if (!CHECK(p != NULL)) return;
    pattern_fill(p, n, pattern_seed(p, 0));
    uint8_t seed = pattern_seed(p, 0);
    while (n < 1536 * KiB) {
      size_t to = n + 192 * KiB;
      uint8_t *q = trimalloc_realloc(p, to);
      if (!CHECK(q != NULL, "realloc(%zu KiB)", to / KiB)) return;
      steps++;
      if (q == p) in_place++;
      if (!CHECK(pattern_ok(q, n, seed), "contents lost growing %zu -> %zu KiB", n / KiB, to / KiB))
        return;
      CHECK(trimalloc_malloc_usable_size(q) >= to, "usable %zu < %zu", trimalloc_malloc_usable_size(q), to);
      p = q;
      memset(p + n, 0x5A, to - n); /* the new part is writable */
      n = to;
      pattern_fill(p, n, seed);
    }
    /* A neighbour right after it: the next growth has to move. */
    void *blocker = NULL;
    uint8_t *r = trimalloc_malloc(192 * KiB);
    size_t rn = trimalloc_malloc_usable_size(r);
    pattern_fill(r, 192 * KiB, seed);
    blocker = trimalloc_malloc(64 * KiB);
    uint8_t *r2 = trimalloc_realloc(r, 8 * MiB / 4);
    CHECK(r2 != NULL && pattern_ok(r2, 192 * KiB, seed), "a blocked growth lost the contents (usable was %zu)", rn);
    trimalloc_free(r2);
    trimalloc_free(blocker);
    CHECK(trimalloc_check(), "heap invariants after growing large blocks");
    trimalloc_free(p);
  }
  CHECK(in_place * 7 >= steps, "%d of %d growths of a large block with free slices after it were in place",
        in_place, steps);
}

/* A block grown by a few bytes at a time to its exact length (CPython's
 * `str +=`, a naive string builder) moves with headroom: from 1 KiB to
 * 64 KiB, 16 bytes an append, it moves at most 5 times a doubling (8 classes
 * a doubling: 8 without the headroom), its bytes kept. A block grown by an
 * eighth past what it holds (a caller that over-allocates itself) gets the
 * class of what it asked for, as malloc would give it: no headroom on top. */
static void test_realloc_headroom_only_for_small_steps(void) {
  size_t n = 1024, moves = 0, bad = 0;
  uint8_t *p = trimalloc_malloc(n);
  uint8_t seed = pattern_seed(p, n);
  pattern_fill(p, n, seed);
  while (n < 64 * KiB) {
    uint8_t *q = trimalloc_realloc(p, n + 16);
    if (!q) {
      CHECK(q != NULL, "realloc to %zu bytes failed", n + 16);
      return;
    }
    moves += q != p;
    if (!pattern_ok(q, n, seed)) bad++;
    n += 16;
    pattern_fill(q, n, seed);
    p = q;
  }
  trimalloc_free(p);
  CHECK(bad == 0, "%zu appends lost the block's bytes", bad);
  CHECK(moves <= 6 * 5, "%zu moves growing 1 KiB -> 64 KiB by 16 bytes (6 doublings)", moves);
  CHECK(moves >= 6 * 2, "only %zu moves growing 1 KiB -> 64 KiB: is the block grown at all?", moves);

  size_t slack = 0, slack_at = 0;
  p = trimalloc_malloc(200);
  for (size_t have = trimalloc_malloc_usable_size(p), next; (next = have + have / 8) < 100 * KiB;
       have = trimalloc_malloc_usable_size(p)) {
    uint8_t *q = trimalloc_realloc(p, next);
    if (!q) {
      CHECK(q != NULL, "realloc to %zu bytes failed", next);
      return;
    }
    void *probe = trimalloc_malloc(next);
    size_t want = trimalloc_malloc_usable_size(probe);
    trimalloc_free(probe);
    if (trimalloc_malloc_usable_size(q) != want && !slack++) slack_at = next;
    p = q;
  }
  trimalloc_free(p);
  CHECK(slack == 0, "%zu blocks grown by an eighth got more than malloc's class, first at %zu", slack,
        slack_at);
}

static void test_realloc_shrink(void) {
  static const size_t sizes[] = {64, 4096, 100 * KiB, 3 * MiB};
  for (size_t i = 0; i < 4; i++) {
    size_t n = sizes[i];
    uint8_t *p = trimalloc_malloc(n);
    uint8_t seed = pattern_seed(p, n);
    pattern_fill(p, n, seed);
    uint8_t *q = trimalloc_realloc(p, n / 2);
    CHECK(q && pattern_ok(q, n / 2, seed), "shrink %zu -> %zu", n, n / 2);
    uint8_t *r = trimalloc_realloc(q, 1);
    CHECK(r && r[0] == seed, "shrink %zu -> 1", n);
    trimalloc_free(r);
  }
}

int main(void) {
  RUN(test_realloc_null_is_malloc);
  RUN(test_realloc_failure_leaves_block_intact);
  RUN(test_realloc_in_place_within_usable);
  RUN(test_realloc_walks_every_class_boundary);
  RUN(test_realloc_into_huge_and_back);
  RUN(test_realloc_huge_growth_loop);
  RUN(test_realloc_shrink);
  RUN(test_realloc_headroom_only_for_small_steps);
  RUN(test_realloc_large_grows_in_place);
  return check_summary();
}
