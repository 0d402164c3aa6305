/* Idle return: does an allocator give back a burst once the program stops
 * calling it? `--threads` threads (4) allocate `--mb` MiB (1024, requested
 * bytes, each block written in full) of mixed blocks, half of them small
 * (16..512 B) and half medium (512 B..64 KiB, log-uniform), each thread a
 * quarter; then every block is freed, half of them by another thread than the
 * one that allocated them (thread t frees its even-numbered blocks and the
 * odd-numbered blocks of thread t+1). Then every worker thread sleeps (on a
 * barrier) and the main thread, without calling malloc or free, reads its own
 * RSS from /proc/self/statm (open/read, no stdio) every `--sample-ms` ms (50)
 * for `--idle-ms` ms (2000).
 *
 * Reports RSS in bytes: baseline (the threads started, before the burst),
 * peak (everything allocated), right after the frees, at 500 ms, 1 s and
 * `--idle-ms` after the frees, and the lowest sample; the time after the
 * frees until 90% of the burst (peak - baseline) was given back (0: at once;
 * -1: not within `--idle-ms`); wall time of the burst and the frees; CPU
 * time and minor faults of the whole (burst, frees and idle time: a purging
 * thread's work counts), and of each phase. The bookkeeping arrays are
 * mmap'ed, so the allocator holds nothing but the burst. */
#include "common.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sys/mman.h>

typedef struct {
  int id;
  size_t n;         /* blocks allocated */
  void **blocks;    /* mmap'ed */
  size_t cap;
  uint64_t bytes;   /* requested bytes allocated */
  uint64_t target;  /* bytes to allocate */
  uint64_t check;
} worker_t;

static int g_threads;
static worker_t *g_w;
static pthread_barrier_t g_start, g_allocated, g_freed, g_exit;

static uint64_t rss_raw(int fd) {
  char buf[128];
  ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
  if (n <= 0) return 0;
  buf[n] = 0;
  char *p = buf;
  while (*p && *p != ' ') p++;
  return (uint64_t)strtoull(p, NULL, 10) * (uint64_t)sysconf(_SC_PAGESIZE);
}

static void *xmmap(size_t n) {
  void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    fprintf(stderr, "idle: mmap(%zu) failed: %s\n", n, strerror(errno));
    exit(2);
  }
  return p;
}

static void *worker(void *arg) {
  worker_t *w = arg;
  bench_rng_t rng = {0x9E3779B97F4A7C15ULL * (uint64_t)(w->id + 1)};
  pthread_barrier_wait(&g_start);
  while (w->bytes < w->target && w->n < w->cap) {
    size_t sz = (bench_rand(&rng) & 1) ? bench_range(&rng, 16, 512) : bench_log_range(&rng, 512, 65536);
    unsigned char *p = bench_xmalloc(sz);
    memset(p, (int)(w->n & 0xff), sz);
    w->blocks[w->n++] = p;
    w->bytes += sz;
  }
  pthread_barrier_wait(&g_allocated);
  /* Own even-numbered blocks, and the odd-numbered ones of the next thread. */
  worker_t *next = &g_w[(w->id + 1) % g_threads];
  for (size_t i = 0; i < w->n; i += 2) {
    w->check += ((unsigned char *)w->blocks[i])[0];
    free(w->blocks[i]);
  }
  for (size_t i = 1; i < next->n; i += 2) {
    w->check += ((unsigned char *)next->blocks[i])[0];
    free(next->blocks[i]);
  }
  pthread_barrier_wait(&g_freed);
  pthread_barrier_wait(&g_exit); /* sleeps here while the main thread samples */
  return NULL;
}

int main(int argc, char **argv) {
  long long mb = bench_opt(argc, argv, "--mb", 1024);
  g_threads = (int)bench_opt(argc, argv, "--threads", 4);
  long long idle_ms = bench_opt(argc, argv, "--idle-ms", 2000);
  long long sample_ms = bench_opt(argc, argv, "--sample-ms", 50);
  int fd = open("/proc/self/statm", O_RDONLY);
  if (fd < 0 || g_threads < 1 || sample_ms < 1) return 2;

  g_w = xmmap(sizeof *g_w * (size_t)g_threads);
  pthread_t *tids = xmmap(sizeof *tids * (size_t)g_threads);
  pthread_barrier_init(&g_start, NULL, (unsigned)g_threads + 1);
  pthread_barrier_init(&g_allocated, NULL, (unsigned)g_threads + 1);
  pthread_barrier_init(&g_freed, NULL, (unsigned)g_threads + 1);
  pthread_barrier_init(&g_exit, NULL, (unsigned)g_threads + 1);
  uint64_t per = (uint64_t)mb * 1024 * 1024 / (uint64_t)g_threads;
  for (int t = 0; t < g_threads; t++) {
    g_w[t].id = t;
    g_w[t].target = per;
    g_w[t].cap = (size_t)(per / 16) + 16;
    g_w[t].blocks = xmmap(g_w[t].cap * sizeof(void *));
    if (pthread_create(&tids[t], NULL, worker, &g_w[t]) != 0) return 2;
  }
  uint64_t baseline = rss_raw(fd);
  long f0 = bench_minflt();
  double c0 = bench_cpu(), t0 = bench_now();
  pthread_barrier_wait(&g_start);
  pthread_barrier_wait(&g_allocated);
  double t1 = bench_now(), c1 = bench_cpu();
  long f1 = bench_minflt();
  uint64_t peak = rss_raw(fd);
  pthread_barrier_wait(&g_freed);
  double t2 = bench_now(), c2 = bench_cpu();
  long f2 = bench_minflt();
  uint64_t freed = rss_raw(fd);

  /* Idle: sample on a fixed 50 ms grid, no allocator call. */
  uint64_t at500 = freed, at1s = freed, atend = freed, low = freed;
  uint64_t burst = peak > baseline ? peak - baseline : 0;
  uint64_t goal = baseline + burst / 10; /* 90% of the burst given back */
  double returned90 = freed <= goal ? 0 : -1;
  struct timespec next;
  clock_gettime(CLOCK_MONOTONIC, &next);
  for (long long ms = sample_ms; ms <= idle_ms; ms += sample_ms) {
    next.tv_nsec += sample_ms * 1000000L;
    while (next.tv_nsec >= 1000000000L) {
      next.tv_nsec -= 1000000000L;
      next.tv_sec++;
    }
    clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    uint64_t r = rss_raw(fd);
    if (ms <= 500) at500 = r;
    if (ms <= 1000) at1s = r;
    atend = r;
    if (r < low) low = r;
    if (returned90 < 0 && r <= goal) returned90 = (double)ms;
  }
  double c3 = bench_cpu();
  long f3 = bench_minflt();
  uint64_t hwm = bench_peak_rss();
  pthread_barrier_wait(&g_exit);
  uint64_t bytes = 0, blocks = 0, check = 0;
  for (int t = 0; t < g_threads; t++) {
    pthread_join(tids[t], NULL);
    bytes += g_w[t].bytes;
    blocks += g_w[t].n;
    check += g_w[t].check;
  }

  bench_json_t j;
  bench_json_begin(&j, "idle-return");
  bench_json_num(&j, "check", (double)check);
  bench_json_num(&j, "threads", g_threads);
  bench_json_num(&j, "bytes", (double)bytes);
  bench_json_num(&j, "blocks", (double)blocks);
  bench_json_num(&j, "baseline", (double)baseline);
  bench_json_num(&j, "peak", (double)peak);
  bench_json_num(&j, "peak_hwm", (double)hwm);
  bench_json_num(&j, "freed", (double)freed);
  bench_json_num(&j, "idle_500ms", (double)at500);
  bench_json_num(&j, "idle_1s", (double)at1s);
  bench_json_num(&j, "idle_end", (double)atend);
  bench_json_num(&j, "idle_low", (double)low);
  bench_json_num(&j, "idle_ms", (double)idle_ms);
  bench_json_num(&j, "ms_to_90pct_returned", returned90);
  bench_json_num(&j, "wall_s", t2 - t0);
  bench_json_num(&j, "cpu_s", c3 - c0);
  bench_json_num(&j, "minflt", (double)(f3 - f0));
  bench_json_num(&j, "wall_burst_s", t1 - t0);
  bench_json_num(&j, "wall_free_s", t2 - t1);
  bench_json_num(&j, "cpu_burst_s", c1 - c0);
  bench_json_num(&j, "cpu_free_s", c2 - c1);
  bench_json_num(&j, "cpu_idle_s", c3 - c2);
  bench_json_num(&j, "minflt_burst", (double)(f1 - f0));
  bench_json_num(&j, "minflt_free", (double)(f2 - f1));
  bench_json_num(&j, "minflt_idle", (double)(f3 - f2));
  bench_json_end(&j);
  return 0;
}
