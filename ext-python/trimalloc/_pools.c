/* pymalloc's empty and sparse pools, given back by every trim.
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
 * with few live blocks gives back its pages that hold none (sparse_pool). The
 * policy's free-bytes figure counts the same pages, so the refault budget
 * prices them.
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
 * pymalloc states of their own, which that GIL guards. */
#include "_ext.h"

#include <dlfcn.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

/* Include/cpython/objimpl.h's PyObjectArenaAllocator, outside the limited API. */
typedef struct {
  void *ctx;
  void *(*alloc)(void *ctx, size_t size);
  void (*free)(void *ctx, void *ptr, size_t size);
} arena_allocator_t;

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
  void *interp;                            /* the interpreter that imported trimalloc: trims walk its arenas
                                            * only (PyGILState_Ensure takes its GIL) */
  void *(*tstate_get)(void);               /* the thread state, NULL when none: no fatal error */
  void *(*tstate_interp)(void *);          /* PyThreadState_GetInterpreter (3.9+) */
  _Atomic int on;                          /* trims walk the pools */
  uint64_t trims, pools, sparse, released; /* counters, under mu */
} st = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* The interpreter of this thread's thread state (NULL: none, or 3.8). */
static void *current_interp(void) {
  void *ts = st.tstate_get ? st.tstate_get() : NULL;
  return ts && st.tstate_interp ? st.tstate_interp(ts) : NULL;
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

/* The pages of a pool (bit j: page j) that block i of `size` bytes lies on. */
static uint32_t block_pages(size_t i, size_t size) {
  size_t off = POOL_OVERHEAD + i * size, first = off / st.page, last = (off + size - 1) / st.page;
  return (uint32_t)(((2u << last) - 1) & ~((1u << first) - 1));
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
 * would be). */
static uint64_t sparse_pool(pool_header_t *h, size_t ps, const unsigned char *vec, size_t per, int release) {
  size_t size = ps - h->maxnextoffset, carved_end = h->nextoffset;
  if (h->szidx == DUMMY_SIZE_IDX) return 0;
  size_t carved = (carved_end - POOL_OVERHEAD) / size; /* blocks handed out at least once */
  if (carved > MAX_BLOCKS || (size_t)h->ref.count * size > ps / 2) return 0; /* not sparse */
  uint8_t freebits[MAX_BLOCKS / 8] = {0};
  size_t nfree = 0;
  for (uint8_t *b = h->freeblock; b; b = *(uint8_t **)b) {
    size_t off = (size_t)(b - (uint8_t *)h);
    if (b < (uint8_t *)h || off < POOL_OVERHEAD || off >= carved_end || (off - POOL_OVERHEAD) % size)
      return 0;
    size_t i = (off - POOL_OVERHEAD) / size;
    if (freebits[i / 8] & (1u << (i % 8)) || ++nfree > carved) return 0;
    freebits[i / 8] |= (uint8_t)(1u << (i % 8));
  }
  if (carved - nfree != h->ref.count) return 0; /* not the layout this file knows */
  /* the pages to give back: resident, after the first, no live block on them */
  uint32_t give = 0; /* bit j: page j */
  for (size_t j = 1; j < per; j++) give |= (uint32_t)(vec[j] & 1) << j;
  for (size_t i = 0; i < carved; i++)
    if (!(freebits[i / 8] & (1u << (i % 8)))) give &= ~block_pages(i, size);
  /* a pool with a free block keeps one: the lowest one's pages stay */
  size_t lowest = carved;
  for (size_t i = 0; i < carved && lowest == carved; i++)
    if (freebits[i / 8] & (1u << (i % 8))) lowest = i;
  if (lowest < carved) {
    int kept = 0;
    for (size_t i = lowest; i < carved && !kept; i++)
      kept = (freebits[i / 8] & (1u << (i % 8))) && !(give & block_pages(i, size));
    if (!kept) give &= ~block_pages(lowest, size);
  }
  if (!give) return 0;
  uint64_t bytes = (uint64_t)__builtin_popcount(give) * st.page;
  if (!release) return bytes;
  /* the free list again: the free blocks that stay, in address order */
  uint8_t *head = NULL, **link = &head;
  for (size_t i = 0; i < carved; i++) {
    if (!(freebits[i / 8] & (1u << (i % 8))) || (give & block_pages(i, size))) continue;
    uint8_t *b = (uint8_t *)h + POOL_OVERHEAD + i * size;
    *link = b;
    link = (uint8_t **)b;
  }
  *link = NULL;
  h->freeblock = head;
  for (size_t j = 1; j < per; j++)
    if ((give >> j) & 1) madvise((uint8_t *)h + j * st.page, st.page, MADV_DONTNEED);
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
static uint64_t arena_pools(uint8_t *a, size_t ps, int release) {
  unsigned char vec[(1u << 20) / 4096];
  size_t pages = st.size / st.page, per = ps / st.page;
  if (pages > sizeof vec || per > 31 || mincore(a, st.size, vec) != 0) return 0;
  uint64_t released = 0;
  uintptr_t first = ((uintptr_t)a + ps - 1) & ~(uintptr_t)(ps - 1);
  for (uintptr_t p = first; p + ps <= (uintptr_t)a + st.size; p += ps) {
    size_t k = (p - (uintptr_t)a) / st.page, resident = 0;
    if (!(vec[k] & 1)) continue; /* never used, or given back whole with its arena */
    pool_header_t *h = (pool_header_t *)p;
    if (!header_ok(h, ps)) continue; /* never carved (all zero), or not a pool header */
    if (h->ref.count != 0) {
      uint64_t b = sparse_pool(h, ps, vec + k, per, release);
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

/* Every arena's pools (arena_pools). Holds the GIL. */
static uint64_t all_pools(int release) {
  uint64_t bytes = 0;
  pthread_mutex_lock(&st.mu);
  if (atomic_load(&st.on)) /* on again: off at exit while the policy thread waited for the GIL */
    for (size_t i = 0; i < st.n; i++)
      if (st.arena[i].at && st.arena[i].size == st.size && st.arena[i].interp == st.interp)
        bytes += arena_pools(st.arena[i].at, st.pool, release);
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

/* A thread of this interpreter inside ta_py_job, which released the GIL:
 * the pools it released before (ta_py_pools_job), for its trim to count. */
static _Thread_local int in_job;
static _Thread_local uint64_t job_released;

void ta_py_pools_job(int begin, int trims) {
  if (!begin) {
    in_job = 0;
    return;
  }
  in_job = 1;
  job_released = trims && our_interpreter() ? all_pools(1) : 0; /* with the GIL, still */
}

/* ta_bind_set_host's functions. On core/bind's policy thread, which holds no
 * GIL, PyGILState_Ensure takes it (that thread is no interpreter's: it gets a
 * thread state of the main interpreter); on a thread of this interpreter,
 * the GIL is held (it called into core/bind from Python) unless it is inside
 * a job, which did its pools before it let go of the GIL. Taking the GIL
 * with PyGILState_Ensure on a thread that holds it under another thread
 * state (a subinterpreter's) would wait for itself. */
static uint64_t on_policy_thread(int release) {
  if (!atomic_load(&st.on) || !Py_IsInitialized()) return 0;
  PyGILState_STATE g = PyGILState_Ensure();
  uint64_t bytes = all_pools(release);
  PyGILState_Release(g);
  return bytes;
}

static uint64_t release_pools(int policy_thread) {
  if (policy_thread) return on_policy_thread(1);
  if (in_job) {
    uint64_t b = job_released;
    job_released = 0;
    return b;
  }
  return our_interpreter() ? all_pools(1) : 0;
}

static uint64_t pools_free(int policy_thread) {
  if (policy_thread) return on_policy_thread(0);
  if (in_job) return 0;
  return our_interpreter() ? all_pools(0) : 0;
}

static void child_after_fork(void) {
  pthread_mutex_init(&st.mu, NULL); /* a fork while another interpreter held it */
}

/* 3.8 to 3.13, with the GIL (the pool header above): the minor version, else 0. */
static int known_python(void) {
  int major = 0, minor = 0;
  if (sscanf(Py_GetVersion(), "%d.%d", &major, &minor) != 2) return 0;
  return major == 3 && minor >= 8 && minor <= 13 && !strstr(Py_GetVersion(), "free-threading") ? minor : 0;
}

int ta_py_pools_install(void) {
  static int tried; /* once per process: re-imports and subinterpreters find it done */
  int minor = known_python();
  if (tried || !minor) return atomic_load(&st.on);
  tried = 1;
  void (*get)(arena_allocator_t *) =
      (void (*)(arena_allocator_t *))dlsym(RTLD_DEFAULT, "PyObject_GetArenaAllocator");
  void (*set)(arena_allocator_t *) =
      (void (*)(arena_allocator_t *))dlsym(RTLD_DEFAULT, "PyObject_SetArenaAllocator");
  if (!get || !set) return 0;
  st.page = (size_t)sysconf(_SC_PAGESIZE);
  st.tstate_get = (void *(*)(void))dlsym(RTLD_DEFAULT, "PyThreadState_GetUnchecked"); /* 3.13 */
  if (!st.tstate_get) st.tstate_get = (void *(*)(void))dlsym(RTLD_DEFAULT, "_PyThreadState_UncheckedGet");
  st.tstate_interp = (void *(*)(void *))dlsym(RTLD_DEFAULT, "PyThreadState_GetInterpreter"); /* 3.9+ */
  st.interp = current_interp();
  /* Objects/obmalloc.c: 1 MiB arenas of 16 KiB pools from 3.10 on 64 bits (the
   * radix tree's), else 256 KiB of 4 KiB; a pool of one page has nothing to give */
  int large = minor >= 10 && sizeof(void *) == 8;
  st.size = large ? (1u << 20) : (256u << 10);
  st.pool = large ? 16384 : 4096;
  if (st.pool <= st.page || st.pool / st.page > 31) return 0;
  get(&st.prev);
  if (st.prev.alloc == arena_alloc) return 0; /* a second copy of this module: the first one has it */
  arena_allocator_t mine = {NULL, arena_alloc, arena_free};
  set(&mine);
  pthread_atfork(NULL, NULL, child_after_fork);
  atomic_store(&st.on, 1);
  ta_bind_set_host(release_pools, pools_free);
  return 1;
}

static void pools_off(void) {
  if (current_interp() != st.interp) return; /* a subinterpreter's exit: not the process's */
  atomic_store(&st.on, 0); /* at exit: no trim takes the GIL from a finalizing interpreter */
  ta_bind_set_host(NULL, NULL);
}

static PyObject *py_pools_off(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  pools_off();
  Py_RETURN_NONE;
}

/* _pymalloc_pools() -> {on, arenas, arena_bytes, free_bytes, trims, pools_released,
 * released_bytes} */
static PyObject *py_pools(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  uint64_t free_bytes = pools_free(0);
  pthread_mutex_lock(&st.mu);
  size_t arenas = 0;
  for (size_t i = 0; i < st.n; i++) arenas += st.arena[i].at != NULL;
  ta_bind_field_t f[] = {
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
  return ta_py_fields_dict(f, sizeof f / sizeof *f);
}

PyMethodDef ta_py_pools_methods[] = {
    {"_pymalloc_pools", py_pools, METH_NOARGS,
     "_pymalloc_pools() -> {on, arenas, arena_bytes, free_bytes, trims, pools_released, "
     "sparse_pools_trimmed, released_bytes}: "
     "the arenas trims walk for pymalloc's empty pools"},
    {"_pymalloc_pools_off", py_pools_off, METH_NOARGS, "_pymalloc_pools_off(): trims leave pymalloc alone"},
    {NULL, NULL, 0, NULL},
};
