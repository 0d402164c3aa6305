/* When to trim: the one policy every hook of both bindings goes through.
 * See binding.h ("bind_policy.c") for the rules. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <time.h>

#include "bind_internal.h"

/* ---- the clock ----
 * CLOCK_MONOTONIC plus an offset that only ta_bind_clock_advance (tests)
 * moves, so that rate limits and deferred trims are tested without depending
 * on how fast the machine runs. */
static _Atomic uint64_t clock_offset_ns;

static uint64_t now_ns(void) {
  return ta_bind_mono_ns() + atomic_load_explicit(&clock_offset_ns, memory_order_relaxed);
}

static _Atomic uint64_t last_trim_ns; /* the last trim through the policy; 0: none yet */
static _Atomic uint64_t last_trim_cpu; /* ta_bind_cpu_ns() then; 0: none yet (since the start) */
/* a budgeted trimmer's last event, and the CPU clock then (for the idle trim) */
static _Atomic uint64_t last_event_ns, last_event_cpu;
static atomic_flag trim_busy = ATOMIC_FLAG_INIT;
static _Atomic uint64_t coalesced, free_reads;
static _Atomic int trimming_now; /* a trim is running (tests wait for quiet) */

/* ---- the sampled free-bytes figure ----
 * Read at most once per TA_BIND_FREE_SAMPLE_NS (on glibc it is a walk over
 * every arena; on the v1 core a walk over every heap), and only when the rate
 * limit would let a trim run. A trim invalidates it. */
static _Atomic uint64_t free_sample_at, free_sample;
static _Atomic int free_sample_known;
static _Atomic int64_t free_pinned = -1; /* tests: ta_bind_test_free_bytes */

void ta_bind_test_free_bytes(int64_t bytes) {
  atomic_store(&free_pinned, bytes < 0 ? -1 : bytes);
}

static int free_now(uint64_t now, uint64_t *out) {
  int64_t pinned = atomic_load_explicit(&free_pinned, memory_order_relaxed);
  if (pinned >= 0) {
    *out = (uint64_t)pinned;
    return 1;
  }
  uint64_t at = atomic_load_explicit(&free_sample_at, memory_order_acquire);
  if (at != 0 && now - at < TA_BIND_FREE_SAMPLE_NS) {
    *out = atomic_load_explicit(&free_sample, memory_order_relaxed);
    return atomic_load_explicit(&free_sample_known, memory_order_relaxed);
  }
  uint64_t v;
  int known = ta_bind_free_known(&v);
  if (known) v += ta_bind_host_free(); /* pymalloc's pools; unknown stays unknown: the trim runs */
  atomic_fetch_add_explicit(&free_reads, 1, memory_order_relaxed);
  atomic_store_explicit(&free_sample, v, memory_order_relaxed);
  atomic_store_explicit(&free_sample_known, known, memory_order_relaxed);
  atomic_store_explicit(&free_sample_at, now ? now : 1, memory_order_release);
  *out = v;
  return known;
}

/* ---- the test gate ---- */
static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_state;

void ta_bind_test_gate(int arm) {
  pthread_mutex_lock(&gate_mu);
  gate_state = arm ? 1 : 0;
  pthread_cond_broadcast(&gate_cv);
  pthread_mutex_unlock(&gate_mu);
}

void ta_bind_test_gate_open(void) {
  pthread_mutex_lock(&gate_mu);
  if (gate_state == 1 || gate_state == 2) gate_state = 3;
  pthread_cond_broadcast(&gate_cv);
  pthread_mutex_unlock(&gate_mu);
}

int ta_bind_test_gate_state(void) {
  pthread_mutex_lock(&gate_mu);
  int s = gate_state;
  pthread_mutex_unlock(&gate_mu);
  return s;
}

static void gate_pass(void) {
  pthread_mutex_lock(&gate_mu);
  if (gate_state == 1) {
    gate_state = 2;
    pthread_cond_broadcast(&gate_cv);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 20;
    while (gate_state == 2)
      if (pthread_cond_timedwait(&gate_cv, &gate_mu, &ts) == ETIMEDOUT) gate_state = 4;
  }
  pthread_mutex_unlock(&gate_mu);
}

static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;
static void atfork_register(void); /* the fork child's reset, below */

/* The trim itself, one at a time: a caller that finds one running returns
 * at once (coalesced). */
static int64_t run_trim(ta_bind_skip_t *why) {
  pthread_once(&atfork_once, atfork_register); /* before the flag can be set */
  if (atomic_flag_test_and_set(&trim_busy)) {
    atomic_fetch_add(&coalesced, 1);
    *why = TA_SKIP_COALESCED;
    return -1;
  }
  atomic_store(&trimming_now, 1);
  gate_pass();
  int64_t released = (int64_t)ta_bind_trim(); /* full: the rate limit bounds the churn */
  atomic_store(&last_trim_ns, now_ns());
  uint64_t cpu = ta_bind_cpu_ns();
  atomic_store(&last_trim_cpu, cpu ? cpu : 1);
  atomic_store(&trimming_now, 0);
  atomic_store_explicit(&free_sample_at, 0, memory_order_release);
  atomic_flag_clear(&trim_busy);
  *why = TA_SKIP_NONE;
  return released;
}

/* ---- deferred trims ----
 * A hook's trim skipped because the last one is too recent would leave the
 * memory of the last job or GC before an idle period in place for good (an
 * idle worker runs no more hooks). So the skip schedules a trim for when it
 * is due, run by one background thread of the binding's (started on first
 * need; it holds neither the GIL nor the GVL). A fork child starts without
 * it. */
static pthread_mutex_t defer_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t defer_cv;
static int defer_started, defer_running;
static uint64_t defer_at_ns; /* 0: nothing scheduled */
static int64_t defer_min_free;
static double defer_share;
/* The trim the refault budget held back: looked at when no trimmer event
 * came for TA_BIND_IDLE_NS (and idle_interval_ns after the last trim, and
 * not before idle_not_before). */
static int idle_armed;
static int64_t idle_min_free;
static uint64_t idle_interval_ns, idle_not_before;
static double idle_share;
static _Atomic uint64_t deferred_trims, idle_trims, refault_skips;

static void defer_child(void) {
  pthread_mutex_init(&defer_mu, NULL);
  defer_started = 0;
  defer_at_ns = 0;
  defer_running = 0;
  idle_armed = 0;
  idle_not_before = 0;
}

/* A fork child has only the forking thread: a trim that another thread was
 * running (or a gate it waited at) is not running there. Without this the
 * child's busy flag stays set and every later hook trim in that worker is
 * "coalesced" into nothing, for ever (issue 17, item 3). */
static void policy_child(void) {
  atomic_flag_clear(&trim_busy);
  atomic_store(&trimming_now, 0);
  atomic_store_explicit(&free_sample_at, 0, memory_order_release);
  atomic_store(&last_trim_cpu, 0); /* the child's CPU clock starts again at 0 */
  atomic_store(&last_event_cpu, 0);
  pthread_mutex_init(&gate_mu, NULL);
  pthread_cond_init(&gate_cv, NULL);
  defer_child();
}

static void atfork_register(void) {
  pthread_atfork(NULL, NULL, policy_child);
}

static int64_t trim_checked(double min_interval, int64_t min_free, double share, ta_bind_skip_t *why);

/* When to look at the held-back trim again (defer_mu held). */
static uint64_t idle_due(void) {
  uint64_t a = atomic_load(&last_event_ns) + TA_BIND_IDLE_NS;
  uint64_t last = atomic_load(&last_trim_ns), b = last ? last + idle_interval_ns : 0;
  if (b > a) a = b;
  return idle_not_before > a ? idle_not_before : a;
}

/* No trimmer event for TA_BIND_IDLE_NS: idle, or inside a long job? Idle
 * when the process spent at most TA_BIND_IDLE_CPU of that time on a CPU (a
 * worker waiting for its next job spends next to none; one in a long job,
 * even on a loaded machine, a good part). */
static int quiet_since_event(uint64_t now) {
  uint64_t ev = atomic_load(&last_event_ns), ev_cpu = atomic_load(&last_event_cpu);
  uint64_t cpu = ta_bind_cpu_ns();
  return cpu <= ev_cpu || now <= ev || (double)(cpu - ev_cpu) <= TA_BIND_IDLE_CPU * (double)(now - ev);
}

static void *defer_main(void *unused) {
  (void)unused;
  ta_bind_mark_policy_thread();
  pthread_mutex_lock(&defer_mu);
  for (;;) {
    while (defer_at_ns == 0 && !idle_armed) pthread_cond_wait(&defer_cv, &defer_mu);
    uint64_t idle_at = idle_armed ? idle_due() : 0;
    int idle = defer_at_ns == 0 || (idle_armed && idle_at < defer_at_ns);
    uint64_t at = idle ? idle_at : defer_at_ns, now = now_ns();
    if (now < at) {
      /* the condvar waits on CLOCK_MONOTONIC, without the test offset */
      uint64_t real = ta_bind_mono_ns() + (at - now);
      struct timespec ts = {(time_t)(real / 1000000000u), (long)(real % 1000000000u)};
      pthread_cond_timedwait(&defer_cv, &defer_mu, &ts);
      continue;
    }
    int64_t min_free = idle ? idle_min_free : defer_min_free;
    double share = defer_share;
    int quiet = 0;
    if (idle) {
      /* idle: no budget (an idle worker refaults nothing); in a long job:
       * priced, and looked at again TA_BIND_IDLE_NS later if still too dear */
      quiet = quiet_since_event(now);
      share = quiet ? 0 : idle_share;
      idle_armed = 0;
      idle_not_before = now + TA_BIND_IDLE_NS;
    } else {
      defer_at_ns = 0;
    }
    defer_running = 1;
    pthread_mutex_unlock(&defer_mu);
    ta_bind_skip_t why;
    if (trim_checked(0, min_free, share, &why) >= 0) {
      atomic_fetch_add(&deferred_trims, 1);
      if (quiet) atomic_fetch_add(&idle_trims, 1);
    }
    pthread_mutex_lock(&defer_mu);
    defer_running = 0;
  }
  return NULL;
}

/* Starts the background thread (defer_mu held); 1 when it runs. */
static int defer_start(void) {
  if (!defer_started) {
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&defer_cv, &ca);
    pthread_condattr_destroy(&ca);
    pthread_once(&atfork_once, atfork_register);
    pthread_t t;
    pthread_attr_t a;
    pthread_attr_init(&a);
    pthread_attr_setdetachstate(&a, PTHREAD_CREATE_DETACHED);
    pthread_attr_setstacksize(&a, 64 * 1024);
    defer_started = pthread_create(&t, &a, defer_main, NULL) == 0;
    pthread_attr_destroy(&a);
  }
  return defer_started;
}

/* A larger share lets more through; 0 (no budget) the most. */
static int less_demanding(double share, double than) {
  return than > 0 && (share <= 0 || share > than);
}

static void defer_trim(uint64_t at, int64_t min_free, double share) {
  pthread_mutex_lock(&defer_mu);
  if (defer_start() && (defer_at_ns == 0 || at < defer_at_ns)) {
    defer_at_ns = at;
    defer_min_free = min_free;
    defer_share = share;
    pthread_cond_signal(&defer_cv);
  } else if (defer_started && at == defer_at_ns) {
    /* the least demanding of the requests for that moment */
    if (min_free < defer_min_free) defer_min_free = min_free;
    if (less_demanding(share, defer_share)) defer_share = share;
  }
  pthread_mutex_unlock(&defer_mu);
}

/* The trim the refault budget held back, for when the worker goes idle. */
static void defer_idle(uint64_t interval, int64_t min_free, double share) {
  pthread_mutex_lock(&defer_mu);
  if (defer_start()) {
    if (!idle_armed || min_free < idle_min_free) idle_min_free = min_free;
    if (!idle_armed || interval < idle_interval_ns) idle_interval_ns = interval;
    if (!idle_armed || less_demanding(share, idle_share)) idle_share = share;
    if (!idle_armed) pthread_cond_signal(&defer_cv);
    idle_armed = 1;
  }
  pthread_mutex_unlock(&defer_mu);
}

void ta_bind_trim_soon(void) {
  defer_trim(now_ns(), 0, 0);
}

void ta_bind_clock_advance(double seconds) {
  if (!(seconds > 0)) return;
  atomic_fetch_add(&clock_offset_ns, (uint64_t)(seconds * 1e9));
  pthread_mutex_lock(&defer_mu);
  if (defer_started) pthread_cond_signal(&defer_cv);
  pthread_mutex_unlock(&defer_mu);
}

uint64_t ta_bind_deferred_trims(void) {
  return atomic_load(&deferred_trims);
}

void ta_bind_policy_stats(ta_bind_policy_stats_t *out) {
  pthread_mutex_lock(&defer_mu);
  out->pending = defer_at_ns != 0 || idle_armed || defer_running;
  pthread_mutex_unlock(&defer_mu);
  out->busy = atomic_load(&trimming_now);
  out->deferred = atomic_load(&deferred_trims);
  out->coalesced = atomic_load(&coalesced);
  out->free_reads = atomic_load(&free_reads);
  out->refault_skips = atomic_load(&refault_skips);
  out->idle_trims = atomic_load(&idle_trims);
  out->fault_ns = ta_bind_fault_ns();
}

/* The rate limit, then the free-bytes guard (min_free > 0), then the refault
 * budget (share > 0, min_free >= 0): 1 when a trim should run now. min_free
 * < 0: no guard and no budget (a count-triggered trim). When the free bytes
 * cannot be measured at all, guard and budget let the trim run: a hook must
 * never go silent because of what the platform cannot tell. */
static int due_checked(double min_interval, int64_t min_free, double share, ta_bind_skip_t *why) {
  uint64_t now = now_ns();
  uint64_t last = atomic_load(&last_trim_ns);
  uint64_t interval = min_interval > 0 ? (uint64_t)(min_interval * 1e9) : 0;
  if (last != 0 && now - last < interval) {
    defer_trim(last + interval, min_free, share); /* runs it when due */
    *why = TA_SKIP_INTERVAL;
    return 0;
  }
  uint64_t free_bytes;
  int known = (min_free > 0 || (min_free == 0 && share > 0)) && free_now(now, &free_bytes);
  if (known && min_free > 0 && free_bytes < (uint64_t)min_free) {
    *why = TA_SKIP_FREE;
    return 0;
  }
  if (known && share > 0) {
    uint64_t cpu = ta_bind_cpu_ns(), at = atomic_load(&last_trim_cpu);
    double since = cpu > at ? (double)(cpu - at) : 0;
    if (ta_bind_refault_price(free_bytes) > share * since) {
      atomic_fetch_add_explicit(&refault_skips, 1, memory_order_relaxed);
      defer_idle(interval, min_free, share);
      *why = TA_SKIP_REFAULT;
      return 0;
    }
  }
  *why = TA_SKIP_NONE;
  return 1;
}

static int64_t trim_checked(double min_interval, int64_t min_free, double share, ta_bind_skip_t *why) {
  return due_checked(min_interval, min_free, share, why) ? run_trim(why) : -1;
}

static int64_t clamp_free(uint64_t min_free) {
  return min_free > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)min_free;
}

int ta_bind_due(double min_interval, uint64_t min_free, ta_bind_skip_t *why) {
  ta_bind_skip_t w;
  return due_checked(min_interval, clamp_free(min_free), 0, why ? why : &w);
}

int64_t ta_bind_run_trim(ta_bind_skip_t *why) {
  ta_bind_skip_t w;
  return run_trim(why ? why : &w);
}

int64_t ta_bind_run_trim_after(int wait_ms, const _Atomic int *stop) {
  int64_t released = ta_bind_run_trim(NULL);
  for (int waited = 0; released < 0 && waited < wait_ms;) {
    if (atomic_load(&trimming_now)) {
      if (stop && atomic_load(stop)) break;
      struct timespec ms = {0, 1000000};
      nanosleep(&ms, NULL);
      waited++;
      continue;
    }
    released = ta_bind_run_trim(NULL);
  }
  return released;
}

int64_t ta_bind_trim_if_due2(double min_interval, uint64_t min_free, ta_bind_skip_t *why) {
  ta_bind_skip_t w;
  return trim_checked(min_interval, clamp_free(min_free), 0, why ? why : &w);
}

int64_t ta_bind_trim_if_due(double min_interval, uint64_t min_free) {
  return ta_bind_trim_if_due2(min_interval, min_free, NULL);
}

/* For bind_trimmer.c: a trimmer's decision, and its event (the idle trim). */
int ta_bind_policy_due(double min_interval, int64_t min_free, double share, ta_bind_skip_t *why) {
  return due_checked(min_interval, min_free, share, why);
}

void ta_bind_policy_event(void) {
  atomic_store_explicit(&last_event_ns, now_ns(), memory_order_relaxed);
  atomic_store_explicit(&last_event_cpu, ta_bind_cpu_ns(), memory_order_relaxed);
}
