/* Thread caches: per thread, per class (up to 128 KiB), a LIFO of free
 * blocks. malloc pops, free pushes any block of a cached class, whichever
 * thread allocated it; an empty bin refills a batch from an arena, a full one
 * flushes half to the blocks' arenas. A bin's length starts at 0 and grows
 * each time it runs empty or full (slow start: +1 up to 16, then by half, up
 * to ta_class_tmax), within the cache's byte budget (thread_limit: the
 * option tcache_total shared among the threads, at least tcache_bytes); a
 * bin that needs more takes it from the others, halving them in turn. So the
 * budget goes to the classes the thread uses, the fast paths compare one
 * count, and a sleeping thread holds at most its limit. Thread exit
 * flushes the cache; a trim flushes the caller's and asks the others to flush
 * at their next slow path (a refill or an overflow). */
#include "internal.h"

#include <errno.h>

_Atomic uint32_t ta_flush_epoch;
_Atomic uint32_t ta_tcaches_live; /* registered caches: threads of the program that allocate */
static pthread_key_t tcache_key; /* its destructor flushes an exiting thread's cache */

/* Every thread starts on the empty cache (max 0 everywhere, never written)
 * and ends on the done cache (the same, after the exit flush). */
static ta_tcache_t tcache_empty = {.state = TA_TC_EMPTY};
static ta_tcache_t tcache_done = {.state = TA_TC_DONE};
__thread ta_tcache_t *ta_tls_tcache __attribute__((tls_model("initial-exec"))) = &tcache_empty;

static ta_lock_t tcaches_lock = PTHREAD_MUTEX_INITIALIZER;
static ta_tcache_t *tcaches;     /* registered (under tcaches_lock) */
static ta_tcache_t *spare;       /* structs of exited threads, for reuse */
static uint8_t *chunk;           /* fresh structs are cut from here */
static size_t chunk_left;
#define TA_TCACHE_CHUNK ((size_t)64 << 10)
#define TA_REFILL_MAX 64 /* blocks a refill asks an arena for */

/* A thread's byte bound: tcache_total divided by the threads that have a
 * cache, rounded up to a power of two (so a thread pool whose count moves by
 * one rarely changes it), and never below tcache_bytes; 0 when tcache_bytes
 * is 0 (no caches). Read at the cache's start and every 64th slow path, so
 * a sleeping thread keeps the share it last read: the caches of n sleeping
 * threads hold at most tcache_total * (1 + log2(n) / 2), or n * tcache_bytes
 * when that is more. Why shared out: blocks of 1-64 KiB spread over ~48
 * classes, and 256 KiB holds about one of each, so a thread that uses them
 * missed its cache on most calls (bench/results-2026-12-06-tcache-bytes.txt:
 * 4.4x mimalloc's instructions at 256 KiB, 1.17x at 4 MiB); a single busy
 * thread gets 4 MiB, sixteen get v2's 256 KiB. With bigger OS pages the
 * total shrinks as the bins' lengths do (size.c): every cached block keeps
 * its page resident, and at 64 KiB pages four sleeping threads with a 1 MiB
 * share each kept 24.8 MiB of a freed burst (test_purge, under qemu; the
 * bound is 16). 16 KiB pages: a quarter, 64 KiB: a sixteenth. */
static uint64_t thread_limit(void) {
  uint64_t least = (uint64_t)ta_opt(TA_OPT_TCACHE_BYTES), total = (uint64_t)ta_opt(TA_OPT_TCACHE_TOTAL);
  uint32_t n = ta_relaxed_load(&ta_tcaches_live);
  if (least == 0) return 0;
  unsigned shift = n <= 1 ? 0 : 32u - (unsigned)__builtin_clz(n - 1); /* log2 of n rounded up */
  uint64_t share = total >> shift >> (ta_ospage_shift - TA_OSPAGE_MIN_SHIFT);
  return share > least ? share : least;
}

/* The process id a new cache records (for the reap), read once and again
 * in a fork child (ta_tcaches_fork_child): a getpid per new thread cost
 * programs that make many short threads a system call each (mleak). A child
 * made without the fork handlers keeps the parent's: its caches are then
 * never reaped, as the reap leaves another process's alone. */
static _Atomic int self_pid;

static int pid_of_process(void) {
  int pid = ta_relaxed_load(&self_pid);
  if (ta_unlikely(!pid)) {
    pid = ta_prim_pid();
    ta_relaxed_store(&self_pid, pid);
  }
  return pid;
}

static ta_tcache_t *tcache_new(void) {
  ta_lock(&tcaches_lock);
  ta_tcache_t *tc = spare;
  if (tc) {
    spare = tc->next;
  } else {
    size_t sz = (sizeof(ta_tcache_t) + 63) & ~(size_t)63;
    if (chunk_left < sz) {
      void *p;
      if (ta_prim_map(TA_TCACHE_CHUNK, ta_prim_page_size(), &p) != 0) {
        ta_unlock(&tcaches_lock);
        return NULL;
      }
      chunk = p;
      chunk_left = TA_TCACHE_CHUNK;
      ta_relaxed_add(&ta_meta_bytes, TA_TCACHE_CHUNK);
    }
    tc = (ta_tcache_t *)chunk;
    chunk += sz;
    chunk_left -= sz;
  }
  memset(tc, 0, sizeof *tc);
  for (size_t c = 0; c < TA_TCLASSES; c++) tc->bins[c].sample_skip = 0; /* a look at the profiler first */
  tc->prof_clamped[0] = tc->prof_clamped[1] = ~(uint64_t)0;
  tc->epoch = ta_relaxed_load(&ta_flush_epoch);
  tc->state = TA_TC_LIVE;
  tc->tid = ta_prim_tid();
  tc->pid = pid_of_process();
  tc->next = tcaches;
  if (tcaches) tcaches->prev = tc;
  tcaches = tc;
  ta_relaxed_add(&ta_tcaches_live, 1);
  ta_unlock(&tcaches_lock);
  tc->limit = thread_limit(); /* counting itself */
  return tc;
}

static void tcache_unregister(ta_tcache_t *tc) { /* tcaches_lock held */
  if (tc->prev) tc->prev->next = tc->next;
  else tcaches = tc->next;
  if (tc->next) tc->next->prev = tc->prev;
  tc->state = TA_TC_DONE;
  ta_relaxed_sub(&ta_tcaches_live, 1);
  tc->prev = NULL;
  tc->next = spare;
  spare = tc;
}

/* Keeps the newest `keep` blocks of bin c, flushes the rest: as a batch for
 * another thread cache when `batch`, else into their slabs (thread exit,
 * trim: memory that should become free). */
static void flush_bin(ta_tcache_t *tc, size_t c, size_t keep, bool batch) {
  ta_tbin_t *tb = &tc->bins[c];
  size_t count = ta_relaxed_load(&tb->count);
  if (count <= keep) return;
  ta_block_t *rest;
  if (keep == 0) {
    rest = tb->head;
    tb->head = NULL;
  } else {
    ta_block_t *b = tb->head;
    for (size_t i = 1; i < keep; i++) b = ta_link_get(b);
    rest = ta_link_get(b);
    ta_link_set(b, NULL);
  }
  size_t n = count - keep;
  ta_relaxed_store(&tb->count, (uint16_t)keep);
  ta_arena_flush(rest, n, c, batch);
  ta_purge_kick();
}

void ta_tcache_flush_all(ta_tcache_t *tc) {
  if (tc->state != TA_TC_LIVE) return;
  for (size_t c = 0; c < TA_TCLASSES; c++) flush_bin(tc, c, 0, false);
  tc->epoch = ta_relaxed_load(&ta_flush_epoch);
}

/* The budget back to 0: every bin empty and of length 0 (the bound changed). */
static void reset(ta_tcache_t *tc) {
  for (size_t c = 0; c < TA_TCLASSES; c++) {
    flush_bin(tc, c, 0, true);
    tc->bins[c].max = 0;
  }
  tc->budget = 0;
}

/* Budget for `need` more bytes, taken from the other bins (not `keep`): each
 * in turn, from where the last search stopped, gives half its length,
 * flushing the blocks beyond it. Bounded: one pass over the bins. */
static void steal(ta_tcache_t *tc, size_t keep, uint64_t need) {
  for (size_t i = 0; i < TA_TCLASSES && tc->budget + need > tc->limit; i++) {
    size_t v = tc->victim++ % TA_TCLASSES;
    ta_tbin_t *vb = &tc->bins[v];
    if (v == keep || vb->max == 0) continue;
    uint16_t to = vb->max / 2;
    flush_bin(tc, v, to, true);
    tc->budget -= (uint64_t)(vb->max - to) * ta_class_size(v);
    vb->max = to;
  }
}

/* Bin c ran empty or full: a longer list (slow start), if the budget allows
 * or can be taken from the other bins. */
static void grow(ta_tcache_t *tc, size_t c) {
  ta_tbin_t *tb = &tc->bins[c];
  uint16_t cap = ta_class_tmax[c];
  if (tb->max >= cap) return;
  uint32_t to = tb->max < 16 ? tb->max + 1u : tb->max + tb->max / 2u;
  if (to > cap) to = cap;
  uint64_t more = (uint64_t)(to - tb->max) * ta_class_size(c);
  if (tc->budget + more > tc->limit) steal(tc, c, more);
  if (tc->budget + more > tc->limit) {
    if (tb->max || tc->budget + ta_class_size(c) > tc->limit) return; /* not even one block */
    to = 1;
    more = ta_class_size(c);
  }
  tc->budget += more;
  tb->max = (uint16_t)to;
}

/* The caller's live cache, made on its first slow path; NULL when it has
 * none (its thread is exiting, caching is off, or no memory). */
static ta_tcache_t *tcache_get(void) {
  ta_tcache_t *tc = ta_tls_tcache;
  if (ta_likely(tc->state == TA_TC_LIVE)) return tc;
  if (tc->state == TA_TC_DONE) return NULL;
  if (ta_opt(TA_OPT_TCACHE_BYTES) == 0) return NULL;
  tc = tcache_new();
  if (!tc) return NULL;
  ta_tls_tcache = tc; /* before setspecific, which may allocate */
  pthread_setspecific(tcache_key, tc);
  ta_tcaches_reap(); /* a program that makes threads reuses the caches of those that left one */
  return tc;
}

/* Every slow path: a flush request (one relaxed load and a compare; a trim
 * promises the other threads flush at their next slow path, and v2 looked
 * only every 64th), and a move to another arena (arena.c): the blocks in the
 * cache came from the slabs the thread shared with the one it moves away
 * from, interleaved with that thread's, and a bin reuses its last-freed block
 * first, so without a flush they would stay in circulation, both threads
 * writing to the same cache lines (glibc's bench-malloc-thread, two threads:
 * 63-72 M iterations in its 2 s without, 95-106 M with it; glibc 88-97 M).
 * Every 64th: a changed bound (an option, or the number of
 * threads sharing tcache_total), the purge. A smaller bound halves the bins
 * in turn until the budget fits (the ones the thread uses grow back as it
 * uses them); one pass not enough, or caching off, empties them all. */
static void maintain(ta_tcache_t *tc) {
  if (ta_unlikely(tc->epoch != ta_relaxed_load(&ta_flush_epoch))) ta_tcache_flush_all(tc);
  if (ta_unlikely(ta_tls_arena_moved)) {
    ta_tls_arena_moved = 0;
    ta_tcache_flush_all(tc);
  }
  if (ta_likely(++tc->slow % 64)) return;
  tc->limit = thread_limit();
  if (tc->limit < tc->budget) steal(tc, TA_TCLASSES, 0);
  if (tc->limit < tc->budget) reset(tc);
  ta_purge_on_activity();
}

void *ta_tcache_refill(ta_tcache_t *tc, size_t cls) {
  tc = tcache_get();
  if (tc) maintain(tc); /* first: it sees tcache_bytes come back from 0 */
  if (!tc || tc->limit == 0) return ta_arena_alloc1(cls);
  ta_tbin_t *tb = &tc->bins[cls];
  ta_block_t *b = tb->head;
  if (!b) {
    grow(tc, cls);
    /* Half the bin (room for what this thread frees next), at most 64 blocks:
     * a bigger refill would pull blocks out of sparse slabs before the fullest
     * one is used up, and keep them in the cache in reverse order. */
    size_t want = tb->max / 2 ? tb->max / 2 : 1;
    if (want > TA_REFILL_MAX) want = TA_REFILL_MAX;
    size_t got = ta_arena_refill(ta_arena_pick(), cls, &b, want);
    if (!got) {
      errno = ENOMEM;
      return NULL;
    }
    if (got > tb->max) { /* a bin of length 0 (no budget): the one block, uncached */
      b->key = 0;
      return b;
    }
    tb->head = b;
    ta_relaxed_store(&tb->count, (uint16_t)got);
  }
  ta_relaxed_store(&tb->count, (uint16_t)(ta_relaxed_load(&tb->count) - 1));
  return ta_tbin_pop(tb, b, true);
}

void ta_tcache_overflow(ta_tcache_t *tc, size_t cls, void *p) {
  tc = tcache_get();
  if (tc) maintain(tc);
  if (!tc || tc->limit == 0) {
    ta_arena_free1(ta_span_of(ta_segment_of(p), p), p);
    ta_purge_kick();
    return;
  }
  ta_tbin_t *tb = &tc->bins[cls];
  if (ta_relaxed_load(&tb->count) >= tb->max) grow(tc, cls);
  if (ta_relaxed_load(&tb->count) >= tb->max) flush_bin(tc, cls, tb->max / 2, true);
  if (ta_relaxed_load(&tb->count) >= tb->max) { /* a bin of length 0: no budget for one block */
    ta_arena_free1(ta_span_of(ta_segment_of(p), p), p);
    ta_purge_kick();
    return;
  }
  ta_tbin_push(tb, p, ta_relaxed_load(&tb->count), ta_cookie);
}

void ta_tcache_init(void) {
  pthread_key_create(&tcache_key, ta_tcache_thread_done);
}

void ta_tcache_ask_flush(void) {
  ta_relaxed_add(&ta_flush_epoch, 1);
}

void ta_tcache_thread_done(void *arg) {
  ta_tcache_t *tc = arg;
  if (!tc || tc->state != TA_TC_LIVE) return;
  /* First, before the flush: what this thread allocates or frees from now on
   * goes straight to the arenas. The flush may start the purger, and (the
   * preload library) pthread_create allocates on this thread: v2 refilled
   * the dying cache there, and blocks of a bin already flushed left with it. */
  ta_tls_tcache = &tcache_done;
  ta_tcache_flush_all(tc);
  ta_lock(&tcaches_lock);
  tcache_unregister(tc);
  ta_unlock(&tcaches_lock);
}

/* Caches whose thread is gone without flushing them: a thread whose first
 * malloc comes in the last round of TLS destructors registers its cache
 * after the round that would have run ours (glibc and musl run at most
 * PTHREAD_DESTRUCTOR_ITERATIONS rounds), and nothing else can tell it is
 * exiting. A cache of this process whose kernel thread id no longer exists
 * here is flushed and reused; never the caller's (a fork child's thread has
 * a new id: ta_tcaches_fork_child), nor one of another process (a child made
 * without the fork handlers: those are left, not guessed at). A reused id
 * only delays a reap. One tgkill per registered cache, so it runs at most
 * once a second, from a trim and when a thread registers a cache. */
static _Atomic uint64_t reaped_ms;

void ta_tcaches_reap(void) {
  uint64_t now = ta_prim_clock_ms(), last = ta_relaxed_load(&reaped_ms);
  if (ta_relaxed_load(&ta_tcaches_live) <= (ta_tls_tcache->state == TA_TC_LIVE ? 1u : 0u)) return;
  if ((last && now - last < 1000) || !atomic_compare_exchange_strong(&reaped_ms, &last, now ? now : 1)) return;
  int pid = ta_prim_pid();
  ta_tcache_t *dead = NULL;
  ta_lock(&tcaches_lock);
  for (ta_tcache_t *tc = tcaches, *next; tc; tc = next) {
    next = tc->next;
    if (tc == ta_tls_tcache || tc->pid != pid || !ta_prim_thread_gone(tc->tid)) continue;
    if (tc->prev) tc->prev->next = tc->next; /* out of the registry, not yet spare: flushed first */
    else tcaches = tc->next;
    if (tc->next) tc->next->prev = tc->prev;
    ta_relaxed_sub(&ta_tcaches_live, 1);
    tc->prev = NULL;
    tc->next = dead;
    dead = tc;
  }
  ta_unlock(&tcaches_lock);
  for (ta_tcache_t *tc = dead, *next; tc; tc = next) { /* outside the lock: a flush may start the purger */
    next = tc->next;
    ta_tcache_flush_all(tc);
    ta_lock(&tcaches_lock);
    tc->state = TA_TC_DONE;
    tc->next = spare;
    spare = tc;
    ta_unlock(&tcaches_lock);
  }
}

void ta_tcaches_stats(uint64_t *held, uint64_t *count) {
  uint64_t h = 0, n = 0;
  ta_lock(&tcaches_lock);
  for (ta_tcache_t *tc = tcaches; tc; tc = tc->next, n++)
    for (size_t c = 0; c < TA_TCLASSES; c++) h += (uint64_t)ta_relaxed_load(&tc->bins[c].count) * ta_class_size(c);
  ta_unlock(&tcaches_lock);
  *held = h;
  *count = n;
}

void ta_tcaches_fork_prepare(void) {
  ta_lock(&tcaches_lock);
}
void ta_tcaches_fork_parent(void) {
  ta_unlock(&tcaches_lock);
}
/* Threads that do not exist in the child lose their caches (bounded); their
 * memory stays in the shared arenas. */
void ta_tcaches_fork_child(void) {
  ta_tcache_t *me = ta_tls_tcache;
  ta_relaxed_store(&self_pid, ta_prim_pid());
  if (me->state == TA_TC_LIVE) { /* this thread's ids in the child (never reaped as gone) */
    me->tid = ta_prim_tid();
    me->pid = ta_relaxed_load(&self_pid);
  }
  for (ta_tcache_t *tc = tcaches, *next; tc; tc = next) {
    next = tc->next;
    if (tc != me) tcache_unregister(tc);
  }
  ta_unlock(&tcaches_lock);
}

/* Every cached block is a live block start of its bin's class with its
 * cookie; counts agree with the lists and stay within the bins' lengths,
 * whose bytes are the budget, within the bound. The caller's cache only. */
bool ta_tcache_is_valid(ta_tcache_t *tc) {
  if (tc->state != TA_TC_LIVE) return true;
  uint64_t budget = 0;
  for (size_t c = 0; c < TA_TCLASSES; c++) {
    ta_tbin_t *tb = &tc->bins[c];
    size_t n = 0;
    for (ta_block_t *b = tb->head; b; b = ta_link_get(b), n++) {
      if (n > tb->max || b->key != ta_cookie || !ta_segmap_contains(ta_segment_of(b))) return false;
      ta_span_t *sp = ta_span_of(ta_segment_of(b), b);
      if (sp->kind != TA_SPAN_SLAB || sp->cls != c || !ta_is_block_start(sp, b)) return false;
    }
    if (n != ta_relaxed_load(&tb->count) || n > tb->max || tb->max > ta_class_tmax[c]) return false;
    budget += (uint64_t)tb->max * ta_class_size(c);
  }
  return budget == tc->budget && budget <= tc->limit;
}
