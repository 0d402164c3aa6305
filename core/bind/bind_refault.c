/* The refault budget's inputs: what a page faulted back in costs, and the
 * CPU time the process spent. See binding.h ("the refault budget"). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#include "bind_internal.h"

#define PROBE_PAGES 32
#define PROBE_ROUNDS 3

static uint64_t clock_ns(clockid_t c) {
  struct timespec ts;
  if (clock_gettime(c, &ts) != 0) return 0;
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* ---- the CPU clock ----
 * The process's CPU time (every thread) plus an offset only
 * ta_bind_cpu_advance (tests) moves. */
static _Atomic uint64_t cpu_offset_ns;

uint64_t ta_bind_cpu_ns(void) {
  return clock_ns(CLOCK_PROCESS_CPUTIME_ID) + atomic_load_explicit(&cpu_offset_ns, memory_order_relaxed);
}

void ta_bind_cpu_advance(double seconds) {
  if (seconds > 0) atomic_fetch_add(&cpu_offset_ns, (uint64_t)(seconds * 1e9));
}

/* ---- the fault cost ----
 * Measured once per process, on first need (a fork child inherits it: same
 * machine): PROBE_ROUNDS times, return PROBE_PAGES written pages with
 * MADV_DONTNEED and write them again, timed in this thread's CPU time; the
 * median round, per page. That is what a trim and the refault of what it
 * returned cost the kernel (about 10 us a page on the 2-CPU VM of bench/,
 * ~1 ms for the whole probe there). It leaves out what the allocator and the
 * caches pay on top, which refault_share has to allow for. 0 when it cannot
 * be measured: then the budget lets every trim run (as without it). */
static pthread_once_t measure_once = PTHREAD_ONCE_INIT;
static double measured_ns;
static _Atomic uint64_t fault_ns_override; /* a double's bits; 0: none (tests) */

static void measure(void) {
  long page = sysconf(_SC_PAGESIZE);
  if (page <= 0) return;
  size_t len = (size_t)page * PROBE_PAGES;
  volatile char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) return;
  for (size_t i = 0; i < len; i += (size_t)page) p[i] = 1;
  double round[PROBE_ROUNDS];
  int n = 0;
  for (int r = 0; r < PROBE_ROUNDS; r++) {
    uint64_t t0 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    if (madvise((void *)p, len, MADV_DONTNEED) != 0) break;
    for (size_t i = 0; i < len; i += (size_t)page) p[i] = 1;
    uint64_t t1 = clock_ns(CLOCK_THREAD_CPUTIME_ID);
    if (t0 == 0 || t1 <= t0) break;
    round[n++] = (double)(t1 - t0) / PROBE_PAGES;
  }
  munmap((void *)p, len);
  if (n < PROBE_ROUNDS) return;
  for (int i = 1; i < n; i++) /* three values: sort, take the middle */
    for (int j = i; j > 0 && round[j] < round[j - 1]; j--) {
      double t = round[j];
      round[j] = round[j - 1];
      round[j - 1] = t;
    }
  measured_ns = round[n / 2];
}

double ta_bind_fault_ns(void) {
  uint64_t bits = atomic_load_explicit(&fault_ns_override, memory_order_relaxed);
  if (bits) {
    double d;
    __builtin_memcpy(&d, &bits, sizeof d);
    return d;
  }
  pthread_once(&measure_once, measure);
  return measured_ns;
}

void ta_bind_test_fault_ns(double ns) {
  uint64_t bits = 0;
  if (ns > 0) __builtin_memcpy(&bits, &ns, sizeof bits);
  atomic_store(&fault_ns_override, bits);
}

/* The price of returning `free_bytes` now, in ns of CPU. */
double ta_bind_refault_price(uint64_t free_bytes) {
  long page = sysconf(_SC_PAGESIZE);
  if (page <= 0) page = 4096;
  return (double)free_bytes / (double)page * ta_bind_fault_ns();
}
