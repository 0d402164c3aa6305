/* Producer/consumer with cross-thread frees, 2 threads: the producer
 * allocates blocks of 16..1024 B, writes a sequence number into each and
 * passes them through a single-producer single-consumer ring; the consumer
 * checks each block and frees it. Every free is a free of another thread's
 * block (the pattern of a job queue or of a GC sweeping another thread's
 * objects). Indices are published every 64 items so the ring itself costs
 * little next to malloc and free. */
#include "common.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#define RING (1u << 14)
#define PUBLISH 64

static void *ring[RING];
static _Alignas(64) atomic_ulong tail; /* written by the producer */
static _Alignas(64) atomic_ulong head; /* written by the consumer */
static long long total;

static void *producer(void *arg) {
  (void)arg;
  bench_rng_t rng = {0x243F6A8885A308D3ULL};
  unsigned long t = 0, h = 0;
  for (long long i = 0; i < total; i++) {
    while (t - h >= RING - PUBLISH) {
      h = atomic_load_explicit(&head, memory_order_acquire);
      if (t - h >= RING - PUBLISH) sched_yield();
    }
    size_t n = bench_range(&rng, 16, 1024);
    uint64_t *p = bench_xmalloc(n);
    p[0] = (uint64_t)i;
    p[1] = (uint64_t)n;
    if (n > 16) ((unsigned char *)p)[n - 1] = 0x5a;
    ring[t % RING] = p;
    t++;
    if ((t % PUBLISH) == 0 || i + 1 == total) atomic_store_explicit(&tail, t, memory_order_release);
  }
  return NULL;
}

static void *consumer(void *arg) {
  uint64_t *bad = arg;
  unsigned long h = 0, t = 0;
  for (long long i = 0; i < total; i++) {
    while (h == t) {
      t = atomic_load_explicit(&tail, memory_order_acquire);
      if (h == t) sched_yield();
    }
    uint64_t *p = ring[h % RING];
    if (p[0] != (uint64_t)i || (p[1] > 16 && ((unsigned char *)p)[p[1] - 1] != 0x5a)) (*bad)++;
    free(p);
    h++;
    if ((h % PUBLISH) == 0) atomic_store_explicit(&head, h, memory_order_release);
  }
  return NULL;
}

int main(int argc, char **argv) {
  total = bench_opt(argc, argv, "--items", 10000000);
  uint64_t bad = 0;
  pthread_t pt, ct;
  double t0 = bench_now();
  pthread_create(&ct, NULL, consumer, &bad);
  pthread_create(&pt, NULL, producer, NULL);
  pthread_join(pt, NULL);
  pthread_join(ct, NULL);
  double t1 = bench_now();
  if (bad != 0) {
    fprintf(stderr, "prodcons: %llu corrupted blocks\n", (unsigned long long)bad);
    return 1;
  }
  bench_json_t j;
  bench_json_begin(&j, "prodcons");
  bench_json_num(&j, "items", (double)total);
  bench_json_num(&j, "loop_s", t1 - t0);
  bench_json_num(&j, "mitems_per_s", (double)total / (t1 - t0) / 1e6);
  bench_json_end(&j);
  return 0;
}
