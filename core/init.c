/* Process start (lazily on the first slow path, or from the constructor) and
 * fork. */
#include "internal.h"

#include <stdlib.h>

_Atomic int ta_initialized;
static ta_lock_t init_lock = PTHREAD_MUTEX_INITIALIZER;
static __thread int in_init __attribute__((tls_model("initial-exec")));

/* Fork: every lock is taken before and released in the parent; in the child
 * they are reset, threads that do not exist there lose their caches (their
 * memory stays in the arenas), and the background purger restarts lazily.
 * Not init_lock: init registers these handlers while it holds init_lock, and
 * glibc holds its own atfork lock across the prepare handlers, so taking
 * init_lock here would deadlock a fork against another thread's first init.
 * No child needs it: ta_initialized is set before the handlers exist, and
 * init_lock is only taken while it is not. */
static void fork_prepare(void) {
  ta_prof_fork_prepare();
  ta_tcaches_fork_prepare();
  ta_purge_fork_prepare();
  ta_arenas_fork_prepare();
  ta_huge_fork_prepare();
}
static void fork_parent(void) {
  ta_huge_fork_parent();
  ta_arenas_fork_parent();
  ta_purge_fork_parent();
  ta_tcaches_fork_parent();
  ta_prof_fork_parent();
}
static void fork_child(void) {
  ta_huge_fork_child();
  ta_arenas_fork_child();
  ta_purge_fork_child();
  ta_tcaches_fork_child();
  ta_prof_fork_child();
}

void ta_process_init(void) {
  if (ta_likely(atomic_load_explicit(&ta_initialized, memory_order_acquire))) return;
  if (in_init) return; /* a call made by init itself (pthread_atfork may malloc) */
  ta_lock(&init_lock);
  if (!atomic_load_explicit(&ta_initialized, memory_order_relaxed)) {
    in_init = 1;
    size_t ps = ta_prim_page_size();
    ta_ospage_shift = (size_t)__builtin_ctzll(ps < 4096 ? 4096 : ps);
    /* The layout (64 KiB slices, the per-page counts) assumes pages of 4 to
     * 64 KiB, which is every Linux page size in use; past that, refuse in one
     * line rather than run with shifts that go negative. */
    if (ps > TA_SLICE_SIZE) ta_error("OS pages over 64 KiB are not supported; this page size (bytes)", (void *)ps);
    ta_size_init();
    ta_cookie = (uintptr_t)ta_prim_random(); /* slab.c sets it in blocks, tcache.c and alloc.c check it */
    ta_link_secret = (uintptr_t)ta_prim_random() & ~(uintptr_t)(TA_ALIGN - 1); /* keeps links aligned */
    ta_options_init();
    ta_prim_affinity_save(); /* the CPUs the purger gets (ta_prim_thread_defaults) */
    ta_tcache_init();
    atomic_store_explicit(&ta_initialized, 1, memory_order_release);
    pthread_atfork(fork_prepare, fork_parent, fork_child);
    ta_prof_init(); /* after init: sampling may begin (TRIMALLOC_PROF) */
    if (ta_opt(TA_OPT_VERBOSE)) {
      char opts[256];
      ta_options_format(opts, sizeof opts);
      ta_say("active (version " TRIMALLOC_VERSION "; ", opts,
             ta_opt(TA_OPT_BACKGROUND) ? "; background purger: starts when memory is first left to purge)"
                                       : "; background purger: off)", "", "");
    }
    in_init = 0;
  }
  ta_unlock(&init_lock);
}

__attribute__((constructor)) static void ta_constructor(void) {
  ta_process_init();
}

/* Setting background to 0 stops a running purger before this returns (it
 * may be asleep for seconds: it is woken and waited for), so a caller that
 * turns it off sees no purge after the call and background = 0 in the stats. */
TRIMALLOC_API int trimalloc_option_set(const char *name, long long value) {
  int r = ta_option_set(name, value);
  if (r == 0 && !ta_opt(TA_OPT_BACKGROUND)) ta_purger_stop();
  if (r == 0 && !strncmp(name, "prof", 4)) ta_prof_option_changed(name);
  return r;
}

TRIMALLOC_API const char *trimalloc_version(void) {
  return TRIMALLOC_VERSION;
}

/* TRIMALLOC_SHOW_STATS=1: the stats as one JSON line on stderr at exit. */
__attribute__((destructor)) static void ta_destructor(void) {
  if (!ta_opt(TA_OPT_SHOW_STATS)) return;
  static char buf[4096];
  size_t n = trimalloc_stats_json(buf, sizeof buf);
  if (n >= sizeof buf) n = sizeof buf - 1;
  ta_prim_write_err("trimalloc: stats ", 17);
  ta_prim_write_err(buf, n);
  ta_prim_write_err("\n", 1);
}
