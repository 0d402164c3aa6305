/* Returning memory: purging the arenas, and the background purger.
 *
 * Free OS pages (inside slabs and in free spans) are purged once idle for the
 * arena's delay (delay.c: purge_delay_ms to start with, lengthened when
 * purged memory is faulted straight back in).
 *
 * The background purger is one thread, started lazily each time at least
 * TA_PURGER_START of free resident memory is left (so a short program that
 * never frees much never gets a thread), restarted lazily in a fork child,
 * stopped at exit, off with TRIMALLOC_BACKGROUND=0. With nothing left to
 * purge it sleeps if the program has threads of its own, and leaves if not
 * (a single-threaded program is single-threaded again once what it freed is
 * returned). Without it, the allocator purges on its own slow paths. It
 * runs with default scheduling on the process's CPUs, not those of the
 * thread that starts it (ta_prim_thread_defaults); that thread's seccomp
 * filter it keeps: a filter is inherited at clone and no call removes one
 * (README, TRIMALLOC_BACKGROUND). */
#include "internal.h"

#include <errno.h>
#include <time.h>

#define TA_PURGER_START ((uint64_t)4 << 20) /* above what a short Python or Ruby run frees at exit */

_Atomic uint64_t ta_trims, ta_trimmed_bytes, ta_trim_ns;


/* ---- purging ---- */
/* Free memory the purger may return: dirty pages, the transfer caches'
 * blocks (which go back to their slabs when nobody takes them), freed huge
 * mappings, and empty segments (their headers: all that is resident of one
 * once purged), which wait unmap_delay_ms and would stay mapped if the
 * purger slept for want of dirty pages. Under mlock no page can be purged:
 * then only what can be unmapped counts (empty segments, at a segment
 * each), so the purger sleeps instead of trying every 50 ms for ever. */
static uint64_t purge_work(void) {
  int64_t pages = 0, xfer = 0, empty = 0;
  uint32_t n = ta_relaxed_load(&ta_arenas_used);
  for (uint32_t i = 0; i < n; i++) {
    pages += ta_relaxed_load(&ta_arenas[i].dirty_pages);
    xfer += ta_relaxed_load(&ta_arenas[i].xfer_bytes);
    empty += ta_relaxed_load(&ta_arenas[i].empty_segments);
  }
  uint64_t headers = empty > 0 ? (uint64_t)empty * ta_segment_header_bytes() : 0;
  if (pages > 0 && ta_purge_blocked()) pages = empty > 0 ? empty * (int64_t)(TA_SEGMENT_SIZE >> ta_ospage_shift) : 0;
  return ((uint64_t)(pages > 0 ? pages : 0) << ta_ospage_shift) + (uint64_t)(xfer > 0 ? xfer : 0) +
         ta_relaxed_load(&ta_huge_cached) + headers;
}

static size_t purge_arenas(uint64_t now, bool all) {
  size_t bytes = 0;
  uint32_t n = ta_relaxed_load(&ta_arenas_used);
  for (uint32_t i = 0; i < n; i++) ta_arena_drain(&ta_arenas[i], now, all, 0);
  for (uint32_t i = 0; i < n; i++) bytes += ta_arena_purge(&ta_arenas[i], now, all, 0);
  return bytes + ta_huge_cache_expire(now, all);
}

/* The purger's tick: an arena whose activity count has not moved is idle,
 * and once idle for its delay (at most TA_IDLE_MS) everything free in it
 * goes; an active one returns only what has been free for its delay. So an
 * idle process gets back to its live size within about half a second, while
 * a busy one keeps what it is about to reuse. Purger thread only. */
static uint64_t seen_activity[TA_ARENAS_MAX], seen_ms[TA_ARENAS_MAX];

static void purger_tick(uint64_t now) {
  uint32_t n = ta_relaxed_load(&ta_arenas_used);
  for (uint32_t i = 0; i < n; i++) {
    uint64_t act = ta_relaxed_load(&ta_arenas[i].activity);
    if (act != seen_activity[i] || !seen_ms[i]) {
      seen_activity[i] = act;
      seen_ms[i] = now;
    }
    ta_arena_drain(&ta_arenas[i], now, false, seen_ms[i]);
  }
  for (uint32_t i = 0; i < n; i++) ta_arena_purge(&ta_arenas[i], now, false, seen_ms[i]);
  /* Huge mappings go by their own age, idle arenas or not: huge blocks are
   * no arena activity, so a program that only reuses a big buffer looks
   * idle, and v2 emptied the whole cache every tick then (a buffer reused
   * every 100 ms missed 15 times in 20). */
  ta_huge_cache_expire(now, false);
}

static _Atomic uint64_t activity_purge_ms;

void ta_purge_on_activity(void) {
  if (ta_purger_running()) return;
  uint64_t now = ta_prim_clock_ms(), last = ta_relaxed_load(&activity_purge_ms);
  uint64_t every = (uint64_t)ta_opt(TA_OPT_PURGE_DELAY_MS) / 2;
  if (now - last < every || !atomic_compare_exchange_strong(&activity_purge_ms, &last, now)) return;
  purge_arenas(now, false);
}

/* ---- the background purger ---- */
enum { PURGER_OFF, PURGER_STARTING, PURGER_RUNNING, PURGER_STOPPING, PURGER_DONE };
static _Atomic int purger_state, purger_waiting;
static ta_lock_t purger_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t purger_cv;
static pthread_t purger_tid;
static _Atomic int purger_ktid; /* the purger's kernel thread id (0: none yet) */
static bool cv_ready;

static void cv_init(void) {
  pthread_condattr_t at;
  pthread_condattr_init(&at);
  pthread_condattr_setclock(&at, CLOCK_MONOTONIC);
  pthread_cond_init(&purger_cv, &at);
  pthread_condattr_destroy(&at);
  cv_ready = true;
}

int ta_purger_running(void) {
  return ta_relaxed_load(&purger_state) == PURGER_RUNNING;
}

static void timed_wait(uint64_t ms) { /* purger_lock held; CLOCK_MONOTONIC */
  struct timespec ts;
  uint64_t ns = ta_prim_clock_ns() + ms * 1000000u;
  ts.tv_sec = (time_t)(ns / 1000000000u);
  ts.tv_nsec = (long)(ns % 1000000000u);
  pthread_cond_timedwait(&purger_cv, &purger_lock, &ts);
}

static void *purger_main(void *arg) {
  (void)arg;
  ta_prim_thread_defaults(); /* not the starting thread's policy or CPUs */
  ta_relaxed_store(&purger_ktid, ta_prim_tid());
  ta_lock(&purger_lock);
  while (ta_relaxed_load(&purger_state) == PURGER_RUNNING && ta_opt(TA_OPT_BACKGROUND)) {
    ta_unlock(&purger_lock);
    uint64_t now = ta_prim_clock_ms(), wait = 0;
    if (purge_work()) {
      purger_tick(now);
      wait = (uint64_t)ta_opt(TA_OPT_PURGE_DELAY_MS) / 2;
      if (wait < 10) wait = 10;
      if (ta_purge_blocked() && !purge_work()) wait = 0; /* mlock: what is left cannot go */
    }
    ta_lock(&purger_lock);
    if (ta_relaxed_load(&purger_state) != PURGER_RUNNING) break;
    if (wait) {
      timed_wait(wait);
      continue;
    }
    /* Nothing left. In a program with no thread of its own but the one that
     * allocates (or none that allocates), the purger leaves: the program is
     * single-threaded again (unshare(CLONE_NEWUSER) needs that), and the
     * next time enough is left to purge, a new one starts. Work that a free
     * left while it was leaving (the kick saw it running) is seen below. */
    if (ta_relaxed_load(&ta_tcaches_live) <= 1) {
      int st = PURGER_RUNNING;
      if (!atomic_compare_exchange_strong(&purger_state, &st, PURGER_OFF)) break;
      atomic_thread_fence(memory_order_seq_cst);
      st = PURGER_OFF;
      if (purge_work() >= TA_PURGER_START && atomic_compare_exchange_strong(&purger_state, &st, PURGER_RUNNING))
        continue;
      pthread_cond_broadcast(&purger_cv);
      ta_unlock(&purger_lock);
      return NULL;
    }
    /* Otherwise sleep until a free leaves something (ta_purge_kick). */
    atomic_store(&purger_waiting, 1);
    atomic_thread_fence(memory_order_seq_cst);
    if (!purge_work()) timed_wait(10000);
    atomic_store(&purger_waiting, 0);
  }
  int st = PURGER_RUNNING;
  atomic_compare_exchange_strong(&purger_state, &st, PURGER_OFF); /* turned off: may start again */
  if (st == PURGER_STOPPING) ta_relaxed_store(&purger_state, PURGER_DONE);
  pthread_cond_broadcast(&purger_cv);
  ta_unlock(&purger_lock);
  return NULL;
}

/* A start that failed (EAGAIN: a thread or memory limit reached for a
 * moment; a seccomp filter) is tried again after a backoff, 1 s doubling to
 * 64 s, and the allocator purges on its own slow paths meanwhile (v2 gave
 * the purger up for good after one failure). */
#define TA_PURGER_RETRY_MS 1000
#define TA_PURGER_RETRY_MAX_MS 64000
static _Atomic uint64_t retry_at_ms, retry_backoff_ms;

static void purger_start(void) {
  int st = PURGER_OFF;
  if (!atomic_compare_exchange_strong(&purger_state, &st, PURGER_STARTING)) return;
  /* under the lock that every wait and wake holds: a thread that sees the
   * purger running (a relaxed load) and wakes it is ordered after this
   * (TSan saw ta_purger_stop's broadcast race with the init) */
  ta_lock(&purger_lock);
  if (!cv_ready) cv_init();
  ta_unlock(&purger_lock);
  ta_relaxed_store(&purger_state, PURGER_RUNNING);
  if (ta_prim_thread_start(purger_main, NULL, "trimalloc-purge", &purger_tid) != 0) {
    uint64_t b = ta_relaxed_load(&retry_backoff_ms);
    b = !b ? TA_PURGER_RETRY_MS : b * 2 > TA_PURGER_RETRY_MAX_MS ? TA_PURGER_RETRY_MAX_MS : b * 2;
    ta_relaxed_store(&retry_backoff_ms, b);
    ta_relaxed_store(&retry_at_ms, ta_prim_clock_ms() + b);
    st = PURGER_RUNNING; /* off again, unless exit began meanwhile (then never) */
    if (!atomic_compare_exchange_strong(&purger_state, &st, PURGER_OFF)) ta_relaxed_store(&purger_state, PURGER_DONE);
    return;
  }
  ta_relaxed_store(&retry_backoff_ms, 0);
  ta_relaxed_store(&retry_at_ms, 0);
  pthread_detach(purger_tid);
  if (ta_opt(TA_OPT_VERBOSE)) ta_say("background purger started", "", "", "", "");
}

void ta_purge_kick(void) {
  atomic_thread_fence(memory_order_seq_cst); /* the caller's counts, then the state: see purger_main */
  int st = ta_relaxed_load(&purger_state);
  if (st == PURGER_RUNNING) {
    atomic_thread_fence(memory_order_seq_cst);
    if (atomic_load(&purger_waiting) && purge_work()) {
      ta_lock(&purger_lock);
      pthread_cond_signal(&purger_cv);
      ta_unlock(&purger_lock);
    }
    return;
  }
  if (st != PURGER_OFF || !ta_opt(TA_OPT_BACKGROUND)) return;
  if (purge_work() < TA_PURGER_START) return;
  uint64_t retry = ta_relaxed_load(&retry_at_ms);
  if (retry && ta_prim_clock_ms() < retry) return;
  purger_start();
}

/* background was set to 0: wake the purger (it sees the option and leaves its
 * loop) and wait until it has left, however long its current pass takes, and
 * until its thread is gone (at most 1 s more), so that the program is
 * single-threaded again when this returns. */
void ta_purger_stop(void) {
  if (ta_relaxed_load(&purger_state) != PURGER_RUNNING && !ta_relaxed_load(&purger_ktid)) return;
  ta_lock(&purger_lock);
  while (ta_relaxed_load(&purger_state) == PURGER_RUNNING && !ta_opt(TA_OPT_BACKGROUND)) {
    pthread_cond_broadcast(&purger_cv);
    timed_wait(10); /* its broadcast on leaving ends this wait early */
  }
  int tid = ta_relaxed_load(&purger_ktid);
  for (int i = 0; tid && i < 1000 && !ta_prim_thread_gone(tid); i++) timed_wait(1);
  if (tid && ta_relaxed_load(&purger_state) != PURGER_RUNNING) ta_relaxed_store(&purger_ktid, 0);
  ta_unlock(&purger_lock);
}

/* At exit: ask the purger to stop and wait (briefly) until it has. */
__attribute__((destructor)) static void purger_stop(void) {
  int st = PURGER_RUNNING;
  if (!atomic_compare_exchange_strong(&purger_state, &st, PURGER_STOPPING)) {
    st = PURGER_OFF;
    atomic_compare_exchange_strong(&purger_state, &st, PURGER_DONE); /* never start after exit began */
    return;
  }
  ta_lock(&purger_lock);
  pthread_cond_signal(&purger_cv);
  for (int i = 0; i < 10 && ta_relaxed_load(&purger_state) == PURGER_STOPPING; i++) timed_wait(10);
  ta_unlock(&purger_lock);
}

void ta_purge_fork_prepare(void) {
  ta_lock(&purger_lock);
}
void ta_purge_fork_parent(void) {
  ta_unlock(&purger_lock);
}
void ta_purge_fork_child(void) {
  int st = ta_relaxed_load(&purger_state);
  if (st == PURGER_RUNNING || st == PURGER_STARTING) ta_relaxed_store(&purger_state, PURGER_OFF); /* restart lazily */
  ta_relaxed_store(&purger_waiting, 0);
  ta_relaxed_store(&purger_ktid, 0);
  if (cv_ready) cv_init(); /* the purger may have been waiting on it */
  ta_unlock(&purger_lock);
}

/* The purge half of a trim (alloc.c flushes the caller's cache first):
 * everything free now (all) or only what has been free for the delay. */
size_t ta_purge_trim(bool all, uint64_t t0_ns) {
  size_t bytes = purge_arenas(ta_prim_clock_ms(), all);
  ta_relaxed_add(&ta_trims, 1);
  ta_relaxed_add(&ta_trimmed_bytes, bytes);
  ta_relaxed_add(&ta_trim_ns, ta_prim_clock_ns() - t0_ns);
  return bytes;
}
