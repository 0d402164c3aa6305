/* Thread creation and exit in a loop must not grow memory: thousands of
 * short-lived threads each allocate a little, free some, and hand the rest to
 * the main thread, which frees them after the thread is gone. RSS and the
 * number of registered thread caches (heaps) stay bounded. */
#include <pthread.h>

#include "check.h"

#define THREADS (test_slow() ? 1000 : 5000)
enum { BATCH = 4, PER_THREAD = 40, HANDED = 10 };

typedef struct {
  uint8_t *p[HANDED];
  size_t n[HANDED];
  int bad;
} handoff_t;

static void *short_lived(void *arg) {
  handoff_t *h = arg;
  uint64_t rng = (uintptr_t)arg * 2654435761u + 1;
  uint8_t *mine[PER_THREAD];
  size_t n[PER_THREAD];
  for (int i = 0; i < PER_THREAD; i++) {
    n[i] = rng_size(&rng) % (32 * KiB) + 1;
    if (i == 0) n[i] = 200 * KiB; /* one large block per thread */
    mine[i] = trimalloc_malloc(n[i]);
    if (!mine[i]) {
      h->bad++;
      continue;
    }
    pattern_fill(mine[i], n[i], pattern_seed(mine[i], n[i]));
  }
  for (int i = 0; i < PER_THREAD; i++) {
    if (mine[i] && !pattern_ok(mine[i], n[i], pattern_seed(mine[i], n[i]))) h->bad++;
    if (i < HANDED) {
      h->p[i] = mine[i];
      h->n[i] = n[i];
    } else {
      trimalloc_free(mine[i]);
    }
  }
  return NULL;
}

/* Runs `count` threads, BATCH at a time; frees what they handed over. */
static int run_threads(int count) {
  int bad = 0;
  for (int done = 0; done < count; done += BATCH) {
    pthread_t t[BATCH];
    handoff_t h[BATCH];
    memset(h, 0, sizeof h);
    for (int i = 0; i < BATCH; i++)
      if (pthread_create(&t[i], NULL, short_lived, &h[i]) != 0) return -1;
    for (int i = 0; i < BATCH; i++) pthread_join(t[i], NULL);
    for (int i = 0; i < BATCH; i++) {
      bad += h[i].bad;
      for (int k = 0; k < HANDED; k++) {
        if (h[i].p[k] && !pattern_ok(h[i].p[k], h[i].n[k], pattern_seed(h[i].p[k], h[i].n[k]))) bad++;
        trimalloc_free(h[i].p[k]);
      }
    }
  }
  return bad;
}

static void test_thread_churn_bounded(void) {
  /* Warm up: thread stacks and the allocator's first segments. */
  CHECK(run_threads(100) == 0);
  size_t rss0 = memory_now();
  trimalloc_stats_t s0 = stats_now();
  int bad = run_threads(THREADS);
  size_t rss1 = memory_now();
  trimalloc_stats_t s1 = stats_now();
  CHECK(bad == 0, "%d corrupt or failed blocks", bad);
  CHECK(s1.heaps <= 64, "%llu heaps after %d short-lived threads", (unsigned long long)s1.heaps, THREADS);
  CHECK(rss1 < rss0 + 32 * MiB, "RSS grew %zu KiB over %d threads", (rss1 - rss0) / KiB, THREADS);
  CHECK(s1.resident < s0.resident + 32 * MiB, "resident grew %llu KiB",
        (unsigned long long)(s1.resident - s0.resident) / KiB);
  CHECK(s1.mapped < s0.mapped + 64 * MiB, "mapped grew %llu KiB",
        (unsigned long long)(s1.mapped - s0.mapped) / KiB);
  CHECK(s1.allocated < s0.allocated + 4 * MiB, "allocated grew %llu KiB with nothing live",
        (unsigned long long)(s1.allocated - s0.allocated) / KiB);
}

int main(void) {
  RUN(test_thread_churn_bounded);
  return check_summary();
}
