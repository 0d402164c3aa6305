/* Arenas: a few, shared by every thread. By default a thread starts on
 * arena 0 and moves to another only when its refills keep following another
 * thread's (threads allocating at the same moment: refill_lock), up to one
 * arena per CPU; with the option arenas set to N, refills go to the arena of
 * the CPU the thread runs on, of N. A block always goes back to the arena of its
 * slab. Each arena has a bin per size class (its own lock) whose partial
 * slabs sit in fullness buckets, and a page heap (span.c, the arena lock).
 * Lock order: bin, then arena. */
#include "internal.h"

#include <errno.h>

ta_arena_t ta_arenas[TA_ARENAS_MAX];
_Atomic uint32_t ta_arenas_used;
static ta_lock_t arenas_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic unsigned ncpus;

/* The most arenas the default spreads threads over: one per CPU the process
 * may use. Every arena in use multiplies the partly used slabs (a 6-thread
 * Ruby program peaked at 109 MiB with one arena, 152-161 with two taken by
 * CPU, on 2 CPUs), so a thread takes another only under contention, which
 * a program whose threads take turns (Ruby's GVL, Python's GIL) does not
 * have. */
static unsigned cpu_arenas(void) {
  unsigned n = ta_relaxed_load(&ncpus);
  if (!n) {
    n = ta_prim_ncpus();
    if (n < 1) n = 1;
    if (n > TA_ARENAS_MAX) n = TA_ARENAS_MAX;
    ta_relaxed_store(&ncpus, n);
  }
  return n;
}

static ta_arena_t *arena_ready(size_t i) {
  ta_arena_t *a = &ta_arenas[i];
  if (ta_likely(atomic_load_explicit(&a->ready, memory_order_acquire))) return a;
  ta_lock(&arenas_lock);
  if (!atomic_load_explicit(&a->ready, memory_order_relaxed)) {
    ta_binlock_init(&a->lock);
    for (size_t c = 0; c < TA_CLASSES; c++) {
      ta_binlock_init(&a->bins[c].lock);
      a->bins[c].xfer = a->bins[c].xfer_inline;
      a->bins[c].xcap = TA_XFER_INLINE;
    }
    a->index = (uint32_t)i;
    atomic_store_explicit(&a->ready, 1, memory_order_release);
    if (ta_relaxed_load(&ta_arenas_used) < i + 1) ta_relaxed_store(&ta_arenas_used, (uint32_t)(i + 1));
  }
  ta_unlock(&arenas_lock);
  return a;
}

/* The calling thread's arena under the default (option arenas 0), and its
 * count of refills and of those that found another thread's there before. */
static __thread uint8_t tls_arena __attribute__((tls_model("initial-exec")));
__thread uint8_t ta_tls_arena_moved __attribute__((tls_model("initial-exec")));
static __thread uint8_t tls_refills __attribute__((tls_model("initial-exec")));
static __thread uint8_t tls_shared __attribute__((tls_model("initial-exec")));
/* The clocks at its last refill that followed another thread's */
static __thread uint64_t tls_follow_ns __attribute__((tls_model("initial-exec")));
static __thread uint64_t tls_follow_cpu_ns __attribute__((tls_model("initial-exec")));
static _Atomic uint32_t arena_turn = 1; /* the next arena a thread moves to */

ta_arena_t *ta_arena_pick(void) {
  long long n = ta_opt(TA_OPT_ARENAS);
  if (n <= 0) return arena_ready(tls_arena < cpu_arenas() ? tls_arena : 0);
  if (n > TA_ARENAS_MAX) n = TA_ARENAS_MAX;
  return arena_ready(n == 1 ? 0 : ta_prim_cpu() % (unsigned)n);
}

/* A refill takes its bin's lock, and notes whether the arena's previous
 * refill was another thread's. Two threads allocating at the same moment
 * from one arena share its slabs, bins and counters, whose cache lines move
 * between their CPUs: with one arena, two threads of bench/mt_mix took
 * 1.2-2x the CPU of one doing the same work, though their refills almost
 * never waited for a lock (0.2%). Threads that take turns (Ruby's GVL,
 * Python's GIL) refill many times in a row each (six Ruby threads: at most
 * 4 in 64 after another's). So when 16 of a thread's last 64 refills follow
 * another thread's, the thread moves on to the next arena in turn, for good
 * (two that collide part: the first to move takes arena 1, the second arena
 * 0). Under the default only (option arenas 0), with more than one CPU.
 *
 * Threads that take turns with few refills a turn look the same by count:
 * with caches shared out (tcache.c thread_limit), two threads alternating
 * under a mutex every 4096 operations made 16 such refills in 64 and moved.
 * What tells them apart is whether the thread ran while the other refilled:
 * a refill after another's counts only when the thread was on a CPU for at
 * least half of the time since its previous one (its CPU clock, a system
 * call, read only then: once a turn when taking turns). A thread waiting
 * for the GVL, the GIL or a mutex sleeps. */
#define TA_MOVE_WINDOW 64
#define TA_MOVE_SHARED 16
static bool ran_since_last_follow(void) {
  uint64_t now = ta_prim_clock_ns(), cpu = ta_prim_thread_cpu_ns();
  bool ran = tls_follow_ns && now > tls_follow_ns && cpu >= tls_follow_cpu_ns &&
             2 * (cpu - tls_follow_cpu_ns) >= now - tls_follow_ns;
  tls_follow_ns = now;
  tls_follow_cpu_ns = cpu;
  return ran;
}

static void refill_lock(ta_arena_t *a, ta_bin_t *bin) {
  /* (the arena's last refiller is one word for all its bins, which no bin
   * lock guards: read and noted before the lock, the clocks outside it) */
  const void *me = ta_tls_tcache, *last = atomic_load_explicit(&a->last_refill, memory_order_relaxed);
  if (last != me) {
    atomic_store_explicit(&a->last_refill, me, memory_order_relaxed);
    if (a->index == tls_arena && cpu_arenas() > 1 && ta_opt(TA_OPT_ARENAS) <= 0 && ran_since_last_follow())
      tls_shared++;
  }
  ta_lock(&bin->lock);
  if (ta_likely(++tls_refills < TA_MOVE_WINDOW)) return;
  unsigned n = cpu_arenas();
  if (tls_shared >= TA_MOVE_SHARED && n > 1 && a->index == tls_arena && ta_opt(TA_OPT_ARENAS) <= 0) {
    tls_arena = (uint8_t)(atomic_fetch_add(&arena_turn, 1) % n);
    ta_tls_arena_moved = 1; /* the cache goes back at the next slow path (not here: a bin lock is held) */
  }
  tls_refills = tls_shared = 0;
}

/* ---- fullness buckets ---- */
static inline unsigned bucket_of(const ta_span_t *sp) {
  if (sp->used == sp->reserved) return TA_BUCKET_NONE;
  unsigned b = (unsigned)(((uint64_t)sp->used * sp->bucket_mul) >> 20);
  return b < TA_FULLNESS ? b : TA_FULLNESS - 1;
}

static void bucket_remove(ta_bin_t *bin, ta_span_t *sp) {
  unsigned b = sp->bucket;
  if (sp->prev) sp->prev->next = sp->next;
  else bin->buckets[b] = sp->next;
  if (sp->next) sp->next->prev = sp->prev;
  if (!bin->buckets[b]) bin->bucket_mask &= ~(1u << b);
  sp->next = sp->prev = NULL;
  sp->bucket = TA_BUCKET_NONE;
}

static void rebucket(ta_bin_t *bin, ta_span_t *sp) {
  unsigned b = bucket_of(sp);
  if (b == sp->bucket) return;
  if (sp->bucket != TA_BUCKET_NONE) bucket_remove(bin, sp);
  if (b == TA_BUCKET_NONE) return;
  sp->prev = NULL;
  sp->next = bin->buckets[b];
  if (sp->next) sp->next->prev = sp;
  bin->buckets[b] = sp;
  bin->bucket_mask |= 1u << b;
  sp->bucket = (uint8_t)b;
}

static inline void dirty_moved(ta_bin_t *bin, uint16_t before, uint16_t after) {
  if (before != after) ta_relaxed_store(&bin->dirty, ta_relaxed_load(&bin->dirty) + after - before);
}

static size_t xfer_take(ta_arena_t *a, ta_bin_t *bin, size_t cls, ta_block_t **first, size_t want, uint64_t now);

__thread ta_binlock_t *ta_bin_lock_held __attribute__((tls_model("initial-exec")));

static ta_span_t *slab_new(ta_arena_t *a, ta_bin_t *bin, size_t cls, ta_pagedelta_t *d) {
  ta_bin_lock_held = &bin->lock;
  ta_lock(&a->lock);
  ta_span_t *sp = ta_span_alloc(a, ta_class_slices[cls], TA_SPAN_SLAB);
  ta_unlock(&a->lock);
  ta_bin_lock_held = NULL;
  if (!sp) return NULL;
  uint16_t d0 = sp->dirty;
  ta_slab_init(sp, cls, d);
  ta_relaxed_store(&bin->dirty, ta_relaxed_load(&bin->dirty) + d0);
  dirty_moved(bin, d0, sp->dirty);
  return sp;
}

/* A slab on the bin's lists (used < reserved, so it has a free block) gave
 * none: its free bitmap or counts were overwritten. One line, where the
 * refill would otherwise take from it for ever with the bin lock held. */
static __attribute__((noreturn, cold, noinline)) void refill_corrupt(ta_bin_t *bin, ta_span_t *sp) {
  ta_unlock(&bin->lock);
  ta_error("malloc: heap corruption (a slab's free bitmap lost its free blocks) in the slab at", sp->start);
}

size_t ta_arena_refill(ta_arena_t *a, size_t cls, ta_block_t **first, size_t want) {
  ta_bin_t *bin = &a->bins[cls];
  size_t got = 0;
  ta_pagedelta_t d = {0};
  refill_lock(a, bin);
  /* From the transfer cache first: a whole batch in O(1) (batches are what
   * thread caches flush, and they ask as much); short batches (a bin halved
   * to give budget to another) are joined until `want`. Still counted as
   * handed out in the slabs. */
  uint64_t now = ta_prim_clock_ms();
  if (bin->nxfer) {
    while (got < want && bin->nxfer) got += xfer_take(a, bin, cls, first, want - got, now);
  }
  size_t reused = got;
  while (got < want) {
    ta_span_t *sp = bin->bucket_mask ? bin->buckets[31 - __builtin_clz(bin->bucket_mask)] /* fullest */
                                     : slab_new(a, bin, cls, &d);
    if (!sp) break;
    uint16_t d0 = sp->dirty;
    size_t took = ta_slab_take(sp, first, want - got, &d);
    if (ta_unlikely(!took)) refill_corrupt(bin, sp);
    got += took;
    sp->freed_ms = now; /* in use: its free pages are what the next refill takes */
    dirty_moved(bin, d0, sp->dirty);
    rebucket(bin, sp);
  }
  ta_relaxed_add(&a->activity, 1);
  if (got) {
    ta_relaxed_add(&bin->used_bytes, (got - reused) * ta_class_size(cls));
    ta_relaxed_add(&bin->allocs, got);
  }
  ta_unlock(&bin->lock);
  ta_pagedelta_apply(a, &d);
  return got;
}

/* A put into a slab failed (bin lock held): one line, and the process ends. */
static __attribute__((noreturn, cold)) void put_failed(ta_bin_t *bin, ta_put_t put, void *p) {
  ta_unlock(&bin->lock);
  ta_error(put == TA_PUT_FREE    ? "free: double free"
           : put == TA_PUT_NEVER ? "free: invalid pointer (never allocated)"
                                 : "free: invalid pointer",
           p);
}

/* Puts one block back in its slab's bitmap (bin lock held). The slab's
 * bucket and the bin's dirty count are brought up to date by slab_settle. */
static inline void put_block(ta_bin_t *bin, ta_span_t *sp, void *p, size_t cls, ta_pagedelta_t *d) {
  ta_put_t put = sp->kind == TA_SPAN_SLAB && sp->cls == cls ? ta_slab_put(sp, p, d) : TA_PUT_NOT_BLOCK;
  if (ta_unlikely(put != TA_PUT_OK)) put_failed(bin, put, p);
}

/* A slab whose blocks changed (bin lock held): its bucket, or, emptied, back
 * to the page heap at once (its pages stay resident until purged). */
static void slab_place(ta_arena_t *a, ta_bin_t *bin, ta_span_t *sp, ta_pagedelta_t *d) {
  if (sp->used) {
    rebucket(bin, sp);
    return;
  }
  if (sp->bucket != TA_BUCKET_NONE) bucket_remove(bin, sp);
  ta_relaxed_store(&bin->dirty, ta_relaxed_load(&bin->dirty) - sp->dirty); /* the span's from now on */
  ta_slab_clear(sp, d);
  ta_pagedelta_apply(a, d); /* the page heap's counts are the arena's */
  ta_bin_lock_held = &bin->lock;
  ta_lock(&a->lock);
  ta_span_free(a, sp);
  ta_unlock(&a->lock);
  ta_bin_lock_held = NULL;
}

/* After blocks went back to slab sp (bin lock held; d0: its dirty count
 * before). A slab being purged stays off the lists: the purge places it
 * when its madvise calls are done (ta_arena_purge). */
static void slab_settle(ta_arena_t *a, ta_bin_t *bin, ta_span_t *sp, uint16_t d0, uint64_t now, ta_pagedelta_t *d) {
  dirty_moved(bin, d0, sp->dirty);
  sp->freed_ms = now;
  if (ta_unlikely(sp->purging)) return;
  slab_place(a, bin, sp, d);
}

/* Each block of a list back to its own slab: one lock per run of blocks of
 * one arena, the slab's bucket once per run of blocks of one slab (a list
 * flushed from a thread cache is mostly such runs), the bin's counters once. */
static void flush_to_slabs(ta_block_t *b, size_t cls) {
  ta_arena_t *a = NULL;
  ta_bin_t *bin = NULL;
  ta_span_t *cur = NULL;
  uint16_t d0 = 0;
  uint64_t now = ta_prim_clock_ms(), bsize = ta_class_size(cls);
  size_t n = 0;
  ta_pagedelta_t d = {0};
  while (b) {
    ta_span_t *sp = ta_span_of(ta_segment_of(b), b);
    if (sp != cur) {
      if (cur) slab_settle(a, bin, cur, d0, now, &d);
      ta_arena_t *ba = sp->arena; /* fixed while the slab holds this live block */
      if (ba != a) {
        if (bin) {
          ta_relaxed_sub(&bin->used_bytes, n * bsize);
          ta_unlock(&bin->lock);
          ta_pagedelta_apply(a, &d);
        }
        if (ta_unlikely(!ba)) ta_error("free: invalid pointer", b);
        a = ba;
        bin = &a->bins[cls];
        n = 0;
        ta_relaxed_add(&a->activity, 1);
        ta_lock(&bin->lock);
      }
      cur = sp;
      d0 = sp->dirty;
    }
    /* the run of blocks of this slab that starts at b */
    ta_put_t put = sp->kind == TA_SPAN_SLAB && sp->cls == cls ? ta_slab_put_run(sp, &b, &n, &d) : TA_PUT_NOT_BLOCK;
    if (ta_unlikely(put != TA_PUT_OK)) put_failed(bin, put, b);
  }
  if (bin) {
    slab_settle(a, bin, cur, d0, now, &d);
    ta_relaxed_sub(&bin->used_bytes, n * bsize);
    ta_unlock(&bin->lock);
    ta_pagedelta_apply(a, &d);
  }
}

/* ---- transfer caches ---- */
/* Room for one more batch (bin lock held): the stack doubles into a mapping
 * of its own (metadata; the old one is unmapped). False without memory. */
static bool xfer_room(ta_bin_t *bin) {
  if (ta_likely(bin->nxfer < bin->xcap)) return true;
  size_t ps = ta_prim_page_size(), old = (size_t)bin->xcap * sizeof(ta_xfer_t);
  size_t bytes = (2 * old + ps - 1) & ~(ps - 1);
  void *p;
  if (ta_prim_map(bytes, ps, &p) != 0) return false;
  memcpy(p, bin->xfer, bin->nxfer * sizeof(ta_xfer_t));
  if (bin->xfer != bin->xfer_inline) {
    ta_prim_unmap(bin->xfer, old);
    ta_relaxed_sub(&ta_meta_bytes, old);
  }
  ta_relaxed_add(&ta_meta_bytes, bytes);
  bin->xfer = p;
  bin->xcap = (uint32_t)(bytes / sizeof(ta_xfer_t));
  return true;
}

void ta_arena_flush(ta_block_t *first, size_t count, size_t cls, bool batch) {
  if (batch && first) {
    /* With one arena every block is this arena's; with more, a batch goes to
     * the transfer cache of its first block's arena (blocks of another arena
     * in it go back to their own slabs when it is drained). */
    ta_arena_t *a = ta_span_of(ta_segment_of(first), first)->arena;
    ta_bin_t *bin = &a->bins[cls];
    ta_lock(&bin->lock);
    size_t bytes = count * ta_class_size(cls);
    if ((ta_relaxed_load(&bin->xfer_count) + count) * ta_class_size(cls) <= TA_XFER_BYTES &&
        ta_relaxed_load(&a->xfer_bytes) + (int64_t)bytes <= (int64_t)TA_XFER_ARENA_BYTES && xfer_room(bin)) {
      bin->xfer[bin->nxfer].head = first;
      bin->xfer[bin->nxfer].count = (uint32_t)count;
      bin->nxfer++;
      ta_relaxed_store(&bin->xfer_count, ta_relaxed_load(&bin->xfer_count) + (uint32_t)count);
      bin->xfer_ms = ta_prim_clock_ms();
      ta_unlock(&bin->lock);
      ta_relaxed_add(&a->xfer_bytes, (int64_t)bytes);
      ta_relaxed_add(&a->activity, 1);
      return;
    }
    ta_unlock(&bin->lock);
  }
  flush_to_slabs(first, cls);
}

/* Takes up to `want` blocks from the bin's newest batch (bin lock held): the
 * whole batch in O(1) when it fits and the caller has nothing yet. */
static size_t xfer_take(ta_arena_t *a, ta_bin_t *bin, size_t cls, ta_block_t **first, size_t want, uint64_t now) {
  ta_xfer_t *x = &bin->xfer[bin->nxfer - 1];
  size_t n = x->count <= want ? x->count : want;
  ta_block_t *head = x->head;
  if (n == x->count && !*first) {
    bin->nxfer--;
  } else {
    ta_block_t *last = head;
    for (size_t i = 1; i < n; i++) last = ta_link_get(last);
    if (n == x->count) bin->nxfer--;
    else {
      x->head = ta_link_get(last);
      x->count -= (uint32_t)n;
    }
    ta_link_set(last, *first); /* the batch goes in front of what the caller has */
  }
  *first = head;
  bin->xfer_ms = now;
  ta_relaxed_store(&bin->xfer_count, ta_relaxed_load(&bin->xfer_count) - (uint32_t)n);
  ta_relaxed_sub(&a->xfer_bytes, (int64_t)(n * ta_class_size(cls)));
  return n;
}

/* Batches detached from a transfer cache and not yet back in their slabs are
 * in no structure a fork child could find: drain_lock is held from the
 * detach to the last block put back, and the pre-fork handler takes it first
 * (lock order: drain_lock, then bin and arena locks). */
static ta_lock_t drain_lock = PTHREAD_MUTEX_INITIALIZER;

/* Empties a bin's transfer cache into the slabs: all, or if nothing was put
 * in or taken out for `delay` ms. The batches are detached under the bin lock
 * in chunks and put back outside it, so a refill never waits for a drain. */
static void xfer_drain(ta_bin_t *bin, size_t cls, ta_arena_t *a, uint64_t now, uint64_t delay, bool all) {
  enum { CHUNK = 16 };
  ta_xfer_t batches[CHUNK];
  for (;;) {
    size_t n = 0, blocks = 0;
    ta_lock(&drain_lock);
    ta_lock(&bin->lock);
    if (bin->nxfer && (all || bin->xfer_ms + delay <= now)) {
      n = bin->nxfer < CHUNK ? bin->nxfer : CHUNK;
      bin->nxfer -= (uint32_t)n; /* the newest, which a refill would take next, go first */
      memcpy(batches, bin->xfer + bin->nxfer, n * sizeof batches[0]);
      for (size_t i = 0; i < n; i++) blocks += batches[i].count;
      ta_relaxed_store(&bin->xfer_count, ta_relaxed_load(&bin->xfer_count) - (uint32_t)blocks);
    }
    ta_unlock(&bin->lock);
    if (n) {
      ta_relaxed_sub(&a->xfer_bytes, (int64_t)(blocks * ta_class_size(cls)));
      for (size_t i = 0; i < n; i++) flush_to_slabs(batches[i].head, cls);
    }
    ta_unlock(&drain_lock);
    if (!n) return;
  }
}

int64_t ta_arenas_xfer_bytes(void) {
  int64_t b = 0;
  uint32_t n = ta_relaxed_load(&ta_arenas_used);
  for (uint32_t i = 0; i < n; i++) b += ta_relaxed_load(&ta_arenas[i].xfer_bytes);
  return b;
}

void *ta_arena_alloc1(size_t cls) {
  ta_block_t *b = NULL;
  if (!ta_arena_refill(ta_arena_pick(), cls, &b, 1)) {
    errno = ENOMEM;
    return NULL;
  }
  b->key = 0;
  return b;
}

/* The heap profiler marks (+1) or unmarks (-1) a slab holding a sampled
 * block, under the slab's bin lock (ta_slab_take sets the same bound). */
void ta_arena_prof_mark(ta_span_t *sp, void *p, int delta) {
  ta_bin_t *bin = &sp->arena->bins[sp->cls];
  ta_lock(&bin->lock);
  ta_slab_prof_mark(sp, p, delta);
  ta_unlock(&bin->lock);
}

void ta_arena_free1(ta_span_t *sp, void *p) {
  ta_arena_t *a = sp->arena;
  if (ta_unlikely(!a || sp->cls >= TA_CLASSES)) ta_error("free: invalid pointer", p);
  size_t cls = sp->cls;
  ta_bin_t *bin = &a->bins[cls];
  ta_pagedelta_t d = {0};
  ta_relaxed_add(&a->activity, 1);
  ta_lock(&bin->lock);
  uint16_t d0 = sp->dirty;
  put_block(bin, sp, p, cls, &d);
  ((ta_block_t *)p)->key = ta_cookie; /* free in its slab: the fast path sees a second free */
  slab_settle(a, bin, sp, d0, ta_prim_clock_ms(), &d);
  ta_relaxed_sub(&bin->used_bytes, ta_class_size(cls));
  ta_unlock(&bin->lock);
  ta_pagedelta_apply(a, &d);
}

/* Free OS pages inside slabs first, then free spans (see internal.h). */
/* The arena's delay, and whether everything free goes now (see internal.h). */
static uint64_t purge_rule(ta_arena_t *a, uint64_t now, bool *all, uint64_t idle_since) {
  ta_lock(&a->lock);
  uint64_t delay = ta_delay_get(&a->delay, now, true);
  ta_unlock(&a->lock);
  if (!*all && idle_since && now - idle_since >= (delay < TA_IDLE_MS ? delay : TA_IDLE_MS)) *all = true;
  return delay;
}

/* Batches nobody took for the delay go back to their slabs, which may be
 * another arena's: so every arena drains before any purges (purge.c). */
void ta_arena_drain(ta_arena_t *a, uint64_t now, bool all, uint64_t idle_since) {
  if (!atomic_load_explicit(&a->ready, memory_order_acquire) || ta_relaxed_load(&a->xfer_bytes) <= 0) return;
  uint64_t delay = purge_rule(a, now, &all, idle_since);
  for (size_t c = 0; c < TA_CLASSES; c++)
    if (ta_relaxed_load(&a->bins[c].xfer_count)) xfer_drain(&a->bins[c], c, a, now, delay, all);
}

/* A purge's madvise calls run without the bin lock: a refill must not hand
 * out a block on a page being purged (its contents would be zeroed under the
 * program), so the slabs to purge are taken off their bucket lists and
 * marked purging under the lock, a chunk at a time (ta_slab_purge_begin
 * plans their runs of free pages: those pages hold no block in use, and no
 * refill can reach them now), purged with no lock held, and placed back
 * under the lock (a free meanwhile only sets bits and counts; one that
 * empties the slab leaves it to the purge: slab_settle). Before (issue 17,
 * item 8), a trim of 48 MiB of 64-byte blocks with 3 OS pages in 4 free
 * (4,096 madvise calls in one bin) held that bin's lock for the whole purge,
 * 210-227 ms of CPU and 0.8-0.9 s of wall time on the shared 2-CPU VM, and
 * a thread doing malloc/free of that class waited as long (test_trim's
 * test_trim_leaves_bin_free).
 *
 * purge_lock is held from a chunk's first slab taken off its list to its
 * last placed back: the fork handlers and the invariant checker take it
 * first, so neither sees a slab on no list (lock order: purge_lock, then
 * bin and arena locks). A routine purge that finds it taken (a trim, or
 * another thread's purge) leaves the slabs to that one. Each pass stamps
 * the slabs it took (purge_pass), so a slab dirtied again meanwhile is not
 * taken twice in one pass. Free spans go the same way under the arena lock
 * (span.c). */
static ta_lock_t purge_lock = PTHREAD_MUTEX_INITIALIZER;
static _Atomic uint32_t purge_passes;

enum { PURGE_SLABS = 32, PURGE_RUNS = 1024 };

/* One chunk of a bin's purge; more: slabs were left for the next chunk. */
static size_t bin_purge_chunk(ta_arena_t *a, ta_bin_t *bin, uint64_t now, uint64_t delay, bool all, uint32_t pass,
                              bool *more) {
  ta_span_t *slabs[PURGE_SLABS];
  size_t nruns[PURGE_SLABS], ns = 0, nr = 0, bytes = 0;
  ta_pagerun_t runs[PURGE_RUNS];
  *more = false;
  ta_lock(&bin->lock);
  for (unsigned k = 0; k < TA_FULLNESS && !*more; k++)
    for (ta_span_t *sp = bin->buckets[k], *next; sp; sp = next) {
      next = sp->next;
      /* a slab's free pages split its huge page: only when all must go */
      if (!sp->dirty || sp->purge_pass == pass || !(all || (sp->freed_ms + delay <= now && !ta_segment_of(sp)->thp)))
        continue;
      if (ns == PURGE_SLABS || nr + ta_span_pages(sp) / 2 + 1 > PURGE_RUNS) {
        *more = true;
        break;
      }
      sp->purge_pass = pass;
      bucket_remove(bin, sp);
      nruns[ns] = ta_slab_purge_begin(sp, runs + nr, PURGE_RUNS - nr);
      nr += nruns[ns];
      slabs[ns++] = sp;
    }
  ta_unlock(&bin->lock);
  if (!ns) return 0;
  for (size_t i = 0, r = 0; i < ns; r += nruns[i++]) ta_pages_purge_runs(ta_segment_of(slabs[i]), runs + r, nruns[i]);
  ta_pagedelta_t d = {0};
  ta_lock(&bin->lock);
  for (size_t i = 0, r = 0; i < ns; r += nruns[i++]) {
    uint16_t d0 = slabs[i]->dirty;
    bytes += ta_slab_purge_end(slabs[i], runs + r, nruns[i]);
    dirty_moved(bin, d0, slabs[i]->dirty);
    slab_place(a, bin, slabs[i], &d);
  }
  ta_unlock(&bin->lock);
  ta_pagedelta_apply(a, &d);
  return bytes;
}

/* purge_lock for one chunk: a routine purge (wait false) does not wait for
 * another's chunk, as it may run on a thread's slow path (purge.c). */
static bool purge_lock_take(bool wait) {
  if (wait) {
    ta_lock(&purge_lock);
    return true;
  }
  return pthread_mutex_trylock(&purge_lock) == 0;
}

size_t ta_arena_purge(ta_arena_t *a, uint64_t now, bool all, uint64_t idle_since) {
  if (!atomic_load_explicit(&a->ready, memory_order_acquire) ||
      (ta_relaxed_load(&a->dirty_pages) <= 0 && ta_relaxed_load(&a->empty_segments) <= 0))
    return 0;
  bool timed = !all; /* a release the hysteresis learns from; a routine purge leaves a busy lock */
  uint64_t delay = purge_rule(a, now, &all, idle_since);
  uint32_t pass = atomic_fetch_add_explicit(&purge_passes, 1, memory_order_relaxed) + 1;
  if (!pass) pass = atomic_fetch_add_explicit(&purge_passes, 1, memory_order_relaxed) + 1; /* 0: never taken */
  size_t bytes = 0;
  bool busy = false, more;
  for (size_t c = 0; c < TA_CLASSES && !busy; c++) {
    ta_bin_t *bin = &a->bins[c];
    for (more = true; more && ta_relaxed_load(&bin->dirty);) {
      if (!purge_lock_take(!timed)) {
        busy = true;
        break;
      }
      bytes += bin_purge_chunk(a, bin, now, delay, all, pass, &more);
      ta_unlock(&purge_lock);
    }
  }
  for (more = true; more && !busy;) {
    if (!purge_lock_take(!timed)) {
      busy = true;
      break;
    }
    bytes += ta_spans_purge_chunk(a, now, delay, all, all, pass, &more);
    ta_unlock(&purge_lock);
  }
  /* Empty segments wait unmap_delay_ms in an idle arena too (all from
   * purge_rule): an idle process that allocates again within the delay
   * reuses them instead of mapping them again (v2 unmapped them at once,
   * and test_fork's child mapped again 32 MiB its parent had just
   * unmapped). The purger counts them as work until then (purge.c). An
   * explicit trim unmaps them at once. */
  if (!busy && purge_lock_take(!timed)) {
    bytes += ta_segments_unmap(a, now, !timed);
    ta_unlock(&purge_lock);
  }
  if (bytes && timed) {
    ta_lock(&a->lock);
    ta_delay_released(&a->delay, now);
    ta_unlock(&a->lock);
  }
  return bytes;
}

/* ---- fork: every lock taken before, released (parent) or reset (child) ---- */
void ta_arenas_fork_prepare(void) {
  ta_lock(&drain_lock); /* no batch in flight between a transfer cache and its slabs */
  ta_lock(&purge_lock); /* no slab off its list for a purge */
  ta_lock(&arenas_lock);
  for (size_t i = 0; i < TA_ARENAS_MAX; i++) {
    ta_arena_t *a = &ta_arenas[i];
    if (!ta_relaxed_load(&a->ready)) continue;
    for (size_t c = 0; c < TA_CLASSES; c++) ta_lock(&a->bins[c].lock);
    ta_lock(&a->lock);
  }
}

void ta_arenas_fork_parent(void) {
  for (size_t i = TA_ARENAS_MAX; i-- > 0;) {
    ta_arena_t *a = &ta_arenas[i];
    if (!ta_relaxed_load(&a->ready)) continue;
    ta_unlock(&a->lock);
    for (size_t c = TA_CLASSES; c-- > 0;) ta_unlock(&a->bins[c].lock);
  }
  ta_unlock(&arenas_lock);
  ta_unlock(&purge_lock);
  ta_unlock(&drain_lock);
}

/* The forking thread holds every lock in the child too: it releases them. */
void ta_arenas_fork_child(void) {
  ta_arenas_fork_parent();
}

/* Invariants of an arena (types.h), each bin under its lock, then the page
 * heap and the segments under the arena lock. */
bool ta_arena_is_valid(ta_arena_t *a) {
  if (!atomic_load_explicit(&a->ready, memory_order_acquire)) return true;
  bool ok = true;
  ta_lock(&purge_lock); /* no slab off its list for a purge */
  for (size_t c = 0; c < TA_CLASSES && ok; c++) {
    ta_bin_t *bin = &a->bins[c];
    ta_lock(&bin->lock);
    uint32_t dirty = 0;
    for (unsigned k = 0; k < TA_FULLNESS && ok; k++) {
      if (((bin->bucket_mask >> k) & 1) != (bin->buckets[k] != NULL)) ok = false;
      for (ta_span_t *sp = bin->buckets[k]; sp && ok; sp = sp->next) {
        ok = sp->cls == c && sp->bucket == k && bucket_of(sp) == k && sp->arena == a && ta_slab_is_valid(sp) &&
             (!sp->next || sp->next->prev == sp);
        dirty += sp->dirty;
      }
    }
    if (ok && dirty != ta_relaxed_load(&bin->dirty)) ok = false; /* full slabs hold no dirty page */
    uint32_t xc = 0;
    for (uint32_t k = 0; k < bin->nxfer && ok; k++) {
      ta_block_t *b = bin->xfer[k].head;
      for (uint32_t i = 0; i < bin->xfer[k].count && ok; i++, b = ta_link_get(b)) {
        ok = b && b->key == ta_cookie && ta_segmap_contains(ta_segment_of(b));
        ta_span_t *sp = ok ? ta_span_of(ta_segment_of(b), b) : NULL;
        ok = ok && sp->kind == TA_SPAN_SLAB && sp->cls == c && ta_is_block_start(sp, b);
      }
      ok = ok && b == NULL; /* the list ends where its count says */
      xc += bin->xfer[k].count;
    }
    if (ok && (xc != ta_relaxed_load(&bin->xfer_count) || bin->nxfer > bin->xcap ||
                (bin->xcap > TA_XFER_INLINE) == (bin->xfer == bin->xfer_inline)))
      ok = false;
    ta_unlock(&bin->lock);
  }
  ta_lock(&a->lock);
  for (size_t n = 1; n < TA_SLICES && ok; n++) {
    if (((a->span_mask >> n) & 1) != (a->spans[n] != NULL)) ok = false;
    for (ta_span_t *sp = a->spans[n]; sp && ok; sp = sp->next)
      ok = sp->kind == TA_SPAN_FREE && sp->slices == n && sp->arena == a;
  }
  for (ta_segment_t *s = a->segments; s && ok; s = s->next) ok = s->arena == a && ta_segment_is_valid(s);
  ta_unlock(&a->lock);
  ta_unlock(&purge_lock);
  return ok;
}
