/* The core tests' harness: one header, no library.
 *
 * CHECK(cond, fmt, ...) counts a check; a failed one prints its file, line,
 * expression and message. RUN(fn) announces and runs one test function.
 * After each, the heap's invariant checker runs (when the core has one).
 * check_summary() prints `N passed, N failed` alone on the last line and
 * returns the process exit status. Counters are atomic, so checks may run on
 * any thread. Loops should count their own failures and CHECK once, so the
 * totals stay readable. */
#ifndef TRIMALLOC_TEST_CHECK_H
#define TRIMALLOC_TEST_CHECK_H

#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "../../core/trimalloc.h"

/* CHECK(cond) without a message passes an empty format. */
#pragma GCC diagnostic ignored "-Wformat-zero-length"

/* Sanitizer builds skip or scale down what the sanitizer cannot run. */
#if defined(__SANITIZE_THREAD__)
#define TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TEST_TSAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#ifndef TEST_TSAN
#define TEST_TSAN 0
#endif
#ifndef TEST_ASAN
#define TEST_ASAN 0
#endif
#define TEST_SANITIZED (TEST_TSAN || TEST_ASAN)

#define KiB ((size_t)1 << 10)
#define MiB ((size_t)1 << 20)

static atomic_long check_passed_n, check_failed_n;

__attribute__((format(printf, 5, 6))) static int check_report(int ok, const char *expr, const char *file,
                                                              int line, const char *fmt, ...) {
  if (ok) {
    atomic_fetch_add(&check_passed_n, 1);
    return 1;
  }
  long n = atomic_fetch_add(&check_failed_n, 1);
  if (n < 100) {
    char msg[512] = "";
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    fprintf(stdout, "FAIL %s:%d: %s%s%s\n", file, line, expr, msg[0] ? ": " : "", msg);
    fflush(stdout);
  }
  return 0;
}

/* Evaluates to 1 when cond holds, so a test can stop early on failure. */
#define CHECK(cond, ...) check_report(!!(cond), #cond, __FILE__, __LINE__, "" __VA_ARGS__)

/* Runs one test, then checks the calling thread's heap invariants. With
 * TEST_ONLY=part set, only the tests whose names hold it run (a test being
 * worked on, without the rest of its file). */
static inline bool test_selected(const char *name) {
  const char *only = getenv("TEST_ONLY");
  return !only || strstr(name, only);
}
#define RUN(fn)                                                  \
  do {                                                           \
    if (!test_selected(#fn)) break;                              \
    fprintf(stdout, "-- %s\n", #fn);                             \
    fflush(stdout);                                              \
    fn();                                                        \
    CHECK(heap_valid(), "heap invariants broken after %s", #fn); \
  } while (0)

#define SKIP(fn, why)                                 \
  do {                                                \
    fprintf(stdout, "-- %s skipped: %s\n", #fn, why); \
    fflush(stdout);                                   \
  } while (0)

static int check_summary(void) {
  long p = atomic_load(&check_passed_n), f = atomic_load(&check_failed_n);
  fprintf(stdout, "%ld passed, %ld failed\n", p, f);
  fflush(stdout);
  return f ? 1 : 0;
}

/* ---- helpers shared by the tests ---- */

/* The core's invariant checker for the calling thread's heap (trimalloc.h). */
static inline int heap_valid(void) {
  return trimalloc_check();
}

static inline size_t page_size(void) {
  return (size_t)sysconf(_SC_PAGESIZE);
}

/* Reads the start of a /proc file into buf (NUL-terminated) without
 * allocating; false if it cannot. */
static inline bool read_proc(const char *path, char *buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  ssize_t n = read(fd, buf, size - 1);
  close(fd);
  if (n <= 0) return false;
  buf[n] = 0;
  return true;
}

/* The process's resident set size in bytes, read without allocating. */
static inline size_t rss_bytes(void) {
  char buf[128];
  if (!read_proc("/proc/self/statm", buf, sizeof buf)) return 0;
  unsigned long size = 0, res = 0;
  if (sscanf(buf, "%lu %lu", &size, &res) != 2) return 0;
  return (size_t)res * page_size();
}

/* The command that runs this program when it is not run natively (run.sh's
 * TEST_RUNNER: an emulator such as "qemu-aarch64 -L /usr/aarch64-linux-gnu"),
 * or NULL. */
static inline const char *test_runner(void) {
  const char *r = getenv("TEST_RUNNER");
  return r && *r ? r : NULL;
}

/* Under a sanitizer or an emulator every step costs 5-50x the plain
 * build's: the heaviest workloads are smaller there, with the same checks
 * (qemu-user ran test_thread_churn's 5000 threads in 12-13 s, the plain build
 * in 1 s). */
static inline bool test_slow(void) {
  return TEST_SANITIZED || test_runner();
}

/* What the memory tests measure. Under ThreadSanitizer RSS also holds the
 * shadow of every byte ever touched, which madvise(MADV_DONTNEED) on the
 * application's pages does not release; under an emulator it holds the
 * emulator's own memory (qemu-user keeps about 280 KiB for every thread that
 * ever ran, and the code it translated). Under AddressSanitizer on Linux 6.18
 * it also keeps shadow pages of the application's memory that madvise does
 * not release (seen: 20 MiB over the baseline after a trim of a 287 MiB
 * burst, the same with the v2 core of 8981b07; the plain build's RSS is back
 * within 1 MiB). There the allocator's own count of resident bytes stands in
 * for it. */
static inline size_t resident_now(void);
static inline size_t memory_now(void) {
  return TEST_SANITIZED || test_runner() ? resident_now() : rss_bytes();
}

/* Replaces this process with `self arg` (a test re-executing itself), through
 * TEST_RUNNER when there is one: qemu-user does not follow execve, so an
 * emulated program must be started through the emulator again. Returns only
 * on failure. */
static inline void exec_self(const char *self, const char *arg) {
  char buf[1024], *argv[32], *save = NULL;
  int n = 0;
  const char *run = test_runner();
  if (run) {
    snprintf(buf, sizeof buf, "%s", run);
    for (char *w = strtok_r(buf, " ", &save); w && n < 29; w = strtok_r(NULL, " ", &save)) argv[n++] = w;
  }
  argv[n++] = (char *)self;
  argv[n++] = (char *)arg;
  argv[n] = NULL;
  execvp(argv[0], argv);
}

static inline double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline double thread_cpu_s(void) { /* the calling thread's CPU time */
  struct timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static inline trimalloc_stats_t stats_now(void) {
  trimalloc_stats_t s;
  memset(&s, 0, sizeof s);
  trimalloc_stats(&s, sizeof s);
  return s;
}

static inline size_t resident_now(void) {
  return (size_t)stats_now().resident;
}

/* A content pattern derived from the block's address and size, so a block
 * that was handed out twice, or overwritten by a neighbour, reads wrong. */
static inline uint8_t pattern_seed(const void *p, size_t n) {
  uint64_t h = ((uint64_t)(uintptr_t)p ^ ((uint64_t)n << 17)) * 0x9E3779B97F4A7C15ull;
  return (uint8_t)((h >> 56) | 1);
}

static inline void pattern_template(uint8_t tpl[256], uint8_t seed) {
  for (unsigned k = 0; k < 256; k++) tpl[k] = (uint8_t)(seed + (uint8_t)k * 13u);
}

/* Byte i of a block is seed + 13 * i (mod 256): period 256, so the fill and
 * the check work on 256-byte chunks with memcpy / memcmp. */
static inline void pattern_fill(void *p, size_t n, uint8_t seed) {
  uint8_t tpl[256], *b = p;
  pattern_template(tpl, seed);
  for (size_t i = 0; i < n; i += 256) memcpy(b + i, tpl, n - i < 256 ? n - i : 256);
}

/* Returns the index of the first wrong byte, or n when all are right. */
static inline size_t pattern_find_bad(const void *p, size_t n, uint8_t seed) {
  uint8_t tpl[256];
  const uint8_t *b = p;
  pattern_template(tpl, seed);
  for (size_t i = 0; i < n; i += 256) {
    size_t len = n - i < 256 ? n - i : 256;
    if (memcmp(b + i, tpl, len) != 0)
      for (size_t k = 0; k < len; k++)
        if (b[i + k] != tpl[k]) return i + k;
  }
  return n;
}

static inline int pattern_ok(const void *p, size_t n, uint8_t seed) {
  return pattern_find_bad(p, n, seed) == n;
}

/* Small blocks are checked whole, big ones at both ends. */
static inline void block_fill(uint8_t *p, size_t n, uint8_t seed) {
  if (n <= 8192) {
    pattern_fill(p, n, seed);
    return;
  }
  pattern_fill(p, 4096, seed);
  size_t at = n - 4096;
  pattern_fill(p + at, 4096, (uint8_t)(seed + (uint8_t)at * 13u));
}

static inline int block_ok(const uint8_t *p, size_t n, uint8_t seed) {
  if (n <= 8192) return pattern_ok(p, n, seed);
  size_t at = n - 4096;
  return pattern_ok(p, 4096, seed) && pattern_ok(p + at, 4096, (uint8_t)(seed + (uint8_t)at * 13u));
}

/* A small deterministic PRNG (xorshift64*), one state per thread. */
static inline uint64_t rng_next(uint64_t *s) {
  uint64_t x = *s;
  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  *s = x;
  return x * 0x2545F4914F6CDD1Dull;
}

/* A size from the mix a Ruby or Python process sends: mostly small, some
 * medium, a few large. */
static inline size_t rng_size(uint64_t *s) {
  uint64_t r = rng_next(s);
  unsigned pick = (unsigned)(r % 100);
  r >>= 8;
  if (pick < 70) return 1 + r % 512;
  if (pick < 92) return 513 + r % (8 * KiB);
  if (pick < 99) return 8 * KiB + r % (256 * KiB);
  return 256 * KiB + r % (3 * MiB);
}

/* Sets an option and checks that it took; returns the old value, to restore. */
static inline long long option_swap(const char *name, long long value) {
  long long old = -1;
  trimalloc_option_get(name, &old);
  int r = trimalloc_option_set(name, value);
  CHECK(r == 0, "option %s = %lld: returned %d", name, value, r);
  return old;
}

static inline long long option_value(const char *name) {
  long long v = -1;
  CHECK(trimalloc_option_get(name, &v) == 0, "option %s cannot be read", name);
  return v;
}

/* The most one thread's cache may hold once it has read its bound with
 * `caches` thread caches registered (core/tcache.c thread_limit):
 * tcache_total over the caches rounded up to a power of two (and over the
 * OS page size / 4 KiB), at least tcache_bytes; 0 when tcache_bytes is 0. */
static inline uint64_t thread_cache_bound(uint64_t caches) {
  uint64_t least = (uint64_t)option_value("tcache_bytes"), total = (uint64_t)option_value("tcache_total");
  if (least == 0) return 0;
  unsigned shift = 0;
  while (((uint64_t)1 << shift) < caches) shift++;
  total /= (uint64_t)sysconf(_SC_PAGESIZE) / 4096;
  return (total >> shift) > least ? total >> shift : least;
}

/* The process's minor page faults so far. */
static inline long minor_faults(void) {
  struct rusage ru;
  getrusage(RUSAGE_SELF, &ru);
  return ru.ru_minflt;
}

static inline void sleep_ms(long ms) {
  struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* A phase counter threads wait on (a mutex and a condition variable: a thread
 * that waits here sleeps in the kernel and makes no allocator call). */
typedef struct gate_s {
  pthread_mutex_t mu;
  pthread_cond_t cv;
  int n;
} gate_t;
#define GATE_INIT {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, 0}

static inline void gate_add(gate_t *g, int d) {
  pthread_mutex_lock(&g->mu);
  g->n += d;
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
}

static inline void gate_set(gate_t *g, int n) {
  pthread_mutex_lock(&g->mu);
  g->n = n;
  pthread_cond_broadcast(&g->cv);
  pthread_mutex_unlock(&g->mu);
}

/* Waits until the counter reaches at least n. */
static inline void gate_wait(gate_t *g, int n) {
  pthread_mutex_lock(&g->mu);
  while (g->n < n) pthread_cond_wait(&g->cv, &g->mu);
  pthread_mutex_unlock(&g->mu);
}

/* A bounded blocking queue of blocks handed from thread to thread: a full
 * queue makes producers wait, an empty one consumers (test_threads,
 * test_tcache). */
typedef struct item_s {
  uint8_t *p;
  size_t n;
  int from; /* the producer's number, for the tests that check it */
} item_t;
enum { QUEUE_MAX = 2048 };
typedef struct queue_s {
  pthread_mutex_t mu;
  pthread_cond_t not_empty, not_full;
  size_t cap, head, len; /* cap <= QUEUE_MAX */
  item_t buf[QUEUE_MAX];
} queue_t;
#define QUEUE_INIT(c) {PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, PTHREAD_COND_INITIALIZER, (c), 0, 0, {{0}}}

static inline void q_push(queue_t *q, item_t it) {
  pthread_mutex_lock(&q->mu);
  while (q->len == q->cap) pthread_cond_wait(&q->not_full, &q->mu);
  q->buf[(q->head + q->len++) % q->cap] = it;
  pthread_cond_signal(&q->not_empty);
  pthread_mutex_unlock(&q->mu);
}

static inline item_t q_pop(queue_t *q) {
  pthread_mutex_lock(&q->mu);
  while (q->len == 0) pthread_cond_wait(&q->not_empty, &q->mu);
  item_t it = q->buf[q->head];
  q->head = (q->head + 1) % q->cap;
  q->len--;
  pthread_cond_signal(&q->not_full);
  pthread_mutex_unlock(&q->mu);
  return it;
}

/* Is the OS page at p resident? -1 when mincore fails. (A byte per host
 * page: under qemu-user the host's pages may be smaller than the guest's,
 * and qemu passes the call through, so v has room for 64.) */
static inline int page_resident(const void *p) {
  unsigned char v[64] = {0};
  void *page = (void *)((uintptr_t)p & ~(uintptr_t)(page_size() - 1));
  if (mincore(page, page_size(), v) != 0) return -1;
  return v[0] & 1;
}

/* Does MADV_POPULATE_WRITE fault pages in here? (Linux 5.14+; qemu-user
 * accepts it and does nothing.) */
static inline int populate_works(void) {
  size_t ps = page_size();
  void *p = mmap(NULL, ps, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return 0;
  int ok = madvise(p, ps, 23 /* MADV_POPULATE_WRITE */) == 0 && page_resident(p) == 1;
  munmap(p, ps);
  return ok;
}

#endif
