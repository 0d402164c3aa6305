/* Thread caches (tcache): bounded per thread, flushed at thread exit, and
 * blind to which thread allocated a block.
 *  - A thread that mallocs and frees a million blocks of mixed small classes
 *    and then sleeps holds at most its bound (the stats' tcache_bytes, read
 *    while it sleeps, minus the main thread's own): its share of
 *    tcache_total, which for a thread of two is more than tcache_bytes and
 *    used (v2: tcache_bytes alone); with tcache_total 0, tcache_bytes.
 *  - The share shrinks as threads come: a thread that filled its cache
 *    alone holds at most the share of 17 caches after churning again among
 *    them, and its cache checks valid.
 *  - tcache_bytes = 0 works: blocks keep their contents and a sleeping
 *    thread holds nothing.
 *  - A thread's exit flushes its cache: tcache_bytes and the count of
 *    registered caches (heaps) drop back once it is joined.
 *  - A block freed is the next one malloc hands out for its size, in every
 *    class (powers of two too): the free fast path took it into the cache.
 *  - A trim empties the caller's cache, whatever it holds (one class or
 *    many).
 *  - Working sets within the bound (many classes of 1-8 KiB; a few blocks
 *    of 20 and 28 KiB) are served by the cache alone once its bins have
 *    grown to them (v2 capped a 28 KiB bin at 2 blocks: a refill a round),
 *    and the cache never holds more than the bound.
 *  - A trim's flush request reaches another thread at its next slow path
 *    (v2 looked every 64th): a thread holding blocks of 64 bytes makes
 *    one refill of another class after the trim and holds nothing after
 *    it, three times in a row.
 *  - A thread that moves to another arena flushes its cache at its next
 *    slow path (the move's flag set as arena.c sets it): its blocks came
 *    from slabs it shared with another thread, interleaved with that one's.
 *  - A thread whose first malloc comes in the last round of TLS destructors
 *    (its cache registered after the round that would flush it) leaves no
 *    cache behind: within 3 s of trims after its join, heaps, tcache_bytes
 *    and allocated are back where they were (v2: one more cache for ever).
 *  - Eight producers hand blocks through a queue to eight consumers that
 *    check and free them (every free a cross-thread free); the producer
 *    writes the fill pattern, the consumer checks it. */
#include <limits.h>
#include <pthread.h>

#include "check.h"

#define U(x) ((unsigned long long)(x))

static const long CHURN = 1000000;

/* The block size malloc gives for n (what a cached block of that size counts). */
static size_t ta_test_class_size(size_t n) {
  void *q = trimalloc_malloc(n);
  size_t u = trimalloc_malloc_usable_size(q);
  trimalloc_free(q);
  return u;
}
enum { WINDOW = 4096 };

/* Sizes up to 32 KiB (every one a cached class): mostly small, some medium. */
static size_t cached_size(uint64_t *rng) {
  uint64_t r = rng_next(rng);
  unsigned pick = (unsigned)(r % 100);
  r >>= 8;
  if (pick < 80) return 1 + r % 1024;
  if (pick < 95) return 1025 + r % (7 * KiB);
  return 8 * KiB + 1 + r % (24 * KiB);
}

/* A cheap stamp at both ends of a block: the address and the size, so a
 * block handed out twice (or overrun by a neighbour) reads wrong. */
static void stamp(uint8_t *p, size_t n) {
  uint64_t v = (uint64_t)(uintptr_t)p ^ ((uint64_t)n << 40) ^ 0xA5A5A5A5ull;
  if (n >= 16) {
    memcpy(p, &v, 8);
    memcpy(p + n - 8, &v, 8);
  } else {
    memset(p, (int)(v & 0xff), n);
  }
}

static int stamp_ok(const uint8_t *p, size_t n) {
  uint64_t v = (uint64_t)(uintptr_t)p ^ ((uint64_t)n << 40) ^ 0xA5A5A5A5ull, a, b;
  if (n >= 16) {
    memcpy(&a, p, 8);
    memcpy(&b, p + n - 8, 8);
    return a == v && b == v;
  }
  for (size_t i = 0; i < n; i++)
    if (p[i] != (uint8_t)(v & 0xff)) return 0;
  return 1;
}

/* A thread that churns, frees everything, reports, sleeps until released;
 * `rounds` times (wake reaching r releases round r), then exits. */
typedef struct churner_s {
  long ops;
  uint64_t seed;
  int rounds;
  gate_t asleep, wake;
  long bad, nulls;
  int valid;
} churner_t;

static void *churn_then_sleep(void *arg) {
  churner_t *c = arg;
  uint8_t *win[WINDOW] = {0};
  size_t wn[WINDOW] = {0};
  uint64_t rng = c->seed;
  for (int r = 1; r <= c->rounds; r++) {
  memset(win, 0, sizeof win);
  for (long i = 0; i < c->ops; i++) {
    unsigned k = (unsigned)(i % WINDOW);
    if (win[k]) {
      if (!stamp_ok(win[k], wn[k])) c->bad++;
      trimalloc_free(win[k]);
    }
    wn[k] = cached_size(&rng);
    win[k] = trimalloc_malloc(wn[k]);
    if (!win[k]) {
      c->nulls++;
      continue;
    }
    stamp(win[k], wn[k]);
  }
  for (unsigned k = 0; k < WINDOW; k++) {
    if (win[k] && !stamp_ok(win[k], wn[k])) c->bad++;
    trimalloc_free(win[k]);
  }
  c->valid = trimalloc_check();
  gate_add(&c->asleep, 1);
  gate_wait(&c->wake, r); /* asleep: no allocator call until released */
  }
  return NULL;
}

static void churner_init(churner_t *c, long ops, uint64_t seed) {
  memset(c, 0, sizeof *c);
  c->ops = ops;
  c->seed = seed;
  c->rounds = 1;
  pthread_mutex_init(&c->asleep.mu, NULL);
  pthread_cond_init(&c->asleep.cv, NULL);
  pthread_mutex_init(&c->wake.mu, NULL);
  pthread_cond_init(&c->wake.cv, NULL);
}

static void churner_destroy(churner_t *c) {
  pthread_mutex_destroy(&c->asleep.mu);
  pthread_cond_destroy(&c->asleep.cv);
  pthread_mutex_destroy(&c->wake.mu);
  pthread_cond_destroy(&c->wake.cv);
}

/* Runs one churner to sleep; returns its tcache bytes (total now minus what
 * was cached before it started) and leaves it asleep. */
static uint64_t start_and_measure(churner_t *c, pthread_t *t, uint64_t *base_out) {
  trimalloc_trim(); /* the main thread's own cache goes back first */
  uint64_t base = stats_now().tcache_bytes;
  *base_out = base;
  pthread_create(t, NULL, churn_then_sleep, c);
  gate_wait(&c->asleep, 1);
  uint64_t now = stats_now().tcache_bytes;
  return now > base ? now - base : 0;
}

static void finish(churner_t *c, pthread_t t, const char *what) {
  gate_set(&c->wake, 1);
  pthread_join(t, NULL);
  CHECK(c->bad == 0 && c->nulls == 0, "%s: %ld blocks with wrong contents, %ld NULL", what, c->bad, c->nulls);
  CHECK(c->valid, "%s: trimalloc_check failed in the thread", what);
}

static void test_sleeping_thread_holds_at_most_bound(void) {
  long long least = option_value("tcache_bytes"), total = option_value("tcache_total");
  CHECK(getenv("TRIMALLOC_TCACHE_BYTES") || least == 262144, "default tcache_bytes is %lld", least);
  CHECK(getenv("TRIMALLOC_TCACHE_TOTAL") || total == 4 << 20, "default tcache_total is %lld", total);
  churner_t c;
  pthread_t t;
  uint64_t base;
  churner_init(&c, CHURN, 1);
  uint64_t held = start_and_measure(&c, &t, &base);
  uint64_t caches = stats_now().heaps, bound = thread_cache_bound(caches);
  fprintf(stdout, "   a sleeping thread after %ld malloc/free pairs holds %llu bytes (bound %llu: %llu caches)\n",
          CHURN, U(held), U(bound), U(caches));
  CHECK(held <= bound, "a sleeping thread holds %llu bytes in its cache, bound %llu (main's own %llu)", U(held),
        U(bound), U(base));
  /* Its share of tcache_total, not tcache_bytes, bounds it: blocks of up to
   * 32 KiB in ~40 classes fill more than 256 KiB (v2: at most 256 KiB). */
  if (bound >= 4 * (uint64_t)least)
    CHECK(held > (uint64_t)least, "a busy thread of few kept only %llu bytes (tcache_bytes %lld, its share %llu)",
          U(held), least, U(bound));
  finish(&c, t, "default bound");
  churner_destroy(&c);

  /* A smaller bound, for a thread started after it was set, with nothing
   * shared out. */
  long long old = option_swap("tcache_bytes", 64 * 1024), old_total = option_swap("tcache_total", 0);
  churner_init(&c, CHURN / 4, 2);
  held = start_and_measure(&c, &t, &base);
  CHECK(held <= 64 * 1024, "with tcache_bytes = 65536 a sleeping thread holds %llu bytes", U(held));
  finish(&c, t, "64 KiB bound");
  churner_destroy(&c);
  trimalloc_option_set("tcache_bytes", old);
  trimalloc_option_set("tcache_total", old_total);
}

/* The share shrinks as threads come: a thread that filled its cache alone,
 * then churns again after fifteen more threads registered theirs, holds at
 * most the share of seventeen caches once asleep, and its cache checks
 * valid (budget within the new bound) in the middle of it. */
enum { SHARERS = 15 };
static gate_t sharers_go = GATE_INIT, sharers_in = GATE_INIT;
static void *register_and_sleep(void *arg) {
  (void)arg;
  trimalloc_free(trimalloc_malloc(100));
  gate_add(&sharers_in, 1);
  gate_wait(&sharers_go, 1);
  return NULL;
}

static void test_share_shrinks_with_threads(void) {
  long long old_total = option_swap("tcache_total", 4 << 20);
  if (thread_cache_bound(2) < 2 * thread_cache_bound(SHARERS + 2)) { /* 64 KiB pages: 256 KiB each anyway */
    fprintf(stdout, "   skipped: at %ld-byte pages two caches' share (%llu) is no bigger than seventeen's\n",
            sysconf(_SC_PAGESIZE), U(thread_cache_bound(2)));
    trimalloc_option_set("tcache_total", old_total);
    return;
  }
  churner_t c;
  pthread_t t, others[SHARERS];
  uint64_t base;
  churner_init(&c, CHURN / 2, 6);
  c.rounds = 2;
  uint64_t alone = start_and_measure(&c, &t, &base);
  uint64_t bound_alone = thread_cache_bound(stats_now().heaps);
  for (int i = 0; i < SHARERS; i++) pthread_create(&others[i], NULL, register_and_sleep, NULL);
  gate_wait(&sharers_in, SHARERS);
  uint64_t caches = stats_now().heaps, bound = thread_cache_bound(caches);
  uint64_t before = stats_now().tcache_bytes;
  gate_set(&c.wake, 1); /* its second round */
  gate_wait(&c.asleep, 2);
  uint64_t after = stats_now().tcache_bytes, shrunk = after > before - alone ? after - (before - alone) : 0;
  fprintf(stdout, "   one thread's cache: %llu bytes alone (bound %llu), %llu among %llu caches (bound %llu)\n",
          U(alone), U(bound_alone), U(shrunk), U(caches), U(bound));
  CHECK(alone > bound, "alone it held %llu bytes, no more than the share of %llu caches (%llu)", U(alone), U(caches),
        U(bound));
  CHECK(shrunk <= bound, "among %llu caches it holds %llu bytes, bound %llu", U(caches), U(shrunk), U(bound));
  gate_set(&c.wake, 2);
  pthread_join(t, NULL);
  CHECK(c.bad == 0 && c.nulls == 0, "shares: %ld blocks with wrong contents, %ld NULL", c.bad, c.nulls);
  CHECK(c.valid, "shares: trimalloc_check failed in the thread");
  gate_set(&sharers_go, 1);
  for (int i = 0; i < SHARERS; i++) pthread_join(others[i], NULL);
  churner_destroy(&c);
  trimalloc_option_set("tcache_total", old_total);
}

static void test_tcache_zero(void) {
  long long old = option_swap("tcache_bytes", 0);
  churner_t c;
  pthread_t t;
  uint64_t base;
  churner_init(&c, CHURN / 10, 3);
  uint64_t held = start_and_measure(&c, &t, &base);
  CHECK(held == 0, "with tcache_bytes = 0 a sleeping thread holds %llu bytes", U(held));
  finish(&c, t, "tcache_bytes = 0");
  churner_destroy(&c);
  /* The main thread works with it too (whatever it does with its cache). */
  uint8_t *p[1000];
  size_t n[1000];
  uint64_t rng = 4;
  long bad = 0;
  for (int i = 0; i < 1000; i++) {
    n[i] = cached_size(&rng);
    p[i] = trimalloc_malloc(n[i]);
    pattern_fill(p[i], n[i], pattern_seed(p[i], n[i]));
  }
  for (int i = 0; i < 1000; i += 2) trimalloc_free(p[i]);
  for (int i = 0; i < 1000; i += 2) {
    p[i] = trimalloc_malloc(n[i]);
    pattern_fill(p[i], n[i], pattern_seed(p[i], n[i]));
  }
  for (int i = 0; i < 1000; i++) {
    if (!pattern_ok(p[i], n[i], pattern_seed(p[i], n[i]))) bad++;
    trimalloc_free(p[i]);
  }
  CHECK(bad == 0, "%ld blocks with wrong contents with tcache_bytes = 0", bad);
  trimalloc_option_set("tcache_bytes", old);
}

static void test_thread_exit_flushes(void) {
  churner_t c;
  pthread_t t;
  uint64_t base;
  uint64_t heaps0 = stats_now().heaps;
  churner_init(&c, CHURN / 10, 5);
  uint64_t held = start_and_measure(&c, &t, &base);
  uint64_t heaps1 = stats_now().heaps;
  CHECK(held > 0, "a thread that just freed %d blocks of cached classes holds nothing in its cache", WINDOW);
  CHECK(heaps1 >= heaps0 + 1, "registered thread caches %llu -> %llu with one more thread", U(heaps0),
        U(heaps1));
  finish(&c, t, "exit");
  trimalloc_stats_t s = stats_now();
  CHECK(s.tcache_bytes <= base, "tcache_bytes %llu after the thread exited (was %llu before it, %llu with it)",
        U(s.tcache_bytes), U(base), U(base + held));
  CHECK(s.heaps + 1 <= heaps1, "registered thread caches %llu after the thread exited, %llu with it", U(s.heaps),
        U(heaps1));
  churner_destroy(&c);
}

/* ---- eight producers, eight consumers, one queue ---- */
enum { PRODUCERS = 8, CONSUMERS = 8, QCAP = 2048, DEFER = 32 };
#define ITEMS (test_slow() ? 8000L : 60000L) /* per producer */

static queue_t q = QUEUE_INIT(QCAP);

static atomic_long x_bad, x_calloc_bad, x_nulls, x_consumed, x_invalid;

/* Mostly up to 32 KiB, a few blocks of 32..128 KiB. */
static size_t handoff_size(uint64_t *rng) {
  if (rng_next(rng) % 50 == 0) return 32 * KiB + 1 + rng_next(rng) % (96 * KiB);
  return cached_size(rng);
}

static void *producer(void *arg) {
  int id = (int)(intptr_t)arg;
  uint64_t rng = 0x51ull + (uint64_t)id * 7919;
  for (long i = 0; i < ITEMS; i++) {
    size_t n = handoff_size(&rng);
    uint8_t *p;
    if (i % 10 == 7) {
      p = trimalloc_calloc(1, n);
      if (p) {
        size_t lim = n < 4096 ? n : 4096, k = 0;
        while (k < lim && !p[k]) k++;
        if (k < lim || (n > lim && p[n - 1])) atomic_fetch_add(&x_calloc_bad, 1);
      }
    } else {
      p = trimalloc_malloc(n);
    }
    if (!p) {
      atomic_fetch_add(&x_nulls, 1);
      continue;
    }
    block_fill(p, n, pattern_seed(p, n));
    q_push(&q, (item_t){p, n, id});
  }
  if (!trimalloc_check()) atomic_fetch_add(&x_invalid, 1);
  return NULL;
}

static void consume(item_t it) {
  if (!block_ok(it.p, it.n, pattern_seed(it.p, it.n))) atomic_fetch_add(&x_bad, 1);
  trimalloc_free(it.p);
  atomic_fetch_add(&x_consumed, 1);
}

static void *consumer(void *arg) {
  uint64_t rng = 0xC0ull + (uintptr_t)arg * 104729;
  item_t held[DEFER];
  int nheld = 0;
  for (;;) {
    item_t it = q_pop(&q);
    if (!it.p) break;
    /* Some blocks are kept a while, so frees come in a different order. */
    if (rng_next(&rng) % 4 == 0) {
      if (nheld == DEFER) consume(held[--nheld]);
      held[nheld++] = it;
      continue;
    }
    consume(it);
  }
  while (nheld) consume(held[--nheld]);
  if (!trimalloc_check()) atomic_fetch_add(&x_invalid, 1);
  return NULL;
}

static void test_cross_thread_handoff(void) {
  trimalloc_trim();
  trimalloc_stats_t s0 = stats_now();
  pthread_t pt[PRODUCERS], ct[CONSUMERS];
  for (long i = 0; i < CONSUMERS; i++) pthread_create(&ct[i], NULL, consumer, (void *)i);
  for (long i = 0; i < PRODUCERS; i++) pthread_create(&pt[i], NULL, producer, (void *)i);
  for (int i = 0; i < PRODUCERS; i++) pthread_join(pt[i], NULL);
  for (int i = 0; i < CONSUMERS; i++) q_push(&q, (item_t){NULL, 0, -1});
  for (int i = 0; i < CONSUMERS; i++) pthread_join(ct[i], NULL);
  CHECK(atomic_load(&x_bad) == 0, "%ld blocks with wrong contents at the consumer", atomic_load(&x_bad));
  CHECK(atomic_load(&x_calloc_bad) == 0, "%ld calloc blocks not zeroed", atomic_load(&x_calloc_bad));
  CHECK(atomic_load(&x_nulls) == 0, "%ld allocations failed", atomic_load(&x_nulls));
  CHECK(atomic_load(&x_invalid) == 0, "trimalloc_check failed in %ld threads", atomic_load(&x_invalid));
  CHECK(atomic_load(&x_consumed) == PRODUCERS * ITEMS, "%ld of %ld blocks consumed", atomic_load(&x_consumed),
        PRODUCERS * ITEMS);
  /* All sixteen threads are gone: their caches were flushed, and a trim
   * returns what they used. */
  trimalloc_stats_t s1 = stats_now();
  CHECK(s1.tcache_bytes <= s0.tcache_bytes, "tcache_bytes %llu -> %llu after every thread exited",
        U(s0.tcache_bytes), U(s1.tcache_bytes));
  CHECK(s1.heaps <= s0.heaps, "registered thread caches %llu -> %llu", U(s0.heaps), U(s1.heaps));
  trimalloc_trim();
  trimalloc_stats_t s2 = stats_now();
  CHECK(s2.resident <= s0.resident + 8 * MiB, "resident %llu KiB -> %llu KiB after the threads and a trim",
        U(s0.resident / KiB), U(s2.resident / KiB));
}

/* free pushes a cached class's block on its bin and malloc pops it: the
 * same address comes back. A block the fast path refused (a slow free into
 * its slab) would not: the bin still holds the rest of its refill. */
static void test_free_then_malloc_reuses_block(void) {
  int wrong = 0;
  for (size_t n = 1; n <= 128 * KiB; n += n / 16 ? n / 16 : 1) {
    void *keep = trimalloc_malloc(n); /* the bin has a refill's blocks */
    void *p = trimalloc_malloc(n);
    trimalloc_free(p);
    void *q = trimalloc_malloc(n);
    if (q != p && wrong++ < 5) CHECK(q == p, "malloc(%zu) after free gave %p, not the freed %p", n, q, p);
    trimalloc_free(q);
    trimalloc_free(keep);
  }
  CHECK(wrong == 0, "%d sizes did not reuse the block just freed", wrong);
}

/* Run while the main thread is the only one with a cache. */
static void test_trim_empties_callers_cache(void) {
  int left = 0;
  for (size_t n = 1; n <= 128 * KiB; n += n / 16 ? n / 16 : 1) {
    trimalloc_free(trimalloc_malloc(n)); /* the bin keeps the rest of a refill */
    if (!CHECK(stats_now().tcache_bytes > 0, "malloc(%zu) and free: nothing cached", n)) break;
    trimalloc_trim();
    uint64_t c = stats_now().tcache_bytes;
    if (c && left++ < 5) CHECK(c == 0, "size %zu alone: %llu bytes still cached after trim", n, U(c));
  }
  CHECK(left == 0, "%d sizes left blocks in the cache after trim", left);
  void *p[256];
  uint64_t rng = 5;
  for (int i = 0; i < 256; i++) p[i] = trimalloc_malloc(cached_size(&rng));
  for (int i = 0; i < 256; i++) trimalloc_free(p[i]);
  uint64_t before = stats_now().tcache_bytes;
  trimalloc_trim();
  CHECK(before > 0 && stats_now().tcache_bytes == 0, "many classes: %llu bytes cached, %llu after trim", U(before),
        U(stats_now().tcache_bytes));
}

/* Allocates and frees the working set `sizes` (count of them) round after
 * round; returns the blocks refilled from the arenas in the second half of
 * the rounds, and the most the cache held after a round in *high. */
static uint64_t cycle(const size_t *sizes, size_t count, uint64_t *high) {
  enum { ROUNDS = 40 };
  void *p[256];
  uint64_t refills = 0;
  trimalloc_trim();
  for (int round = 0; round < ROUNDS; round++) {
    uint64_t a0 = stats_now().allocations; /* counted when a cache refills */
    for (size_t i = 0; i < count; i++) p[i] = trimalloc_malloc(sizes[i]);
    for (size_t i = 0; i < count; i++) trimalloc_free(p[i]);
    trimalloc_stats_t st = stats_now();
    if (round >= ROUNDS / 2) refills += st.allocations - a0;
    if (st.tcache_bytes > *high) *high = st.tcache_bytes;
  }
  trimalloc_trim();
  return refills;
}

/* Run while the main thread is the only one with a cache. Working sets
 * within the bound, allocated and freed round after round, are served by the
 * cache alone once its bins have grown to them, and it never holds more than
 * the bound: blocks of the 24 classes of 1-8 KiB (3/4 of the bound), and
 * three blocks each of 20 and 28 KiB (v2's bins held 2 blocks of 28 KiB at
 * most: 20 refills in 20 rounds). */
static void test_cache_serves_working_set(void) {
  long long bound = 0;
  trimalloc_option_get("tcache_bytes", &bound);
  size_t small[256], n = 0, sum = 0;
  while (n < 256) {
    size_t u = ta_test_class_size(KiB + (n % 24) * (7 * KiB / 23)); /* 1-8 KiB */
    if (sum + u > (size_t)bound * 3 / 4) break;
    small[n++] = u;
    sum += u;
  }
  size_t medium[] = {20 * KiB, 28 * KiB, 20 * KiB, 28 * KiB, 20 * KiB, 28 * KiB};
  uint64_t high = 0, r1 = cycle(small, n, &high), r2 = cycle(medium, 6, &high);
  CHECK(high <= (uint64_t)bound, "cache held %llu bytes, bound %lld", U(high), bound);
  CHECK(r1 == 0, "%llu blocks refilled in 20 rounds of %zu blocks of 1-8 KiB (%zu bytes, bound %lld)", U(r1), n, sum,
        bound);
  CHECK(r2 == 0, "%llu blocks refilled in 20 rounds of 3 blocks of 20 KiB and 3 of 28 KiB", U(r2));
  CHECK(trimalloc_check(), "heap invariants after the rounds");
}

/* ---- a flush request at the next slow path ---- */
/* The two flush tests' steps (one at a time): main sets one, the thread
 * waits for it, acts, sets the next. */
static atomic_int fr_step;

static void fr_wait(int step) {
  while (atomic_load(&fr_step) != step) usleep(200);
}

static void *flush_request_thread(void *arg) {
  (void)arg;
  static const size_t fresh[3] = {3000, 5000, 7000}; /* a class whose bin is empty: one refill */
  void *keep[3];
  for (int round = 0; round < 3; round++) {
    void *p[32];
    for (int k = 0; k < 8; k++) { /* the 64-byte bin grows and holds blocks */
      for (int i = 0; i < 32; i++) p[i] = trimalloc_malloc(64);
      for (int i = 0; i < 32; i++) trimalloc_free(p[i]);
    }
    atomic_store(&fr_step, 4 * round + 1); /* main: measure, trim */
    fr_wait(4 * round + 2);
    keep[round] = trimalloc_malloc(fresh[round]); /* one slow path */
    atomic_store(&fr_step, 4 * round + 3); /* main: measure */
    fr_wait(4 * round + 4);
  }
  for (int i = 0; i < 3; i++) trimalloc_free(keep[i]);
  return NULL;
}

/* Run while the main thread holds nothing the thread's counts would hide. */
static void test_flush_request_next_slow_path(void) {
  pthread_t t;
  int missed = 0;
  atomic_store(&fr_step, 0);
  pthread_create(&t, NULL, flush_request_thread, NULL);
  for (int round = 0; round < 3; round++) {
    fr_wait(4 * round + 1);
    trimalloc_trim(); /* flushes the main thread's cache, asks the other's */
    uint64_t held = stats_now().tcache_bytes;
    CHECK(held >= 4 * 64, "round %d: the thread holds %llu bytes before its slow path", round, U(held)); /* 8 blocks at most with 64 KiB pages */
    atomic_store(&fr_step, 4 * round + 2);
    fr_wait(4 * round + 3);
    uint64_t after = stats_now().tcache_bytes;
    if (after != 0) missed++;
    CHECK(after == 0, "round %d: %llu bytes still cached after the thread's first slow path since the trim (%llu before)",
          round, U(after), U(held));
    atomic_store(&fr_step, 4 * round + 4);
  }
  pthread_join(t, NULL);
  CHECK(missed == 0, "%d of 3 slow paths after a trim did not flush", missed);
}

/* ---- a thread that moves to another arena flushes its cache ---- */
/* Set by arena.c when the thread moves (refill_lock); the cache's next slow
 * path flushes (tcache.c, maintain). A real move needs two threads refilling
 * at the same moment (test_threads' test_arena_moves): here the flag is set
 * as the move sets it. */
extern __thread uint8_t ta_tls_arena_moved;

static void *move_thread(void *arg) {
  (void)arg;
  void *p[32];
  for (int k = 0; k < 8; k++) { /* the 64-byte bin grows and holds blocks */
    for (int i = 0; i < 32; i++) p[i] = trimalloc_malloc(64);
    for (int i = 0; i < 32; i++) trimalloc_free(p[i]);
  }
  atomic_store(&fr_step, 1); /* main: measure */
  fr_wait(2);
  ta_tls_arena_moved = 1;
  void *q = trimalloc_malloc(64); /* the fast path: no flush yet */
  atomic_store(&fr_step, 3);      /* main: measure */
  fr_wait(4);
  void *r = trimalloc_malloc(3000); /* a class whose bin is empty: one slow path */
  atomic_store(&fr_step, 5);        /* main: measure */
  fr_wait(6);
  trimalloc_free(q);
  trimalloc_free(r);
  return NULL;
}

/* Run while the main thread holds nothing the thread's counts would hide. */
static void test_arena_move_flushes_cache(void) {
  trimalloc_trim();
  atomic_store(&fr_step, 0);
  pthread_t t;
  pthread_create(&t, NULL, move_thread, NULL);
  fr_wait(1);
  uint64_t held = stats_now().tcache_bytes;
  CHECK(held >= 4 * 64, "the thread holds %llu bytes of 64-byte blocks", U(held));
  atomic_store(&fr_step, 2);
  fr_wait(3);
  uint64_t fast = stats_now().tcache_bytes;
  CHECK(fast + 64 >= held && fast > 0, "a fast-path malloc after the move kept the cache: %llu -> %llu bytes", U(held),
        U(fast));
  atomic_store(&fr_step, 4);
  fr_wait(5);
  uint64_t after = stats_now().tcache_bytes;
  CHECK(after == 0, "%llu bytes still cached after the moved thread's next slow path (%llu before)", U(after),
        U(fast));
  CHECK(ta_tls_arena_moved == 0, "the main thread's flag is its own");
  atomic_store(&fr_step, 6);
  pthread_join(t, NULL);
  CHECK(trimalloc_check(), "heap invariants after the flush");
}

/* ---- a cache made in the last round of TLS destructors ---- */
static pthread_key_t late_key;
static atomic_int late_rounds;

static void late_destructor(void *v) {
  int round = atomic_fetch_add(&late_rounds, 1) + 1;
  if (round < PTHREAD_DESTRUCTOR_ITERATIONS) { /* once more, in the next round */
    pthread_setspecific(late_key, v);
    return;
  }
  void *p[8]; /* the last round: this thread's first malloc */
  for (int i = 0; i < 8; i++) p[i] = trimalloc_malloc(100);
  for (int i = 0; i < 8; i++) trimalloc_free(p[i]);
}

static void *late_thread(void *arg) {
  pthread_setspecific(late_key, arg);
  return NULL;
}

static void test_cache_made_in_last_destructor_round(void) {
  trimalloc_trim();
  trimalloc_stats_t s0 = stats_now();
  pthread_key_create(&late_key, late_destructor);
  atomic_store(&late_rounds, 0);
  pthread_t t;
  pthread_create(&t, NULL, late_thread, (void *)1);
  pthread_join(t, NULL);
  CHECK(atomic_load(&late_rounds) == PTHREAD_DESTRUCTOR_ITERATIONS, "the destructor ran %d rounds",
        atomic_load(&late_rounds));
  trimalloc_stats_t s = stats_now();
  for (double t0 = now_s(); now_s() - t0 < 3.0; usleep(50 * 1000)) { /* the thread's id goes soon after the join */
    trimalloc_trim();
    s = stats_now();
    if (s.heaps <= s0.heaps && s.tcache_bytes <= s0.tcache_bytes && s.allocated <= s0.allocated) break;
  }
  CHECK(s.heaps <= s0.heaps, "%llu thread caches registered after the thread left one, %llu before", U(s.heaps),
        U(s0.heaps));
  CHECK(s.tcache_bytes <= s0.tcache_bytes, "tcache_bytes %llu, %llu before the thread", U(s.tcache_bytes),
        U(s0.tcache_bytes));
  CHECK(s.allocated <= s0.allocated, "allocated %llu, %llu before the thread", U(s.allocated), U(s0.allocated));
  pthread_key_delete(late_key);
}

int main(void) {
  RUN(test_cache_serves_working_set);
  RUN(test_trim_empties_callers_cache);
  RUN(test_free_then_malloc_reuses_block);
  RUN(test_sleeping_thread_holds_at_most_bound);
  RUN(test_share_shrinks_with_threads);
  RUN(test_tcache_zero);
  RUN(test_thread_exit_flushes);
  RUN(test_flush_request_next_slow_path);
  RUN(test_arena_move_flushes_cache);
  if (TEST_TSAN) /* TSan finishes a thread in its own last-round destructor: a lock after it crashes TSan */
    SKIP(test_cache_made_in_last_destructor_round, "TSan cannot run code in the last round of TLS destructors");
  else
    RUN(test_cache_made_in_last_destructor_round);
  RUN(test_cross_thread_handoff);
  return check_summary();
}
