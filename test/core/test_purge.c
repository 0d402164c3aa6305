/* Returning memory without being asked, and trims.
 *  - The idle return: four threads allocate a 256 MiB burst (16 B..64 KiB,
 *    a quarter of each thread's blocks freed by another thread), free it
 *    all and sleep; with no allocator call, RSS is back within 16 MiB of the
 *    pre-burst baseline within 1 s (the background purger), and the
 *    purger says it runs.
 *  - The background purger starts lazily: not in a process that never
 *    freed, then once something is left to purge (a child process); set
 *    to background = 0 it has stopped when trimalloc_option_set returns, and
 *    set back to 1 it starts again.
 *  - With background = 0 (a child with TRIMALLOC_BACKGROUND=0) nothing is
 *    purged while the process idles, and a trim then returns it all.
 *  - The delayed purge with allocation activity and no trim (as in v1).
 *  - A trim racing with threads that allocate and free (cross-thread too),
 *    run under TSan as well.
 *  - An empty trim is cheap: 10,000 of them release nothing and make no
 *    system call (a seccomp filter in a child kills it at the first one;
 *    plain builds, where the kernel's seccomp is the program's own).
 * Memory is RSS (/proc/self/statm, read without allocating); under TSan,
 * whose shadow memory is never released, the allocator's resident count. */
#include <dirent.h>
#include <pthread.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#include <sched.h>

#include "check.h"

#define U(x) ((unsigned long long)(x))

static char self_path[4096];

/* ---- a burst spread over threads ---- */
enum { MAX_BURST_THREADS = 4 };

typedef struct blk_s {
  uint8_t *p;
  size_t n;
} blk_t;

typedef struct burst_s {
  int threads;
  size_t bytes_per_thread;
  size_t cap; /* blocks per thread table */
  blk_t *tab[MAX_BURST_THREADS];
  size_t count[MAX_BURST_THREADS];
  gate_t go, allocated, free_now, freed, asleep, wake;
  atomic_long nulls, bad;
} burst_t;

static burst_t *the_burst;

/* Sizes from 16 B to 64 KiB with the bytes split evenly between small
 * (16..256), medium (..8 KiB) and large (..64 KiB) blocks. */
static size_t burst_size(uint64_t *rng, size_t spent[3]) {
  int c = spent[0] <= spent[1] && spent[0] <= spent[2] ? 0 : spent[1] <= spent[2] ? 1 : 2;
  uint64_t r = rng_next(rng);
  size_t n = c == 0 ? 16 + r % 241 : c == 1 ? 257 + r % (8 * KiB - 256) : 8 * KiB + 1 + r % (56 * KiB);
  spent[c] += n;
  return n;
}

/* Writes every byte of a small block, one byte per OS page of a big one. */
static void touch(uint8_t *p, size_t n) {
  size_t ps = page_size();
  if (n <= ps) {
    memset(p, (int)(n & 0xff) | 1, n);
    return;
  }
  for (size_t i = 0; i < n; i += ps) p[i] = (uint8_t)(n | 1);
  p[n - 1] = (uint8_t)(n | 1);
}

static int touched_ok(const uint8_t *p, size_t n) {
  return p[0] == (uint8_t)(n | 1) && p[n - 1] == (uint8_t)(n | 1);
}

static void *burst_worker(void *arg) {
  burst_t *b = the_burst;
  int id = (int)(intptr_t)arg, nt = b->threads;
  uint64_t rng = 0xB0257ull + (uint64_t)id * 1000003;
  size_t spent[3] = {0, 0, 0}, bytes = 0, k = 0;
  blk_t *tab = b->tab[id];
  gate_wait(&b->go, 1);
  while (bytes < b->bytes_per_thread && k < b->cap) {
    size_t n = burst_size(&rng, spent);
    uint8_t *p = trimalloc_malloc(n);
    if (!p) {
      atomic_fetch_add(&b->nulls, 1);
      break;
    }
    touch(p, n);
    tab[k++] = (blk_t){p, n};
    bytes += n;
  }
  b->count[id] = k;
  gate_add(&b->allocated, 1);
  gate_wait(&b->free_now, 1);
  /* A quarter of the next thread's blocks, and the rest of our own. */
  blk_t *other = b->tab[(id + 1) % nt];
  size_t other_n = b->count[(id + 1) % nt];
  long bad = 0;
  for (size_t i = 0; i < other_n; i += 4) {
    if (!touched_ok(other[i].p, other[i].n)) bad++;
    trimalloc_free(other[i].p);
  }
  for (size_t i = 0; i < k; i++)
    if (i % 4) {
      if (!touched_ok(tab[i].p, tab[i].n)) bad++;
      trimalloc_free(tab[i].p);
    }
  atomic_fetch_add(&b->bad, bad);
  gate_add(&b->freed, 1);
  gate_wait(&b->freed, nt); /* nobody sleeps before every block is freed */
  gate_add(&b->asleep, 1);
  gate_wait(&b->wake, 1); /* asleep: no allocator call until released */
  return NULL;
}

static pthread_t burst_threads[MAX_BURST_THREADS];

/* Maps and touches the tables (outside the allocator, before any baseline)
 * and starts the threads, which wait for burst_go. */
static burst_t *burst_start(int threads, size_t total) {
  static burst_t b;
  memset(&b, 0, sizeof b);
  b.threads = threads;
  b.bytes_per_thread = total / (size_t)threads;
  b.cap = b.bytes_per_thread / 128 + 1024;
  gate_t g = GATE_INIT;
  b.go = b.allocated = b.free_now = b.freed = b.asleep = b.wake = g;
  for (int i = 0; i < threads; i++) {
    b.tab[i] = mmap(NULL, b.cap * sizeof(blk_t), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (b.tab[i] == MAP_FAILED) abort();
    memset(b.tab[i], 0, b.cap * sizeof(blk_t));
  }
  the_burst = &b;
  for (int i = 0; i < threads; i++) pthread_create(&burst_threads[i], NULL, burst_worker, (void *)(intptr_t)i);
  return &b;
}

static void burst_end(burst_t *b) {
  gate_set(&b->wake, 1);
  for (int i = 0; i < b->threads; i++) pthread_join(burst_threads[i], NULL);
  CHECK(atomic_load(&b->nulls) == 0, "%ld burst allocations failed", atomic_load(&b->nulls));
  CHECK(atomic_load(&b->bad) == 0, "%ld burst blocks with wrong contents", atomic_load(&b->bad));
  for (int i = 0; i < b->threads; i++) munmap(b->tab[i], b->cap * sizeof(blk_t));
}

/* Lets the threads allocate, measures the peak, lets them free, and waits
 * until every one sleeps. Returns the peak. */
static size_t burst_run(burst_t *b) {
  gate_set(&b->go, 1);
  gate_wait(&b->allocated, b->threads);
  size_t peak = memory_now();
  gate_set(&b->free_now, 1);
  gate_wait(&b->asleep, b->threads);
  return peak;
}

static const size_t IDLE_BURST = 256 * MiB;

static void test_idle_return(void) {
  trimalloc_trim();
  burst_t *b = burst_start(4, IDLE_BURST);
  sleep_ms(20);
  size_t base = memory_now();
  trimalloc_stats_t s0 = stats_now();
  size_t peak = burst_run(b);
  /* Every thread sleeps now. From here on: no allocator call (except the
   * resident count that stands in for RSS under TSan). */
  double t0 = now_s(), under_at = -1, t = 0;
  size_t m = 0, lowest = SIZE_MAX;
  while ((t = now_s() - t0) < 3.0) {
    m = memory_now();
    if (m < lowest) lowest = m;
    if (m <= base + 16 * MiB) {
      under_at = t;
      break;
    }
    sleep_ms(5);
  }
  trimalloc_stats_t s1 = stats_now();
  fprintf(stdout, "   %s: baseline %zu KiB, peak %zu KiB, back under +16 MiB after %.3f s (lowest %zu KiB)\n",
          TEST_TSAN ? "resident" : "RSS", base / KiB, peak / KiB, under_at, lowest / KiB);
  CHECK(peak >= base + IDLE_BURST / 2, "the burst did not show: %zu -> %zu KiB", base / KiB, peak / KiB);
  /* The product's bound, 1 s, in the plain build on the machine itself; the
   * sanitizers' builds purge several times slower (on a loaded machine their
   * purger came back at 1.58-1.70 s, twice in session 21), and under qemu
   * at 64 KiB pages it came back at 1.026 s once */
  const double within = TEST_SANITIZED || test_runner() ? 2.0 : 1.0;
  CHECK(under_at >= 0 && under_at <= within,
        "idle with every thread asleep: %zu KiB after %.3f s, baseline %zu KiB (want within 16 MiB in %.0f s)",
        m / KiB, t, base / KiB, within);
  CHECK(s1.trims == s0.trims, "something called trim");
  CHECK(s1.background == 1, "the background purger does not say it runs (background = %llu)", U(s1.background));
  /* each freed its burst after all were registered: its bound is the share of s1.heaps caches */
  CHECK(s1.tcache_bytes <= s0.tcache_bytes + 4 * thread_cache_bound(s1.heaps),
        "four sleeping threads hold %llu bytes in their caches (%llu caches, %llu bytes a thread)",
        U(s1.tcache_bytes), U(s1.heaps), U(thread_cache_bound(s1.heaps)));
  burst_end(b);
}

/* ---- children with other options (options are read once at start) ---- */

static int run_self(const char *mode, const char *const *env) {
  fflush(stdout);
  fflush(stderr);
  pid_t pid = fork();
  if (pid == 0) {
    for (int i = 0; env && env[i]; i++) putenv((char *)env[i]);
    exec_self(self_path, mode);
    _exit(127);
  }
  int st = 0;
  if (pid < 0 || waitpid(pid, &st, 0) != pid) return -1;
  return st;
}

static void check_child(const char *mode, const char *const *env) {
  int st = run_self(mode, env);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child %s: status %d (its FAIL lines are above)", mode, st);
}

/* Whether the stats say the purger runs, waiting up to `seconds` for it. */
static bool purger_within(double seconds) {
  double t0 = now_s();
  while (stats_now().background == 0 && now_s() - t0 < seconds) sleep_ms(5);
  return stats_now().background == 1;
}

/* In a child: never freed, no purger; something left to purge, a purger. */
static void child_lazy(void) {
  trimalloc_stats_t s = stats_now();
  CHECK(s.background == 0, "background = %llu before anything was allocated", U(s.background));
  enum { N = 2048 };
  static void *p[N];
  for (int i = 0; i < N; i++) {
    p[i] = trimalloc_malloc(2048 + (size_t)(i % 8) * 512);
    memset(p[i], 1, 2048);
  }
  sleep_ms(300);
  s = stats_now();
  CHECK(s.background == 0, "the purger started in a process that never freed anything");
  for (int i = 0; i < N; i++) trimalloc_free(p[i]);
  double t0 = now_s();
  CHECK(purger_within(5), "no purger 5 s after 5 MiB were freed");
  while (stats_now().dirty > 0 && now_s() - t0 < 5) sleep_ms(5);
  s = stats_now();
  CHECK(s.dirty == 0, "dirty %llu bytes 5 s after the frees, with the purger running", U(s.dirty));
  /* Turned off, it has stopped when set returns (it was asleep, nothing
   * left to purge); turned on again, it starts again when there is. */
  CHECK(trimalloc_option_set("background", 0) == 0);
  s = stats_now();
  CHECK(s.background == 0, "background = %llu right after trimalloc_option_set(\"background\", 0)",
        U(s.background));
  CHECK(trimalloc_option_set("background", 1) == 0);
  for (int i = 0; i < N; i++) p[i] = trimalloc_malloc(2048 + (size_t)(i % 8) * 512);
  for (int i = 0; i < N; i++) trimalloc_free(p[i]);
  CHECK(purger_within(5), "no purger 5 s after background was set back to 1 and 5 MiB freed");
}

static void test_background_starts_lazily(void) {
  check_child("--child-lazy", NULL);
}

static const size_t OFF_BURST = 128 * MiB;

/* In a child with TRIMALLOC_BACKGROUND=0: idle keeps, trim returns. */
static void child_background_off(void) {
  CHECK(option_value("background") == 0, "TRIMALLOC_BACKGROUND=0 did not set the option");
  burst_t *b = burst_start(2, OFF_BURST);
  sleep_ms(20);
  size_t base = memory_now();
  size_t peak = burst_run(b);
  size_t m1 = memory_now();
  sleep_ms(1500); /* five times purge_delay_ms, past any hysteresis */
  size_t m2 = memory_now();
  trimalloc_stats_t s = stats_now();
  fprintf(stdout, "   background=0: baseline %zu KiB, peak %zu KiB, asleep %zu KiB, 1.5 s later %zu KiB\n",
          base / KiB, peak / KiB, m1 / KiB, m2 / KiB);
  CHECK(m1 >= base + OFF_BURST / 2, "memory went back while freeing with background=0: %zu -> %zu KiB",
        peak / KiB, m1 / KiB);
  CHECK(m2 + 2 * MiB >= m1, "memory went back while idle with background=0: %zu -> %zu KiB", m1 / KiB,
        m2 / KiB);
  CHECK(s.background == 0, "background stat %llu with background=0", U(s.background));
  CHECK(s.dirty >= OFF_BURST / 2, "dirty %llu KiB after freeing %zu KiB", U(s.dirty / KiB), OFF_BURST / KiB);
  size_t released = trimalloc_trim();
  size_t m3 = memory_now();
  trimalloc_stats_t s3 = stats_now();
  fprintf(stdout, "   trim released %zu KiB, dirty was %llu KiB\n", released / KiB, U(s.dirty / KiB));
  /* dirty is what a trim returns now; a trim also unmaps the empty segments,
   * whose headers (about 1% of them) were not free blocks. */
  CHECK(released >= s.dirty && released <= s.dirty + s.dirty / 32 + MiB,
        "trim released %zu KiB with %llu KiB dirty", released / KiB, U(s.dirty / KiB));
  CHECK(m3 <= base + 16 * MiB, "after the trim %zu KiB, baseline %zu KiB", m3 / KiB, base / KiB);
  CHECK(s3.dirty == 0, "dirty %llu bytes after the trim", U(s3.dirty));
  burst_end(b);
}

static void test_background_off_keeps_until_trim(void) {
  /* A delay of 300 ms, so the threads' own frees (allocator calls, which
   * may purge) are done before it runs out, and the idle 1.5 s are five
   * times it. No thread caches: then `dirty` is exactly what the trim
   * returns. (With them, the transfer caches' blocks count in `dirty` at
   * their size, and each one drained can free a whole OS page: 64 KiB on
   * some aarch64 kernels.) */
  static const char *const env[] = {"TRIMALLOC_BACKGROUND=0", "TRIMALLOC_PURGE_DELAY_MS=300",
                                    "TRIMALLOC_TCACHE_BYTES=0", NULL};
  check_child("--child-background-off", env);
}

/* A trim with two arenas: a thread-cache batch may go to the transfer cache
 * of another arena than some of its blocks' slabs, so every arena must drain
 * before any purges, or a second trim right after still finds free pages
 * (found by test_fuzz, seed 5). */
static void test_trim_with_two_arenas_leaves_nothing(void) {
  cpu_set_t mask;
  if (sysconf(_SC_NPROCESSORS_ONLN) < 2 || sched_getaffinity(0, sizeof mask, &mask) != 0 || CPU_COUNT(&mask) < 2) {
    fprintf(stdout, "   skipped: needs two CPUs\n");
    return;
  }
  int cpus[2], k = 0;
  for (int c = 0; c < CPU_SETSIZE && k < 2; c++)
    if (CPU_ISSET(c, &mask)) cpus[k++] = c;
  long long arenas = option_swap("arenas", 2), bg = option_swap("background", 0);
  enum { N = 400 };
  static void *p[2][N];
  for (int side = 0; side < 2; side++) {
    cpu_set_t one;
    CPU_ZERO(&one);
    CPU_SET(cpus[side], &one);
    sched_setaffinity(0, sizeof one, &one);
    for (int i = 0; i < N; i++) p[side][i] = trimalloc_malloc(320);
  }
  for (int side = 0; side < 2; side++)
    for (int i = 0; i < N; i++) trimalloc_free(p[side][i]);
  sched_setaffinity(0, sizeof mask, &mask);
  size_t first = trimalloc_trim(), second = trimalloc_trim();
  CHECK(second == 0, "a second trim right after one released %zu bytes (the first %zu)", second, first);
  CHECK(trimalloc_check(), "invariants after the trims");
  option_swap("background", bg);
  option_swap("arenas", arenas);
}

/* ---- the delayed purge with allocation activity (v1's test, kept) ---- */
#define BURST (test_slow() ? 160 * MiB : 320 * MiB)

static void test_delayed_purge_without_trim(void) {
  size_t cap = BURST / 16;
  uint8_t **p = mmap(NULL, cap * sizeof *p, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) abort();
  memset(p, 0, cap * sizeof *p);
  /* Warm up the small classes the activity loop uses, then take the baseline. */
  for (int i = 0; i < 1000; i++) trimalloc_free(trimalloc_malloc(16 + (size_t)(i % 16) * 16));
  size_t rss0 = memory_now();
  trimalloc_stats_t s0 = stats_now();
  size_t count = 0, bytes = 0;
  uint64_t rng = 1;
  while (bytes < BURST && count < cap) {
    size_t n = 16 + rng_next(&rng) % 1009;
    p[count] = trimalloc_malloc(n);
    if (!p[count]) break;
    memset(p[count], 0x5A, n);
    bytes += n;
    count++;
  }
  size_t rss_peak = memory_now();
  trimalloc_stats_t speak = stats_now();
  CHECK(bytes >= BURST && rss_peak > rss0 + BURST / 2, "burst: %zu bytes, RSS %zu -> %zu KiB", bytes,
        rss0 / KiB, rss_peak / KiB);
  for (size_t i = 0; i < count; i++) trimalloc_free(p[i]);
  /* Further activity: small blocks allocated and freed for a second. */
  double t0 = now_s(), under_at = -1;
  void *keep[64] = {0};
  unsigned k = 0;
  while (now_s() - t0 < 1.0) {
    for (int i = 0; i < 64; i++) {
      trimalloc_free(keep[k % 64]);
      keep[k % 64] = trimalloc_malloc(16 + (k % 16) * 16);
      k++;
    }
    if (under_at < 0 && memory_now() <= rss0 + 64 * MiB) under_at = now_s() - t0;
    sleep_ms(1);
  }
  size_t rss1 = memory_now();
  trimalloc_stats_t s1 = stats_now();
  for (int i = 0; i < 64; i++) trimalloc_free(keep[i]);
  fprintf(stdout, "   %s baseline %zu KiB, peak %zu KiB, after 1 s %zu KiB (under +64 MiB at %.3f s)\n",
          TEST_TSAN ? "resident" : "RSS", rss0 / KiB, rss_peak / KiB, rss1 / KiB, under_at);
  CHECK(rss1 <= rss0 + 64 * MiB, "RSS %zu KiB one second after the burst, baseline %zu KiB", rss1 / KiB,
        rss0 / KiB);
  CHECK(s1.trims == s0.trims, "something called trim");
  CHECK(s1.resident <= s0.resident + 64 * MiB, "stats: resident %llu KiB, baseline %llu KiB",
        U(s1.resident / KiB), U(s0.resident / KiB));
  CHECK(s1.purged_bytes > speak.purged_bytes || s1.mapped < speak.mapped,
        "the delayed purge is not in the stats: purged_bytes %llu -> %llu, mapped %llu -> %llu",
        U(speak.purged_bytes), U(s1.purged_bytes), U(speak.mapped), U(s1.mapped));
  munmap(p, cap * sizeof *p);
}

/* ---- a trim racing with threads that allocate and free ---- */
enum { RACERS = 3, RACE_SLOTS = 512 };
static atomic_int race_stop;
static atomic_long race_bad, race_invalid, race_steps;
static _Atomic(uint8_t *) race_ring[RACE_SLOTS]; /* blocks passed between threads */

static size_t race_size(uint64_t *rng) {
  uint64_t r = rng_next(rng);
  if (r % 200 == 0) return 1 * MiB + (r >> 8) % (3 * MiB); /* huge */
  if (r % 20 == 0) return 32 * KiB + (r >> 8) % (224 * KiB);
  return 1 + (r >> 8) % (r % 3 ? 512 : 16 * KiB);
}

static void *racer(void *arg) {
  int id = (int)(intptr_t)arg;
  uint64_t rng = 0x7ACEull + (uint64_t)id * 7717;
  uint8_t *slot[128] = {0};
  size_t sn[128] = {0};
  long steps = 0, bad = 0;
  while (!atomic_load(&race_stop)) {
    unsigned i = (unsigned)(rng_next(&rng) % 128);
    if (slot[i]) {
      if (!block_ok(slot[i], sn[i], pattern_seed(slot[i], sn[i]))) bad++;
      if (rng_next(&rng) % 2) {
        /* Pass it on: whoever takes it from the ring frees it. */
        uint8_t *old = atomic_exchange(&race_ring[rng_next(&rng) % RACE_SLOTS], slot[i]);
        if (old) {
          size_t on = trimalloc_malloc_usable_size(old), n;
          memcpy(&n, old + on - sizeof n, sizeof n); /* its size, stored at its end */
          if (on < sizeof n || n > on - sizeof n || !block_ok(old, n, pattern_seed(old, n))) bad++;
          trimalloc_free(old);
        }
      } else {
        trimalloc_free(slot[i]);
      }
      slot[i] = NULL;
    } else {
      sn[i] = race_size(&rng);
      slot[i] = trimalloc_malloc(sn[i] + sizeof(size_t));
      if (slot[i]) {
        block_fill(slot[i], sn[i], pattern_seed(slot[i], sn[i]));
        size_t on = trimalloc_malloc_usable_size(slot[i]);
        memcpy(slot[i] + on - sizeof sn[i], &sn[i], sizeof sn[i]);
      }
    }
    /* One thread naps now and then: a flush request waits for its next slow
     * path. */
    if (id == 0 && steps % 20000 == 19999) sleep_ms(2);
    steps++;
  }
  for (int i = 0; i < 128; i++) {
    if (slot[i] && !block_ok(slot[i], sn[i], pattern_seed(slot[i], sn[i]))) bad++;
    trimalloc_free(slot[i]);
  }
  if (!trimalloc_check()) atomic_fetch_add(&race_invalid, 1);
  atomic_fetch_add(&race_bad, bad);
  atomic_fetch_add(&race_steps, steps);
  return NULL;
}

static void test_trim_races_alloc_free(void) {
  pthread_t t[RACERS];
  for (long i = 0; i < RACERS; i++) pthread_create(&t[i], NULL, racer, (void *)i);
  int trims = test_slow() ? 150 : 500;
  for (int i = 0; i < trims; i++) {
    trimalloc_trim();
    if (i % 10 == 0) (void)stats_now();
    if (i % 25 == 0) CHECK(trimalloc_check(), "trimalloc_check failed on the trimming thread");
    usleep(300);
  }
  atomic_store(&race_stop, 1);
  for (int i = 0; i < RACERS; i++) pthread_join(t[i], NULL);
  for (int i = 0; i < RACE_SLOTS; i++) trimalloc_free(atomic_exchange(&race_ring[i], NULL));
  CHECK(atomic_load(&race_bad) == 0, "%ld blocks corrupted while trimming", atomic_load(&race_bad));
  CHECK(atomic_load(&race_invalid) == 0, "trimalloc_check failed in %ld threads", atomic_load(&race_invalid));
  CHECK(atomic_load(&race_steps) > 1000, "the threads made only %ld steps", atomic_load(&race_steps));
  trimalloc_trim();
  trimalloc_stats_t s = stats_now();
  CHECK(s.dirty == 0, "dirty %llu bytes after a trim with no other thread left", U(s.dirty));
}

/* ---- an empty trim is cheap ---- */
/* The kernel's seccomp filter ABI, written out: musl's toolchain has no
 * <linux/...> headers. */
#if defined(__x86_64__)
#define NATIVE_AUDIT_ARCH 0xc000003eu /* AUDIT_ARCH_X86_64 */
#elif defined(__aarch64__)
#define NATIVE_AUDIT_ARCH 0xc00000b7u /* AUDIT_ARCH_AARCH64 */
#endif
typedef struct {
  uint16_t code;
  uint8_t jt, jf;
  uint32_t k;
} bpf_insn_t;
typedef struct {
  unsigned short len;
  bpf_insn_t *filter;
} bpf_prog_t;
#define BPF_LOAD_WORD(off) {0x20, 0, 0, (off)}                  /* BPF_LD | BPF_W | BPF_ABS */
#define BPF_IF_EQ(v, jt, jf) {0x15, (jt), (jf), (v)}              /* BPF_JMP | BPF_JEQ | BPF_K */
#define BPF_RETURN(v) {0x06, 0, 0, (v)}                         /* BPF_RET | BPF_K */
#define SECCOMP_DATA_NR 0                                       /* offsetof(struct seccomp_data, nr) */
#define SECCOMP_DATA_ARCH 4                                     /* ... arch */
#define SECCOMP_KILL 0x80000000u                                /* SECCOMP_RET_KILL_PROCESS */
#define SECCOMP_ALLOW 0x7fff0000u                               /* SECCOMP_RET_ALLOW */
#define SECCOMP_FILTER_MODE 2                                   /* SECCOMP_MODE_FILTER */

/* Cheap without a clock: an empty trim finds nothing to do and says so
 * without a system call (no madvise, no futex, no mmap). A forked child
 * installs a filter that kills it at any system call but exit_group, trims
 * 10,000 times, and exits with whether anything was released. */
static void test_empty_trim_is_cheap(void) {
#ifdef NATIVE_AUDIT_ARCH
  trimalloc_trim();
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    trimalloc_trim(); /* the fork's own leftovers (the parent's threads' caches) */
    trimalloc_trim();
    bpf_insn_t f[] = {
        BPF_LOAD_WORD(SECCOMP_DATA_ARCH), BPF_IF_EQ(NATIVE_AUDIT_ARCH, 1, 0), BPF_RETURN(SECCOMP_KILL),
        BPF_LOAD_WORD(SECCOMP_DATA_NR),   BPF_IF_EQ(__NR_exit_group, 0, 1),  BPF_RETURN(SECCOMP_ALLOW),
        BPF_RETURN(SECCOMP_KILL),
    };
    bpf_prog_t prog = {(unsigned short)(sizeof f / sizeof f[0]), f};
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 || prctl(PR_SET_SECCOMP, SECCOMP_FILTER_MODE, &prog) != 0)
      _exit(3);
    size_t released = 0;
    for (int i = 0; i < 10000; i++) released += trimalloc_trim();
    syscall(__NR_exit_group, released == 0 ? 0 : 2);
  }
  int st = 0;
  CHECK(pid > 0 && waitpid(pid, &st, 0) == pid, "fork/wait failed");
  if (WIFEXITED(st) && WEXITSTATUS(st) == 3) {
    printf("   (seccomp is not available here: not checked)\n");
    return;
  }
  if (WIFSIGNALED(st) && WTERMSIG(st) == SIGSYS)
    CHECK(false, "an empty trim made a system call (the child died of SIGSYS)");
  else if (WIFEXITED(st) && WEXITSTATUS(st) == 2)
    CHECK(false, "10000 empty trims released memory");
  else
    CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "the child ended with status 0x%x", st);
#endif
}

/* Resident OS pages among [p, p + n) (p page-aligned, n at most 4 MiB). */
static size_t resident_pages(const uint8_t *p, size_t n) {
  static unsigned char vec[4 * MiB / 4096];
  size_t ps = page_size(), count = 0, pages = (n + ps - 1) / ps;
  if (mincore((void *)p, pages * ps, vec) != 0) return 0;
  for (size_t i = 0; i < pages; i++) count += vec[i] & 1;
  return count;
}

static bool thp_always(void) {
  char buf[128];
  return read_proc("/sys/kernel/mm/transparent_hugepage/enabled", buf, sizeof buf) && strstr(buf, "[always]");
}

/* A large block's pages that were never written are not resident before a
 * purge, and its next allocation populates only those that were (issue 17,
 * item 5: the whole span came back, a 1.9 MiB block with 64 KiB written
 * took +1856 KiB of RSS). */
static void test_refault_populates_what_was_resident(void) {
  const size_t n = 1900 * KiB, written = 64 * KiB, ps = page_size();
  long long bg = option_swap("background", 0); /* the trim below is the only purge */
  trimalloc_trim();
  uint8_t *p = trimalloc_malloc(n), *keep[64] = {0}, *keeper = NULL;
  /* a live block in the same segment keeps it mapped through the trim */
  for (int i = 0; i < 64 && !keeper; i++) {
    keep[i] = trimalloc_malloc(64 * KiB + 1);
    if (((uintptr_t)keep[i] >> 22) == ((uintptr_t)p >> 22))
      keeper = keep[i];
  }
  for (int i = 0; i < 64; i++)
    if (keep[i] != keeper) trimalloc_free(keep[i]);
  memset(p, 0x33, written);
  size_t before = resident_pages(p, n);
  trimalloc_free(p);
  trimalloc_trim();
  size_t purged = resident_pages(p, n);
  uint8_t *q = trimalloc_malloc(n);
  size_t after = resident_pages(q, n);
  fprintf(stdout, "   %zu KiB block, %zu KiB written: %zu KiB resident, %zu after the purge, %zu when reused\n",
          n / KiB, written / KiB, before * ps / KiB, purged * ps / KiB, after * ps / KiB);
  if (CHECK(keeper && q == p, "the block's span was not reused (%p, then %p)", (void *)p, (void *)q) &&
      !thp_always())
    CHECK(after * ps <= written + 64 * KiB, "%zu KiB resident when reused, %zu KiB were before the purge",
          after * ps / KiB, before * ps / KiB);
  CHECK(q != p || after * ps >= written, "%zu KiB resident when reused: the %zu KiB written were not populated",
          after * ps / KiB, written / KiB);
  trimalloc_free(q);
  trimalloc_free(keeper);
  option_swap("background", bg);
}

/* Resident pages first (session 24). A large block whose best-fitting
 * free span was purged takes a bigger span's resident slices instead: its
 * pages need no fault (a Celery pool process took 28k of its 34k refaults
 * carving new slabs on purged slices while resident ones waited). Spans
 * here: A (4 slices) purged by a trim, B (8 slices) freed after it,
 * resident; live guards keep them apart. */
static void test_span_alloc_takes_resident_slices_first(void) {
  const size_t ka = 200 * KiB, kb = 450 * KiB, kg = 150 * KiB;
  long long bg = option_swap("background", 0); /* no purge but the trim below */
  trimalloc_trim();
  uint8_t *a = trimalloc_malloc(ka), *g1 = trimalloc_malloc(kg), *b = trimalloc_malloc(kb),
          *g2 = trimalloc_malloc(kg);
  CHECK(a && g1 && b && g2, "allocations failed");
  memset(a, 0x11, ka);
  memset(b, 0x22, kb);
  trimalloc_free(a);
  trimalloc_trim(); /* A's span purged; B is live */
  trimalloc_free(b); /* B's span free and resident */
  uint8_t *c = trimalloc_malloc(ka);
  uint8_t *b_span = (uint8_t *)((uintptr_t)b & ~(uintptr_t)(64 * KiB - 1));
  bool in_b = c >= b_span && c < b + kb, in_a = c >= a - 64 * KiB && c < a + ka;
  fprintf(stdout, "   A %p (purged), B %p (resident), the next %zu KiB block %p: %s\n", (void *)a, (void *)b,
          ka / KiB, (void *)c, in_b ? "in B" : in_a ? "in A" : "elsewhere");
  CHECK(in_b, "a %zu KiB block went to %p, not to the resident span at %p (the purged one at %p)", ka / KiB,
        (void *)c, (void *)b, (void *)a);
  trimalloc_free(c);
  trimalloc_free(g1);
  trimalloc_free(g2);
  option_swap("background", bg);
}

/* A slab the program keeps taking blocks from keeps its resident free
 * pages: its age starts at each refill, not only at a free (session 24: a
 * new slab on slices freed a moment before was "free since 0", so the
 * purger's next tick took the part not yet handed out and each later
 * refill faulted it back in, 23k pages a Celery pool process). A slab of
 * 60 KiB blocks (8 in 512 KiB) made on resident slices (6 MiB of large
 * blocks just freed, so the purger runs), a block taken from it every 30 ms
 * with purge_delay_ms 100: after the first, the blocks' pages fault no more
 * than a few times. */
static void test_slab_in_use_keeps_its_pages(void) {
  enum { BLOCKS = 6, BIG = 4 }; /* a slab holds 8: one may wait in the thread cache */
  const size_t bs = 60 * KiB, span = 3 * MiB / 2 - 4 * KiB; /* a large block ends its span: 4 KiB unwritten */
  long long delay = option_swap("purge_delay_ms", 100);
  trimalloc_trim();
  uint8_t *big[BIG], *keep[BLOCKS];
  for (int i = 0; i < BIG; i++) { /* resident slices for the slab to come */
    big[i] = trimalloc_malloc(span);
    memset(big[i], 0x33, span);
  }
  for (int i = 0; i < BIG; i++) trimalloc_free(big[i]);
  keep[0] = trimalloc_malloc(bs); /* the slab made (its first page was never written) */
  long f0 = minor_faults();
  double t0 = now_s();
  for (int i = 1; i < BLOCKS; i++) {
    sleep_ms(30);
    keep[i] = trimalloc_malloc(bs); /* written by the allocator only */
  }
  long faults = minor_faults() - f0;
  size_t pages = (BLOCKS - 1) * bs / page_size();
  fprintf(stdout, "   %d more blocks of %zu KiB over %.2f s: %ld faults (%zu pages of blocks)\n", BLOCKS - 1, bs / KiB,
          now_s() - t0, faults, pages);
  if (!TEST_SANITIZED && !test_runner())
    CHECK((size_t)faults <= pages / 8, "%ld faults taking %d blocks from resident slices (%zu pages)", faults,
          BLOCKS - 1, pages);
  for (int i = 0; i < BLOCKS; i++) trimalloc_free(keep[i]);
  option_swap("purge_delay_ms", delay);
}

/* The voluntary context switches of the thread named `comm` (the purger),
 * or -1 when there is no such thread. */
static long thread_switches(const char *comm) {
  DIR *d = opendir("/proc/self/task");
  if (!d) return -1;
  long v = -1;
  struct dirent *e;
  char path[300], buf[4096];
  while (v < 0 && (e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    snprintf(path, sizeof path, "/proc/self/task/%s/comm", e->d_name);
    if (!read_proc(path, buf, sizeof buf) || strncmp(buf, comm, strlen(comm)) != 0) continue;
    snprintf(path, sizeof path, "/proc/self/task/%s/status", e->d_name);
    const char *at = read_proc(path, buf, sizeof buf) ? strstr(buf, "voluntary_ctxt_switches:") : NULL;
    if (at) v = strtol(at + strlen("voluntary_ctxt_switches:"), NULL, 10);
  }
  closedir(d);
  return v;
}

/* Under mlockall every MADV_DONTNEED fails (EINVAL): empty segments are
 * still unmapped, and the purger sleeps instead of retrying every 50 ms
 * (issue 17, item 7: pages counted as dirty for ever, no segment unmapped,
 * trim returned 0, the purger woke 20 times a second). A child process:
 * exit status 77 when mlockall is not allowed here. */
/* A thread of the program's own that has allocated and sleeps: the purger
 * then stays when it has nothing to do, and sleeps. */
static gate_t sleeper_wake = GATE_INIT;
static void *sleeper(void *arg) {
  (void)arg;
  trimalloc_free(trimalloc_malloc(100));
  gate_wait(&sleeper_wake, 1);
  return NULL;
}

static void child_mlock(void) {
  /* Under the sanitizers their shadow mappings must not be locked: only
   * the mappings made from now on; and their runtimes make mlockall() a
   * no-op, so the system call is made directly. */
  if (syscall(SYS_mlockall, TEST_SANITIZED ? MCL_FUTURE : MCL_CURRENT | MCL_FUTURE) != 0) exit(77);
  pthread_t t;
  CHECK(pthread_create(&t, NULL, sleeper, NULL) == 0);
  enum { N = 320 };
  static void *p[N];
  for (int i = 0; i < N; i++) p[i] = trimalloc_malloc(100 * KiB); /* 32 MiB in fresh, locked segments */
  for (int i = 0; i < 4096; i++) trimalloc_free(trimalloc_malloc(700)); /* and some slabs */
  trimalloc_stats_t s0 = stats_now();
  for (int i = 0; i < N; i++) trimalloc_free(p[i]);
  CHECK(purger_within(5), "no purger 5 s after 32 MiB were freed");
  sleep_ms(2500); /* past unmap_delay_ms (1 s) */
  trimalloc_stats_t s1 = stats_now();
  long w0 = thread_switches("trimalloc-purge");
  sleep_ms(1000);
  long w1 = thread_switches("trimalloc-purge");
  size_t released = trimalloc_trim();
  trimalloc_stats_t s2 = stats_now();
  fprintf(stdout, "   mlockall: mapped %llu KiB holding 32 MiB, %llu KiB 2.5 s after the frees, %llu after a trim "
          "(released %zu KiB); the purger woke %ld times in 1 s\n", U(s0.mapped / KiB), U(s1.mapped / KiB),
          U(s2.mapped / KiB), released / KiB, w1 - w0);
  CHECK(s1.mapped + 24 * MiB <= s0.mapped, "mapped %llu -> %llu KiB 2.5 s after freeing 32 MiB under mlockall",
        U(s0.mapped / KiB), U(s1.mapped / KiB));
  CHECK(w0 >= 0 && w1 >= 0 && w1 - w0 <= 3, "the purger woke %ld times in 1 s with nothing it can purge",
        w1 - w0);
  gate_set(&sleeper_wake, 1);
  pthread_join(t, NULL);
}

/* ---- a single-threaded program stays single-threaded (issue 17, item 6) ---- */
static int task_count(void) {
  DIR *d = opendir("/proc/self/task");
  int n = 0;
  struct dirent *e;
  while (d && (e = readdir(d)) != NULL) n += e->d_name[0] != '.';
  if (d) closedir(d);
  return n;
}

static bool purger_thread(void) {
  return thread_switches("trimalloc-purge") >= 0;
}

/* unshare(CLONE_NEWUSER) fails with EINVAL in a multithreaded process: the
 * program's own check that it is single-threaded. Where the kernel refuses
 * it for other reasons (no user namespaces), the thread count stands in.
 * Sanitizers and emulators have threads of their own: the purger's absence
 * (by name) is what is checked there. */
static void check_single_threaded(const char *when) {
  CHECK(!purger_thread(), "%s: the purger thread is there", when);
  if (TEST_SANITIZED || test_runner()) return;
  CHECK(task_count() == 1, "%s: %d threads", when, task_count());
  int r = unshare(CLONE_NEWUSER);
  if (r != 0 && errno != EINVAL) fprintf(stdout, "   (unshare(CLONE_NEWUSER) refused here: %s)\n", strerror(errno));
  else CHECK(r == 0, "%s: unshare(CLONE_NEWUSER) failed: %s", when, strerror(errno));
}

static void free_16_mib(void) {
  enum { N = 4096 };
  static void *p[N];
  for (int i = 0; i < N; i++) {
    p[i] = trimalloc_malloc(4000);
    memset(p[i], 1, 4000);
  }
  for (int i = 0; i < N; i++) trimalloc_free(p[i]);
}

/* A single-threaded child: the purger starts when 16 MiB are freed, returns
 * them, and leaves; the process is single-threaded again (v2/v3: the thread
 * stayed for ever, and unshare(CLONE_NEWUSER) failed with EINVAL). */
static void child_single(void) {
  CHECK(!purger_thread(), "a purger thread before anything was freed");
  free_16_mib();
  CHECK(purger_within(5), "no purger 5 s after 16 MiB were freed");
  double t0 = now_s();
  while (purger_thread() && now_s() - t0 < 5) sleep_ms(10);
  fprintf(stdout, "   single-threaded: the purger left %.2f s after it was seen, dirty %llu KiB\n", now_s() - t0,
          U(stats_now().dirty / KiB));
  CHECK(stats_now().dirty == 0, "the purger left %llu KiB dirty", U(stats_now().dirty / KiB));
  check_single_threaded("5 s after the purger returned 16 MiB");
}

/* The documented ways for a program that must stay single-threaded at every
 * moment: trimalloc_option_set("background", 0), after which the thread is
 * gone, or TRIMALLOC_BACKGROUND=0, with which none starts. */
static void child_stop(void) {
  free_16_mib();
  CHECK(purger_within(5), "no purger 5 s after 16 MiB were freed");
  CHECK(trimalloc_option_set("background", 0) == 0);
  check_single_threaded("right after trimalloc_option_set(\"background\", 0)");
}

static void child_no_background(void) {
  free_16_mib();
  sleep_ms(300);
  check_single_threaded("with TRIMALLOC_BACKGROUND=0, 16 MiB freed");
}

/* An idle arena's purge returns every free page at once but leaves its
 * empty segments mapped for unmap_delay_ms, as a busy one does (issue 17,
 * item 8: the idle purge unmapped them at once), and the purger keeps at
 * them with no dirty page left and no allocator call, until they go. */
static void test_idle_waits_unmap_delay(void) {
  long long old = option_value("unmap_delay_ms"), old_delay = option_value("purge_delay_ms");
  CHECK(trimalloc_option_set("unmap_delay_ms", 4000) == 0);
  /* the purger ticks every 500 ms and the idle purge (after 500 ms), not
   * the timed one (after 1 s), returns the pages */
  CHECK(trimalloc_option_set("purge_delay_ms", 1000) == 0);
  trimalloc_trim();
  const size_t n = 64 * MiB / 1024;
  void **p = mmap(NULL, n * sizeof *p, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) abort();
  memset(p, 0, n * sizeof *p);
  trimalloc_stats_t s0 = stats_now();
  for (size_t i = 0; i < n; i++) {
    p[i] = trimalloc_malloc(1000);
    if (p[i]) memset(p[i], 1, 1000);
  }
  /* the segments the blocks were in (4 MiB each, aligned), their headers
   * in the first 64 KiB slice */
  enum { SEGS = 64 };
  uintptr_t seg[SEGS];
  size_t nseg = 0;
  for (size_t i = 0; i < n; i++) {
    uintptr_t sg = (uintptr_t)p[i] & ~(uintptr_t)(4 * MiB - 1);
    size_t k = 0;
    while (k < nseg && seg[k] != sg) k++;
    if (k == nseg && nseg < SEGS) seg[nseg++] = sg;
  }
  for (size_t i = 0; i < n; i++) trimalloc_free(p[i]);
  double t0 = now_s();
  /* Idle after 500 ms and purged within about a second; a loaded machine
   * (a sanitizer build beside other jobs) may take longer, so the test
   * waits for the purge up to 3 s, well before unmap_delay_ms (4 s). A
   * waiting segment's header keeps its descriptors and page counts, not
   * its free bitmap (32 KiB, all zero with no slab in it): 16 KiB of 44 at
   * 4 KiB pages (44 before), 32 of 48 at 16 KiB. At 64 KiB pages the header
   * is one page; under qemu-user mincore counts host pages. One segment may
   * hold blocks of the test's own (a whole header, 48 KiB at most). */
  size_t ps = page_size();
  bool headers_checked = ps <= 16 * KiB && !test_runner() && nseg;
  size_t header_bound = nseg * (ps == 4 * KiB ? 16 : 32) + 48, header_kib = 0;
  trimalloc_stats_t s1;
  double t1;
  sleep_ms(500);
  for (;;) {
    header_kib = 0;
    for (size_t k = 0; k < nseg; k++) header_kib += resident_pages((const uint8_t *)seg[k], 64 * KiB) * page_size() / KiB;
    s1 = stats_now();
    t1 = now_s() - t0;
    bool done = s1.resident <= s0.resident + 16 * MiB && (!headers_checked || header_kib <= header_bound);
    if (done || t1 >= 3.0) break;
    sleep_ms(50);
  }
  double t2 = 0;
  trimalloc_stats_t s2 = s1;
  while ((t2 = now_s() - t0) < 8.0 && (s2 = stats_now()).mapped > s0.mapped + 16 * MiB) sleep_ms(20);
  fprintf(stdout, "   mapped %llu KiB before, %llu KiB %.3f s after freeing 64 MiB (resident +%lld KiB; %zu segments' headers: "
          "%zu KiB resident), %llu KiB at %.3f s\n",
          U(s0.mapped / KiB), U(s1.mapped / KiB), t1, (long long)(s1.resident - s0.resident) / 1024, nseg, header_kib,
          U(s2.mapped / KiB), t2);
  CHECK(s1.resident <= s0.resident + 16 * MiB, "not purged %.3f s after the frees: resident %llu -> %llu KiB", t1,
        U(s0.resident / KiB), U(s1.resident / KiB));
  CHECK(s1.mapped >= s0.mapped + 32 * MiB, "unmapped %.3f s after the frees, before unmap_delay_ms (4 s): %llu -> %llu KiB",
        t1, U(s0.mapped / KiB), U(s1.mapped / KiB));
  if (headers_checked)
    CHECK(header_kib <= header_bound, "%zu waiting segments' headers hold %zu KiB resident (%zu each)", nseg, header_kib,
          header_kib / nseg);
  CHECK(s2.mapped <= s0.mapped + 16 * MiB, "still mapped %.3f s after the frees: %llu -> %llu KiB", t2,
        U(s0.mapped / KiB), U(s2.mapped / KiB));
  munmap(p, n * sizeof *p);
  trimalloc_option_set("unmap_delay_ms", old);
  trimalloc_option_set("purge_delay_ms", old_delay);
}

static void test_single_threaded_program_stays_so(void) {
  static const char *const off[] = {"TRIMALLOC_BACKGROUND=0", NULL};
  check_child("--child-single", NULL);
  check_child("--child-stop", NULL);
  check_child("--child-no-background", off);
}

static void test_mlockall_unmaps_and_sleeps(void) {
  int st = run_self("--child-mlock", NULL);
  if (WIFEXITED(st) && WEXITSTATUS(st) == 77) {
    SKIP(test_mlockall_unmaps_and_sleeps, "mlockall is not allowed here");
    return;
  }
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child --child-mlock: status %d (its FAIL lines are above)", st);
}

int main(int argc, char **argv) {
  if (argc > 1 && !strcmp(argv[1], "--child-lazy")) {
    child_lazy();
    return atomic_load(&check_failed_n) ? 1 : 0;
  }
  if (argc > 1 && !strcmp(argv[1], "--child-single")) {
    child_single();
    return atomic_load(&check_failed_n) ? 1 : 0;
  }
  if (argc > 1 && !strcmp(argv[1], "--child-stop")) {
    child_stop();
    return atomic_load(&check_failed_n) ? 1 : 0;
  }
  if (argc > 1 && !strcmp(argv[1], "--child-no-background")) {
    child_no_background();
    return atomic_load(&check_failed_n) ? 1 : 0;
  }
  if (argc > 1 && !strcmp(argv[1], "--child-mlock")) {
    child_mlock();
    return atomic_load(&check_failed_n) ? 1 : 0;
  }
  if (argc > 1 && !strcmp(argv[1], "--child-background-off")) {
    child_background_off();
    return atomic_load(&check_failed_n) ? 1 : 0;
  }
  ssize_t n = readlink("/proc/self/exe", self_path, sizeof self_path - 1);
  self_path[n > 0 ? n : 0] = 0;
  RUN(test_idle_return);
  RUN(test_idle_waits_unmap_delay);
  RUN(test_background_starts_lazily);
  RUN(test_background_off_keeps_until_trim);
  RUN(test_trim_with_two_arenas_leaves_nothing);
  RUN(test_delayed_purge_without_trim);
  RUN(test_trim_races_alloc_free);
  if (test_runner()) /* and its mincore writes a byte per host page (4 KiB), not per emulated page */
    SKIP(test_refault_populates_what_was_resident, "qemu-user ignores MADV_POPULATE_WRITE");
  else
    RUN(test_refault_populates_what_was_resident);
  RUN(test_span_alloc_takes_resident_slices_first);
  RUN(test_slab_in_use_keeps_its_pages);
  RUN(test_single_threaded_program_stays_so);
  if (test_runner())
    SKIP(test_mlockall_unmaps_and_sleeps, "mlockall under qemu-user would lock the emulator's own mappings");
  else
    RUN(test_mlockall_unmaps_and_sleeps);
#if TEST_SANITIZED
  SKIP(test_empty_trim_is_cheap, "the sanitizers' runtimes make system calls of their own");
#else
  RUN(test_empty_trim_is_cheap);
#endif
  return check_summary();
}
