/* The heap profiler's dump of 10,000 live samples that each have their own
 * call path (the target: under 50 ms, and no allocating thread
 * blocked more than 1 ms). Every allocation is sampled (interval 1) under a
 * stand-in for an interpreter's eval function; the frames hook gives 24
 * interpreter frames per sample, drawn from 4,096 (1,024 Ruby-like methods x
 * 4 lines), so no two samples share a path but frames repeat as in a real
 * program. Then, while one thread allocates and frees (timing every malloc),
 * the main thread dumps ROUNDS times: wall and thread-CPU time and minor
 * faults of each dump, the longest malloc during it, and the longest malloc
 * in as long a time right after it with no dump (scheduling's share). The allocating thread samples at
 * INTERVAL (default 512 KiB; 1: every malloc also takes the live set's lock);
 * CHURN 0: no allocating thread (the dump alone, e.g. under perf).
 *   cc -O2 -rdynamic -o /tmp/prof_dump bench/prof_dump.c core/build/libtrimalloc.a -pthread
 *   /tmp/prof_dump [ROUNDS [INTERVAL [CHURN]]] */
#define _GNU_SOURCE /* RUSAGE_THREAD */
#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../core/trimalloc.h"

enum { N = 10000, DEPTH = 24, KEYS = 1024, LINES = 4 };

static uint64_t cur; /* the sample being made: its path */
static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdull;
  x ^= x >> 33;
  return x;
}
static int frames(uint64_t *k, int32_t *l, int max) {
  int n = max < DEPTH ? max : DEPTH;
  for (int i = 0; i < n; i++) {
    uint64_t h = mix(cur * DEPTH + (uint64_t)i + 1);
    k[i] = 0x10000 + h % KEYS, l[i] = 10 + (int32_t)(h / KEYS % LINES);
  }
  return n;
}
#define STAY __asm__ volatile("" ::: "memory") /* no tail call: every frame stays */
__attribute__((noinline)) void *leaf(size_t n) { void *p = trimalloc_malloc(n); STAY; return p; }
__attribute__((noinline)) void *eval(size_t n) { void *p = leaf(n); STAY; return p; }

static uint64_t ns(clockid_t c) {
  struct timespec t;
  clock_gettime(c, &t);
  return (uint64_t)t.tv_sec * 1000000000u + (uint64_t)t.tv_nsec;
}

static long minflt(void) {
  struct rusage u;
  getrusage(RUSAGE_THREAD, &u);
  return u.ru_minflt;
}

static _Atomic int stop, churn_tid;
static _Atomic uint64_t worst, mallocs;

/* The allocating thread's context switches: voluntary ones are waits (a
 * lock, the kernel's mmap lock, a page), involuntary ones preemption. */
static void switches(long *vol, long *invol) {
  char path[64], line[128];
  snprintf(path, sizeof path, "/proc/self/task/%d/status", atomic_load(&churn_tid));
  FILE *f = fopen(path, "r");
  *vol = *invol = -1;
  while (f && fgets(line, sizeof line, f)) {
    sscanf(line, "voluntary_ctxt_switches: %ld", vol);
    sscanf(line, "nonvoluntary_ctxt_switches: %ld", invol);
  }
  if (f) fclose(f);
}

static void *churn(void *arg) {
  (void)arg;
  atomic_store(&churn_tid, (int)syscall(SYS_gettid));
  void *slots[64] = {0};
  for (unsigned i = 0; !atomic_load(&stop); i++) {
    trimalloc_free(slots[i & 63]);
    uint64_t t0 = ns(CLOCK_MONOTONIC);
    slots[i & 63] = trimalloc_malloc(64 + (i & 511));
    uint64_t d = ns(CLOCK_MONOTONIC) - t0, m = atomic_load(&worst);
    while (d > m && !atomic_compare_exchange_weak(&worst, &m, d)) {}
    atomic_fetch_add(&mallocs, 1);
  }
  for (int i = 0; i < 64; i++) trimalloc_free(slots[i]);
  return NULL;
}

int main(int argc, char **argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 5;
  size_t interval = argc > 2 ? (size_t)atoll(argv[2]) : 512 << 10;
  int churning = argc > 3 ? atoi(argv[3]) : 1;
  char name[64], file[64];
  for (unsigned k = 0; k < KEYS; k++) {
    snprintf(name, sizeof name, "App::Mod%u::Klass%u#method_%u", k % 37, k % 101, k);
    snprintf(file, sizeof file, "app/models/mod_%u/klass_%u.rb", k % 37, k % 101);
    trimalloc_prof_name_frame(0x10000 + k, name, file);
  }
  trimalloc_prof_start(1);
  trimalloc_prof_set_frames_hook(frames, (const void *)eval);
  static void *v[N];
  for (cur = 0; cur < N; cur++) v[cur] = eval(64 + cur % 1000);
  trimalloc_prof_set_frames_hook(NULL, NULL);
  trimalloc_stats_t st;
  trimalloc_stats(&st, sizeof st);
  printf("live samples %llu, interval during the dumps %zu\n", (unsigned long long)st.prof_samples, interval);
  trimalloc_prof_start(interval);
  pthread_t t;
  if (churning) pthread_create(&t, NULL, churn, NULL);
  struct timespec pause = {0, 20000000};
  nanosleep(&pause, NULL);
  uint64_t worst_all = 0;
  for (int r = 0; r < rounds; r++) {
    atomic_store(&worst, 0);
    long f0 = minflt(), v0, i0, v1, i1;
    switches(&v0, &i0);
    uint64_t m0 = atomic_load(&mallocs), w0 = ns(CLOCK_MONOTONIC), c0 = ns(CLOCK_THREAD_CPUTIME_ID);
    int err = trimalloc_prof_dump("/tmp/prof_dump.pb.gz", TRIMALLOC_PROF_LIVE, NULL, 0);
    uint64_t c1 = ns(CLOCK_THREAD_CPUTIME_ID), w1 = ns(CLOCK_MONOTONIC), m1 = atomic_load(&mallocs);
    uint64_t w = atomic_load(&worst);
    long f1 = minflt();
    switches(&v1, &i1);
    if (w > worst_all) worst_all = w;
    printf("dump %d: %s %.2f ms wall, %.2f ms CPU, %ld minor faults; longest malloc meanwhile %.3f ms (%llu mallocs; "
           "the allocating thread waited %ld times, was preempted %ld)\n",
           r, err ? "FAILED" : "ok", (double)(w1 - w0) / 1e6, (double)(c1 - c0) / 1e6, f1 - f0, (double)w / 1e6,
           (unsigned long long)(m1 - m0), v1 - v0, i1 - i0);
    /* the same time with no dump: what scheduling alone gives the allocating thread */
    atomic_store(&worst, 0);
    switches(&v0, &i0);
    struct timespec same = {(time_t)((w1 - w0) / 1000000000u), (long)((w1 - w0) % 1000000000u)};
    nanosleep(&same, NULL);
    uint64_t q = atomic_load(&worst);
    switches(&v1, &i1);
    if (churning)
      printf("        no dump, as long: longest malloc %.3f ms (waited %ld times, preempted %ld)\n", (double)q / 1e6,
             v1 - v0, i1 - i0);
    nanosleep(&pause, NULL);
  }
  atomic_store(&stop, 1);
  if (churning) pthread_join(t, NULL);
  FILE *f = fopen("/tmp/prof_dump.pb.gz", "rb");
  long size = 0;
  if (f) fseek(f, 0, SEEK_END), size = ftell(f), fclose(f);
  printf("file %ld bytes; longest malloc during any dump %.3f ms\n", size, (double)worst_all / 1e6);
  for (size_t i = 0; i < N; i++) trimalloc_free(v[i]);
  return 0;
}
