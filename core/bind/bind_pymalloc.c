/* pymalloc's empty and sparse pools, given back by every trim (Python's;
 * the Ruby gem carries it unused, as the Python package does bind_gc_hook.c).
 *
 * With pymalloc (Python's default small-object allocator) the objects of
 * 512 B and less live in 16 KiB pools inside 1 MiB arenas that pymalloc maps
 * itself. pymalloc returns an arena only when every pool in it is empty, so
 * one surviving object keeps its arena's empty pools resident for good: a
 * Python worker whose tasks build and drop tens of MiB of small objects idles
 * tens of MiB above the same worker under PYTHONMALLOC=malloc (README, "Why
 * pymalloc by default").
 *
 * This file installs an arena allocator (PyObject_SetArenaAllocator) that maps
 * arenas as pymalloc's own does (mmap, zero-filled) and remembers them. Every
 * trim (ta_bind_set_host: a Python thread's before it lets go of the GIL, the
 * policy thread's deferred and idle trims after taking it) walks each arena's
 * pools with the GIL held: a pool that was used and holds no block now (its
 * header's ref.count is 0) gives back every OS page after its first with
 * MADV_DONTNEED. Its header, on the first page, stays: pymalloc links the
 * arena's free pools through it. The header's size class is set to
 * pymalloc's DUMMY_SIZE_IDX, so that the pool's next use rebuilds its free
 * list instead of following links that were on the pages given back. A pool
 * with few live blocks gives back its pages that hold none (sparse_pool):
 * one whose header has not changed since it was weighed is not weighed
 * again, and a hook's trim weighs at most TRIM_BUDGET of those that changed
 * (trimalloc.trim() every one). The policy's free-bytes figure counts the
 * same pages, so the refault budget prices them.
 *
 * What it reads of pymalloc: the pool header (struct pool_header in
 * Objects/obmalloc.c, the same from 2.x to 3.13) and the pool size that goes
 * with the arena size pymalloc asks for (1 MiB arenas: 16 KiB pools, 3.10+ on
 * 64 bits; 256 KiB: 4 KiB, one page, nothing to give back). Pools are aligned
 * to their size inside the arena. It runs only on the CPython minor versions
 * it knows (3.8 to 3.13, with the GIL); on any other, trims leave pymalloc
 * alone. Arenas mapped before `import trimalloc` are not known to it (they
 * are freed through the allocator that mapped them); the interpreter's own
 * startup objects fill those. Only the arenas of the interpreter that imported
 * trimalloc are walked: 3.12's subinterpreters with a GIL of their own have
 * pymalloc states of their own, which that GIL guards.
 *
 * The interpreter's side comes from the binding (ta_bind_pymalloc_host_t,
 * filled by ext-python/trimalloc/_pools.c): the version string, the arena
 * allocator's get and set, the thread state and its interpreter, and the
 * GIL for the policy's thread. test/core/test_bind_pymalloc.c drives the
 * walk with a host of its own, on arenas with headers it writes. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* mincore, MADV_DONTNEED, MAP_ANONYMOUS under -std=c11 */
#endif
#include "binding.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef ta_bind_arena_allocator_t arena_allocator_t;

/* Objects/obmalloc.c's struct pool_header. */
typedef struct {
  union {
    void *padding;
    unsigned count; /* blocks in use */
  } ref;
  void *freeblock, *nextpool, *prevpool;
  unsigned arenaindex, szidx, nextoffset, maxnextoffset;
} pool_header_t;
#define DUMMY_SIZE_IDX 0xffff

#define MAX_ARENAS 16384 /* 16 GiB of 1 MiB arenas; past that, arenas are not tracked */
#define ARENA_POOLS 64   /* pools of a 1 MiB arena (16 KiB each) */
/* Sparse pools a walk weighs, at most, when a hook or the policy asks:
 * weighing one follows its free list (up to 2,000 blocks), 2-3 us with the
 * GIL held; 205 arenas of sparse pools took 16-26 ms to weigh
 * (bench/results-2026-12-07-session26.txt). Such a walk starts where the
 * last one ran out. trimalloc.trim() and _pymalloc_pools() weigh them all. */
#define READ_BUDGET TA_BIND_PYMALLOC_READ_BUDGET /* 512: the policy's free-bytes figure */
#define TRIM_BUDGET TA_BIND_PYMALLOC_TRIM_BUDGET /* 2048: a hook's or the policy thread's trim */
#define ALL INT_MAX

/* What the last weighing of a sparse pool found (sparse_pool), and the
 * header it found: while the header is the same (free list head, blocks in
 * use, blocks carved, size class), so are the free list and the pages it
 * leaves, so the pool is not weighed again. pymalloc changes the head or the
 * count with every block it hands out or takes back. */
typedef struct {
  void *freeblock;
  uint32_t count, nextoffset, szidx;
  uint32_t bytes; /* what a trim would give back of it; valid != 0 */
  uint8_t valid;
} pool_memo_t;

static struct {
  pthread_mutex_t mu;     /* the table (arenas come and go under the GIL; with
                           * 3.12's per-interpreter GILs, under several) */
  arena_allocator_t prev; /* maps and frees the arenas that are not in the table */
  struct {
    void *at;     /* NULL: a free slot */
    size_t size;  /* the arena size, or another: the allocator also maps
                   * the interpreter's frame stacks (_PyObject_VirtualAlloc) */
    void *interp; /* the interpreter whose thread asked for it */
  } arena[MAX_ARENAS];
  size_t n;          /* slots in use up to n */
  size_t size, pool; /* pymalloc's arena and pool sizes on this interpreter */
  size_t page;
  unsigned page_shift;
  void *interp;                            /* the interpreter that imported trimalloc: trims walk its arenas
                                            * only (PyGILState_Ensure takes its GIL) */
  ta_bind_pymalloc_host_t host;            /* the interpreter's side: its thread state, its GIL */
  _Atomic int on;                          /* trims walk the pools */
  uint64_t trims, pools, sparse, released; /* counters, under mu */
  pool_memo_t (*memo)[ARENA_POOLS];        /* per table slot (a mapping of its own, touched as used) */
  size_t cursor;                           /* the slot whose sparse pools are weighed first next time */
} st = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The interpreter of this thread's thread state (NULL: none, or 3.8). */
static void *current_interp(void) {
  void *ts = st.host.tstate ? st.host.tstate() : NULL;
  return ts && st.host.tstate_interp ? st.host.tstate_interp(ts) : NULL;
}

static void *arena_alloc(void *ctx, size_t size) {
  (void)ctx;
  pthread_mutex_lock(&st.mu);
  size_t i = 0;
  while (i < st.n && st.arena[i].at) i++;
  void *p = NULL;
  if (i < MAX_ARENAS) {
    p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0); /* zero-filled */
    if (p == MAP_FAILED) p = NULL;
    if (p) {
      st.arena[i].at = p;
      st.arena[i].size = size;
      st.arena[i].interp = current_interp();
      memset(st.memo[i], 0, sizeof st.memo[i]);
      if (i == st.n) st.n++;
    }
  }
  pthread_mutex_unlock(&st.mu);
  if (i >= MAX_ARENAS) return st.prev.alloc(st.prev.ctx, size); /* the table is full */
  return p;
}

static void arena_free(void *ctx, void *p, size_t size) {
  (void)ctx;
  pthread_mutex_lock(&st.mu);
  size_t i = 0;
  while (i < st.n && st.arena[i].at != p) i++;
  int ours = i < st.n;
  if (ours) {
    st.arena[i].at = NULL;
    while (st.n && !st.arena[st.n - 1].at) st.n--;
  }
  pthread_mutex_unlock(&st.mu);
  if (ours)
    munmap(p, size);
  else
    st.prev.free(st.prev.ctx, p, size); /* mapped before the install, or past the table */
}

/* pymalloc's POOL_OVERHEAD: the header rounded up to its block alignment. */
#define POOL_OVERHEAD ((sizeof(pool_header_t) + 2 * sizeof(void *) - 1) & ~(2 * sizeof(void *) - 1))
#define MAX_BLOCKS (16384 / 16) /* a 16 KiB pool's blocks at pymalloc's smallest size */

/* Are bits [lo, hi) of bits all set? */
static int all_set(const uint8_t *bits, size_t lo, size_t hi) {
  for (; lo < hi && lo % 8; lo++)
    if (!(bits[lo / 8] & (1u << (lo % 8)))) return 0;
  for (; lo + 8 <= hi; lo += 8)
    if (bits[lo / 8] != 0xff) return 0;
  for (; lo < hi; lo++)
    if (!(bits[lo / 8] & (1u << (lo % 8)))) return 0;
  return 1;
}

/* The lowest set bit of bits [lo, hi), or hi. */
static size_t first_set(const uint8_t *bits, size_t lo, size_t hi) {
  for (; lo < hi; lo++) {
    if (lo % 8 == 0 && !bits[lo / 8]) {
      lo += 7;
      continue;
    }
    if (bits[lo / 8] & (1u << (lo % 8))) return lo;
  }
  return hi;
}

/* Does block i lie on a page of give (bit j: page j, its blocks [lo[j], hi[j]))? */
static int on_given(uint32_t give, const size_t *lo, const size_t *hi, size_t per, size_t i) {
  for (size_t j = 1; j < per; j++)
    if ((give >> j & 1) && lo[j] <= i && i < hi[j]) return 1;
  return 0;
}

/* A used pool h (ps bytes; its pages' residency in vec[0..per)) with few
 * live blocks: every page after the first that holds no live block is given
 * back, and the free blocks on it leave the pool's free list (pymalloc keeps
 * its free list in the free blocks). They are lost to the pool until it is
 * empty and a trim starts it afresh (the empty case in arena_pools); the
 * pool's unused blocks (past nextoffset) stay what they are, pymalloc writes
 * each before it reads it. A pool on pymalloc's list of pools with a free
 * block (freeblock not NULL) keeps at least one: pymalloc takes that list's
 * head pool's first block without a check. The free list is walked and
 * checked against the header (inside the pool, on a block's start, no block
 * twice, ref.count blocks left live) before anything is written: a pool that
 * does not add up is left as it is. Bytes given back (or, !release, that
 * would be). No division per block: a block's index comes from a multiply
 * (exact for offsets under 2^23), and pages are weighed as block ranges. */
static uint64_t weigh_pool(pool_header_t *h, size_t ps, const unsigned char *vec, size_t per, int release) {
  size_t size = ps - h->maxnextoffset, carved_end = h->nextoffset;
  size_t carved = (carved_end - POOL_OVERHEAD) / size; /* blocks handed out at least once */
  uint64_t inv = ((1ull << 32) + size - 1) / size;   /* (n * inv) >> 32 == n / size */
  uint8_t freebits[MAX_BLOCKS / 8] = {0};
  size_t nfree = 0;
  for (uint8_t *b = h->freeblock; b; b = *(uint8_t **)b) {
    size_t off = (size_t)(b - (uint8_t *)h);
    if (b < (uint8_t *)h || off < POOL_OVERHEAD || off >= carved_end) return 0;
    size_t i = (size_t)(((off - POOL_OVERHEAD) * inv) >> 32);
    if (i * size != off - POOL_OVERHEAD) return 0; /* not a block's start */
    if (freebits[i / 8] & (1u << (i % 8)) || ++nfree > carved) return 0;
    freebits[i / 8] |= (uint8_t)(1u << (i % 8));
  }
  if (carved - nfree != h->ref.count) return 0; /* not the layout this file knows */
  /* the carved blocks on page j: [lo[j], hi[j]) */
  size_t lo[32], hi[32];
  for (size_t j = 0; j < per; j++) {
    size_t a = j << st.page_shift, e = (j + 1) << st.page_shift;
    lo[j] = a <= POOL_OVERHEAD ? 0 : (size_t)(((a - POOL_OVERHEAD) * inv) >> 32);
    hi[j] = e <= POOL_OVERHEAD ? 0 : (size_t)((((e - POOL_OVERHEAD) + size - 1) * inv) >> 32);
    if (hi[j] > carved) hi[j] = carved;
    if (lo[j] > hi[j]) lo[j] = hi[j];
  }
  /* the pages to give back: resident, after the first, every carved block on them free */
  uint32_t give = 0; /* bit j: page j */
  for (size_t j = 1; j < per; j++)
    if ((vec[j] & 1) && all_set(freebits, lo[j], hi[j])) give |= 1u << j;
  /* a pool with a free block keeps one (a free block on no page given back):
   * else the lowest one's pages stay */
  size_t lowest = first_set(freebits, 0, carved), i = lowest;
  while (give && i < carved && on_given(give, lo, hi, per, i)) i = first_set(freebits, i + 1, carved);
  if (give && lowest < carved && i >= carved)
    for (size_t j = 1; j < per; j++)
      if (lo[j] <= lowest && lowest < hi[j]) give &= ~(1u << j);
  if (!give) return 0;
  uint64_t bytes = (uint64_t)__builtin_popcount(give) << st.page_shift;
  if (!release) return bytes;
  /* the free list again: the free blocks that stay, in address order */
  uint8_t *head = NULL, **link = &head;
  for (i = lowest; i < carved; i = first_set(freebits, i + 1, carved)) {
    if (on_given(give, lo, hi, per, i)) continue;
    uint8_t *b = (uint8_t *)h + POOL_OVERHEAD + i * size;
    *link = b;
    link = (uint8_t **)b;
  }
  *link = NULL;
  h->freeblock = head;
  for (size_t j = 1; j < per;) { /* one call a run of pages */
    size_t e = j;
    while (e < per && (give >> e & 1)) e++;
    if (e > j) madvise((uint8_t *)h + (j << st.page_shift), (e - j) << st.page_shift, MADV_DONTNEED);
    j = e + 1;
  }
  return bytes;
}

static int memo_same(const pool_memo_t *m, const pool_header_t *h) {
  return m->valid && m->freeblock == h->freeblock && m->count == h->ref.count &&
         m->nextoffset == h->nextoffset && m->szidx == h->szidx;
}

/* A used pool with few live blocks (at most half its bytes): weigh_pool's
 * answer, or what the memo m says of a pool unchanged since it was weighed
 * (a trim weighs again a pool that had pages to give). *budget counts the
 * weighings: with none left, a changed pool counts 0 this time, and a later
 * walk, which starts where this one ran out, weighs it. */
static uint64_t sparse_pool(pool_header_t *h, size_t ps, const unsigned char *vec, size_t per, int release,
                            pool_memo_t *m, int *budget) {
  if (h->szidx == DUMMY_SIZE_IDX) return 0;
  size_t size = ps - h->maxnextoffset, carved = (h->nextoffset - POOL_OVERHEAD) / size;
  if (carved > MAX_BLOCKS || (size_t)h->ref.count * size > ps / 2) return 0; /* not sparse */
  int same = memo_same(m, h);
  if (same && (!m->bytes || !release)) return m->bytes;
  if (*budget <= 0) return 0; /* weighed by a later walk */
  --*budget;
  uint64_t bytes = weigh_pool(h, ps, vec, per, release);
  *m = (pool_memo_t){h->freeblock, h->ref.count, h->nextoffset, h->szidx, release ? 0 : (uint32_t)bytes, 1};
  return bytes;
}

/* A header pymalloc wrote: a block size of 8..512 that fills the pool from
 * its overhead, blocks carved up to nextoffset, a size class that matches or
 * DUMMY_SIZE_IDX (a pool set aside; its free list is not followed again). */
static int header_ok(const pool_header_t *h, size_t ps) {
  size_t size = ps - h->maxnextoffset;
  if (h->maxnextoffset == 0 || h->maxnextoffset >= ps || size < 8 || size > 512 || size % 8) return 0;
  if (h->nextoffset < POOL_OVERHEAD || h->nextoffset > ps || (h->nextoffset - POOL_OVERHEAD) % size) return 0;
  return h->szidx == DUMMY_SIZE_IDX || (h->szidx + 1) * (size_t)(2 * sizeof(void *)) == size;
}

/* The pools of arena a (st.size bytes) with ps bytes each: the resident
 * pages after the first of every used, empty pool, and those of sparse pools
 * with no live block (sparse_pool), given back when `release`. Their bytes.
 * Holds the GIL and st.mu. */
static uint64_t arena_pools(size_t slot, size_t ps, int release, int *budget) {
  unsigned char vec[(1u << 20) / 4096];
  uint8_t *a = st.arena[slot].at;
  size_t pages = st.size / st.page, per = ps / st.page;
  if (pages > sizeof vec || per > 31 || mincore(a, st.size, vec) != 0) return 0;
  uint64_t released = 0;
  uintptr_t first = ((uintptr_t)a + ps - 1) & ~(uintptr_t)(ps - 1);
  for (uintptr_t p = first; p + ps <= (uintptr_t)a + st.size; p += ps) {
    size_t k = (p - (uintptr_t)a) / st.page, resident = 0, idx = (p - first) / ps;
    if (!(vec[k] & 1) || idx >= ARENA_POOLS) continue; /* never used, or given back whole with its arena */
    pool_header_t *h = (pool_header_t *)p;
    if (!header_ok(h, ps)) continue; /* never carved (all zero), or not a pool header */
    if (h->ref.count != 0) {
      uint64_t b = sparse_pool(h, ps, vec + k, per, release, &st.memo[slot][idx], budget);
      released += b;
      st.sparse += release && b;
      continue;
    }
    for (size_t j = 1; j < per; j++) resident += vec[k + j] & 1;
    if (!resident) continue;
    if (!release) {
      released += (uint64_t)resident * st.page;
      continue;
    }
    h->szidx = DUMMY_SIZE_IDX; /* its next use starts the pool afresh */
    if (madvise((void *)(p + st.page), ps - st.page, MADV_DONTNEED) == 0) {
      released += (uint64_t)resident * st.page;
      st.pools++;
    }
  }
  return released;
}

/* Every arena's pools (arena_pools), weighing at most `budget` sparse pools
 * (ALL: every one) from the slot where the last bounded walk ran out. Holds
 * the GIL. */
static uint64_t all_pools(int release, int budget) {
  uint64_t bytes = 0;
  int bounded = budget != ALL;
  pthread_mutex_lock(&st.mu);
  if (atomic_load(&st.on) && st.n) { /* on again: off at exit while the policy thread waited for the GIL */
    size_t start = st.cursor < st.n ? st.cursor : 0, next = start;
    for (size_t j = 0; j < st.n; j++) {
      size_t i = (start + j) % st.n;
      if (budget > 0) next = i; /* the last slot that had sparse pools weighed this time */
      if (st.arena[i].at && st.arena[i].size == st.size && st.arena[i].interp == st.interp)
        bytes += arena_pools(i, st.pool, release, &budget);
    }
    if (bounded) st.cursor = budget > 0 ? 0 : next;
  }
  if (release) {
    st.trims++;
    st.released += bytes;
  }
  pthread_mutex_unlock(&st.mu);
  return bytes;
}

/* On a thread that holds a GIL: is it the importing interpreter's? */
static int our_interpreter(void) {
  return atomic_load(&st.on) && current_interp() == st.interp;
}

/* A thread of this interpreter inside a job, which released the GIL: the
 * pools it released before (ta_bind_pymalloc_job), for its trim to count. */
static _Thread_local int in_job;
static _Thread_local uint64_t job_released;

void ta_bind_pymalloc_job(int begin, int trims) {
  if (!begin) {
    in_job = 0;
    return;
  }
  in_job = 1;
  job_released = trims && our_interpreter() ? all_pools(1, trims == 2 ? ALL : TRIM_BUDGET) : 0; /* GIL held */
}

/* ta_bind_set_host's functions. On core/bind's policy thread, which holds no
 * GIL, the host's lock (PyGILState_Ensure) takes it once the interpreter is
 * initialized (that thread is no interpreter's: it gets a
 * thread state of the main interpreter); on a thread of this interpreter,
 * the GIL is held (it called into core/bind from Python) unless it is inside
 * a job, which did its pools before it let go of the GIL. Taking the GIL
 * with PyGILState_Ensure on a thread that holds it under another thread
 * state (a subinterpreter's) would wait for itself. */
static uint64_t on_policy_thread(int release, int budget) {
  if (!atomic_load(&st.on)) return 0;
  int g = st.host.lock();
  if (g < 0) return 0; /* not initialized (any more): nothing taken */
  uint64_t bytes = all_pools(release, budget);
  st.host.unlock(g);
  return bytes;
}

static uint64_t release_pools(int policy_thread) {
  if (policy_thread) return on_policy_thread(1, TRIM_BUDGET);
  if (in_job) {
    uint64_t b = job_released;
    job_released = 0;
    return b;
  }
  return our_interpreter() ? all_pools(1, TRIM_BUDGET) : 0;
}

static uint64_t pools_free(int policy_thread) {
  if (policy_thread) return on_policy_thread(0, READ_BUDGET);
  if (in_job) return 0;
  return our_interpreter() ? all_pools(0, READ_BUDGET) : 0;
}

static void child_after_fork(void) {
  pthread_mutex_init(&st.mu, NULL); /* a fork while another interpreter held it */
}

/* 3.8 to 3.13, with the GIL (the pool header above): the minor version, else 0. */
static int known_python(const char *version) {
  int major = 0, minor = 0;
  if (!version || sscanf(version, "%d.%d", &major, &minor) != 2) return 0;
  return major == 3 && minor >= 8 && minor <= 13 && !strstr(version, "free-threading") ? minor : 0;
}

int ta_bind_pymalloc_install(const ta_bind_pymalloc_host_t *host) {
  static int tried; /* once per process: re-imports and subinterpreters find it done */
  int minor = known_python(host->version);
  if (tried || !minor) return atomic_load(&st.on);
  tried = 1;
  void (*get)(arena_allocator_t *) = host->get_allocator, (*set)(arena_allocator_t *) = host->set_allocator;
  if (!get || !set || !host->lock || !host->unlock) return 0;
  st.page = (size_t)sysconf(_SC_PAGESIZE);
  if (!st.page || (st.page & (st.page - 1))) return 0;
  st.page_shift = (unsigned)__builtin_ctzl(st.page);
  st.host = *host;
  st.interp = current_interp();
  /* Objects/obmalloc.c: 1 MiB arenas of 16 KiB pools from 3.10 on 64 bits (the
   * radix tree's), else 256 KiB of 4 KiB; a pool of one page has nothing to give */
  int large = minor >= 10 && sizeof(void *) == 8;
  st.size = large ? (1u << 20) : (256u << 10);
  st.pool = large ? 16384 : 4096;
  if (st.pool <= st.page || st.pool / st.page > 31) return 0;
  get(&st.prev);
  if (st.prev.alloc == arena_alloc) return 0; /* a second copy of this module: the first one has it */
  void *memo = mmap(NULL, sizeof(pool_memo_t[MAX_ARENAS][ARENA_POOLS]), PROT_READ | PROT_WRITE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (memo == MAP_FAILED) return 0;
  st.memo = memo;
  arena_allocator_t mine = {NULL, arena_alloc, arena_free};
  set(&mine);
  pthread_atfork(NULL, NULL, child_after_fork);
  atomic_store(&st.on, 1);
  ta_bind_set_host(release_pools, pools_free);
  return 1;
}

void ta_bind_pymalloc_off(void) {
  if (current_interp() != st.interp) return; /* a subinterpreter's exit: not the process's */
  atomic_store(&st.on, 0); /* at exit: no trim takes the GIL from a finalizing interpreter */
  ta_bind_set_host(NULL, NULL);
}

size_t ta_bind_pymalloc_fields(int weigh_all, ta_bind_field_t *out) {
  uint64_t free_bytes = our_interpreter() ? all_pools(0, weigh_all ? ALL : READ_BUDGET) : 0;
  pthread_mutex_lock(&st.mu);
  size_t arenas = 0;
  for (size_t i = 0; i < st.n; i++) arenas += st.arena[i].at != NULL;
  ta_bind_field_t f[TA_BIND_PYMALLOC_NFIELDS] = {
      {.name = "on", .type = 'b', .present = 1, .v.u = (uint64_t)atomic_load(&st.on)},
      {.name = "arenas", .type = 'u', .present = 1, .v.u = arenas},
      {.name = "arena_bytes", .type = 'u', .present = 1, .v.u = st.size},
      {.name = "free_bytes", .type = 'u', .present = 1, .v.u = free_bytes},
      {.name = "trims", .type = 'u', .present = 1, .v.u = st.trims},
      {.name = "pools_released", .type = 'u', .present = 1, .v.u = st.pools},
      {.name = "sparse_pools_trimmed", .type = 'u', .present = 1, .v.u = st.sparse},
      {.name = "released_bytes", .type = 'u', .present = 1, .v.u = st.released},
  };
  pthread_mutex_unlock(&st.mu);
  memcpy(out, f, sizeof f);
  return TA_BIND_PYMALLOC_NFIELDS;
}
