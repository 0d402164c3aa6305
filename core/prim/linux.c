/* prim.h on Linux (glibc and musl). The only file with OS specifics. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "../prim.h"

#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <sys/syscall.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static size_t page_size_cache;

size_t ta_prim_page_size(void) {
  if (page_size_cache == 0) {
    long n = sysconf(_SC_PAGESIZE);
    page_size_cache = n > 0 ? (size_t)n : 4096;
  }
  return page_size_cache;
}

static int map_raw(size_t size, void **out) {
  void *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) return errno ? errno : ENOMEM;
  *out = p;
  return 0;
}

int ta_prim_map(size_t size, size_t align, void **out) {
  void *p;
  int saved = errno, err = map_raw(size, &p);
  errno = saved;
  if (err) return err;
  if (((uintptr_t)p & (align - 1)) == 0) {
    *out = p;
    return 0;
  }
  /* Over-map by `align` and cut the ends off. */
  munmap(p, size);
  if (size + align < size) return ENOMEM;
  err = map_raw(size + align, &p);
  errno = saved;
  if (err) return err;
  uintptr_t start = ((uintptr_t)p + align - 1) & ~(uintptr_t)(align - 1);
  size_t head = start - (uintptr_t)p, tail = align - head;
  if (head) munmap(p, head);
  if (tail) munmap((void *)(start + size), tail);
  *out = (void *)start;
  return 0;
}

int ta_prim_unmap(void *p, size_t size) {
  int saved = errno, rc = munmap(p, size) == 0 ? 0 : errno;
  errno = saved;
  return rc;
}

int ta_prim_protect(void *p, size_t size, bool access) {
  int saved = errno, rc = mprotect(p, size, access ? PROT_READ | PROT_WRITE : PROT_NONE) == 0 ? 0 : errno;
  errno = saved;
  return rc;
}

int ta_prim_purge(void *p, size_t size) {
  int saved = errno, rc;
  do rc = madvise(p, size, MADV_DONTNEED);
  while (rc != 0 && errno == EAGAIN);
  rc = rc == 0 ? 0 : errno;
  errno = saved; /* a purge inside a successful malloc leaves errno alone */
  return rc;
}

int ta_prim_remap(void *p, size_t old_size, size_t new_size, size_t align, void **out) {
  int saved = errno;
  void *q = mremap(p, old_size, new_size, 0); /* in place */
  errno = saved; /* a failed attempt in place is not a failure */
  if (q != MAP_FAILED) {
    *out = q;
    return 0;
  }
  /* Reserve an aligned destination, then move the pages there. */
  void *dst;
  int err = ta_prim_map(new_size, align, &dst);
  if (err) return err;
  q = mremap(p, old_size, new_size, MREMAP_MAYMOVE | MREMAP_FIXED, dst);
  if (q == MAP_FAILED) {
    err = errno;
    munmap(dst, new_size);
    errno = saved;
    return err;
  }
  *out = q;
  return 0;
}

uint64_t ta_prim_clock_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t ta_prim_thread_cpu_ns(void) {
  struct timespec ts;
  if (clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts) != 0) return 0;
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

uint64_t ta_prim_clock_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

void ta_prim_write_err(const char *s, size_t n) {
  while (n > 0) {
    ssize_t w = write(2, s, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return;
    s += w;
    n -= (size_t)w;
  }
}

const char *ta_prim_getenv(const char *name) {
  return getenv(name);
}

uint64_t ta_prim_random(void) {
  int saved = errno;
  uint64_t k = 0;
  long n = syscall(SYS_getrandom, &k, sizeof k, 1 /* GRND_NONBLOCK */);
  if (n != (long)sizeof k) { /* the second half of AT_RANDOM: glibc's stack canary uses the first */
    const unsigned char *a = (const unsigned char *)getauxval(AT_RANDOM);
    if (a)
      for (int i = 0; i < 8; i++) k ^= (uint64_t)a[8 + i] << (8 * i);
  }
  errno = saved;
  uint64_t r = k ^ (ta_prim_clock_ns() * 0x9E3779B97F4A7C15ull);
  r ^= r >> 31;
  r *= 0xBF58476D1CE4E5B9ull;
  r ^= r >> 29;
  return r | 1;
}

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
static _Atomic int populate_unsupported;

bool ta_prim_populate(void *p, size_t size) {
  if (atomic_load_explicit(&populate_unsupported, memory_order_relaxed)) return false;
  int saved = errno;
  bool ok = madvise(p, size, MADV_POPULATE_WRITE) == 0;
  if (!ok && errno == EINVAL) atomic_store_explicit(&populate_unsupported, 1, memory_order_relaxed);
  errno = saved;
  return ok;
}

int ta_prim_resident(void *p, size_t size, unsigned char *vec) {
  int saved = errno, rc = mincore(p, size, vec) == 0 ? 0 : errno;
  errno = saved;
  return rc;
}

unsigned ta_prim_cpu(void) {
  int saved = errno, c = sched_getcpu();
  errno = saved;
  return c < 0 ? 0 : (unsigned)c;
}

/* The CPU quota of the process's cgroup (v2) and of its ancestors, in CPUs
 * rounded up (cpu.max "quota period"); 0 when none is set or it cannot be
 * read. No allocation: the paths are built on the stack. */
static unsigned cgroup_cpus(void) {
  char path[512] = "/sys/fs/cgroup", buf[512];
  int fd = open("/proc/self/cgroup", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t r = read(fd, buf, sizeof buf - 1);
  close(fd);
  if (r <= 3) return 0;
  buf[r] = 0;
  char *line = strstr(buf, "0::/"); /* the v2 hierarchy's line */
  if (!line || (line != buf && line[-1] != '\n')) return 0;
  line += 3;
  size_t base = strlen(path), len = strcspn(line, "\n");
  if (base + len + sizeof "/cpu.max" > sizeof path) return 0;
  memcpy(path + base, line, len);
  path[base + len] = 0;
  unsigned best = 0;
  for (;;) { /* this cgroup, then each ancestor up to the root */
    size_t at = strlen(path);
    memcpy(path + at, "/cpu.max", sizeof "/cpu.max");
    fd = open(path, O_RDONLY | O_CLOEXEC);
    path[at] = 0;
    if (fd >= 0) {
      r = read(fd, buf, sizeof buf - 1);
      close(fd);
      unsigned long quota = 0, period = 0;
      const char *p = buf;
      if (r > 0 && buf[0] >= '0' && buf[0] <= '9') {
        buf[r] = 0;
        while (*p >= '0' && *p <= '9') quota = quota * 10 + (unsigned long)(*p++ - '0');
        while (*p == ' ') p++;
        while (*p >= '0' && *p <= '9') period = period * 10 + (unsigned long)(*p++ - '0');
        if (quota && period) {
          unsigned c = (unsigned)((quota + period - 1) / period);
          if (!best || c < best) best = c;
        }
      }
    }
    char *slash = strrchr(path, '/');
    if (at <= sizeof "/sys/fs/cgroup" - 1 || !slash) break;
    *slash = 0;
  }
  return best;
}

/* The CPUs this process may run on: the online CPUs, no more than its
 * affinity mask holds, and no more than its cgroup's CPU quota (a container
 * limited to 2 CPUs on a 64-CPU host gets the arenas of 2). */
unsigned ta_prim_ncpus(void) {
  int saved = errno;
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) {
    long c = CPU_COUNT(&set);
    if (c > 0 && (n <= 0 || c < n)) n = c;
  }
  unsigned q = cgroup_cpus();
  if (q && (n <= 0 || (long)q < n)) n = (long)q;
  errno = saved;
  return n > 0 ? (unsigned)n : 1;
}

int ta_prim_tid(void) {
  return (int)syscall(SYS_gettid);
}

int ta_prim_thread_gone(int tid) {
  int saved = errno;
  int gone = syscall(SYS_tgkill, getpid(), tid, 0) != 0 && errno == ESRCH;
  errno = saved;
  return gone;
}

/* FUTEX_WAIT_PRIVATE and FUTEX_WAKE_PRIVATE by value: musl's headers do not
 * bring linux/futex.h */
#define TA_FUTEX_WAIT_PRIVATE 128
#define TA_FUTEX_WAKE_PRIVATE 129

void ta_prim_futex_wait(_Atomic uint32_t *word, uint32_t expected) {
  int saved = errno;
  syscall(SYS_futex, (uint32_t *)word, TA_FUTEX_WAIT_PRIVATE, expected, NULL, NULL, 0);
  errno = saved;
}

void ta_prim_futex_wake(_Atomic uint32_t *word) {
  int saved = errno;
  syscall(SYS_futex, (uint32_t *)word, TA_FUTEX_WAKE_PRIVATE, 1, NULL, NULL, 0);
  errno = saved;
}

int ta_prim_thread_start(void *(*fn)(void *), void *arg, const char *name, pthread_t *out) {
  int saved = errno;
  sigset_t all, old;
  sigfillset(&all);
  pthread_sigmask(SIG_SETMASK, &all, &old);
  int err = pthread_create(out, NULL, fn, arg);
  pthread_sigmask(SIG_SETMASK, &old, NULL);
  if (err == 0) pthread_setname_np(*out, name);
  errno = saved;
  return err;
}

/* Set by the new thread itself rather than through its attributes
 * (PTHREAD_EXPLICIT_SCHED): pthread_create fails when the policy cannot be
 * set, and the purger must start in a SCHED_IDLE program too. */
static cpu_set_t start_cpus;
static _Atomic int start_cpus_saved;

void ta_prim_affinity_save(void) {
  int saved = errno;
  if (sched_getaffinity(0, sizeof start_cpus, &start_cpus) == 0 && CPU_COUNT(&start_cpus) > 0)
    atomic_store_explicit(&start_cpus_saved, 1, memory_order_release);
  errno = saved;
}

void ta_prim_thread_defaults(void) {
  int saved = errno;
  struct sched_param param = {0};
  pthread_setschedparam(pthread_self(), SCHED_OTHER, &param);
  if (atomic_load_explicit(&start_cpus_saved, memory_order_acquire))
    sched_setaffinity(0, sizeof start_cpus, &start_cpus);
  errno = saved;
}

/* Reads a small sysfs file into buf (NUL-terminated) without allocating. */
static size_t read_small(const char *path, char *buf, size_t size) {
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return 0;
  ssize_t n = read(fd, buf, size - 1);
  close(fd);
  buf[n > 0 ? n : 0] = 0;
  return n > 0 ? (size_t)n : 0;
}

size_t ta_prim_hugepage_size(void) {
  static _Atomic size_t cached = 1; /* 1: not read yet */
  size_t v = atomic_load_explicit(&cached, memory_order_relaxed);
  if (v != 1) return v;
  int saved = errno;
  char buf[128];
  size_t size = 0;
  /* "always [madvise] never": a range that asks gets them unless "[never]" */
  if (read_small("/sys/kernel/mm/transparent_hugepage/enabled", buf, sizeof buf) && !strstr(buf, "[never]") &&
      read_small("/sys/kernel/mm/transparent_hugepage/hpage_pmd_size", buf, sizeof buf))
    size = (size_t)strtoull(buf, NULL, 10);
  if (size & (size - 1)) size = 0;
  errno = saved;
  atomic_store_explicit(&cached, size, memory_order_relaxed);
  return size;
}

void ta_prim_hugepage(void *p, size_t size) {
  int saved = errno;
  madvise(p, size, MADV_HUGEPAGE);
  errno = saved;
}

/* ---- files, for the heap profiler's dumps (prof_dump.c) ---- */
int64_t ta_prim_clock_real_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int ta_prim_pid(void) {
  return (int)getpid();
}

int ta_prim_create(const char *path, int *fd) {
  int saved = errno;
  *fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  int err = *fd < 0 ? errno : 0;
  errno = saved;
  return err;
}

int ta_prim_close(int fd) {
  int saved = errno;
  int err = close(fd) ? errno : 0;
  errno = saved;
  return err;
}

int ta_prim_remove(const char *path) {
  int saved = errno;
  int err = unlink(path) ? errno : 0;
  errno = saved;
  return err;
}

size_t ta_prim_exe_path(char *buf, size_t size) {
  int saved = errno;
  ssize_t n = readlink("/proc/self/exe", buf, size - 1);
  errno = saved;
  if (n < 0) n = 0;
  buf[n] = 0;
  return (size_t)n;
}
