/* core/bind's walk of pymalloc's pools (bind_pymalloc.c), with no Python:
 * a host of our own (a version string, an arena allocator pair that hands
 * over the allocator the walk installs, a thread state whose interpreter
 * the test picks, a GIL that counts) and 1 MiB arenas from that allocator,
 * their 16 KiB pools given headers as pymalloc writes them. Page residency
 * is read from /proc/self/pagemap (present, bit 63), not with the mincore
 * the walk itself uses, and every page the test expects resident was
 * written first. It checks:
 *  - install: a version it does not know (3.14, a free-threading build)
 *    installs nothing; 3.12 installs once, hands over an allocator, and the
 *    fields say on; pools of one OS page (16 KiB or 64 KiB pages, qemu)
 *    install nothing, and the rest is skipped (as it is under an emulator,
 *    and with pages other than 4 KiB, which the pools' layout assumes);
 *  - an empty used pool: every page after the first given back, the header
 *    page kept with its links, its size class set to DUMMY_SIZE_IDX; a page
 *    already given back is not counted again;
 *  - a sparse pool: the pages that hold a live block stay (the blocks
 *    intact), those that hold none go, and the free list is rebuilt from
 *    the free blocks left, in address order;
 *  - left alone: a never-used pool (zero header) even when its pages are
 *    resident, a pool whose free list does not add up, a pool with more
 *    than half its bytes live, and the arenas of another interpreter (and
 *    a walk from a thread of another interpreter sees nothing);
 *  - the bytes: free_bytes before, released_bytes, pools_released and
 *    sparse_pools_trimmed after, each exact; a second trim gives nothing;
 *  - the budgets: a bounded read weighs TA_BIND_PYMALLOC_READ_BUDGET
 *    sparse pools and the next one goes on where it ran out; a hook's trim
 *    gives back TA_BIND_PYMALLOC_TRIM_BUDGET pools, trimalloc.trim()'s the
 *    rest;
 *  - the policy's thread takes the GIL through the host, and walks nothing
 *    when the host says the interpreter is not initialized;
 *  - arenas freed through the allocator: ours unmapped, others passed on. */
#include "check.h"
#include "../../core/bind/binding.h"

/* Objects/obmalloc.c's struct pool_header, as bind_pymalloc.c reads it. */
typedef struct {
  union {
    void *padding;
    unsigned count;
  } ref;
  void *freeblock, *nextpool, *prevpool;
  unsigned arenaindex, szidx, nextoffset, maxnextoffset;
} pool_header_t;
#define DUMMY_SIZE_IDX 0xffff
#define POOL ((size_t)16384)
#define ARENA ((size_t)1 << 20)
#define ALIGNMENT (2 * sizeof(void *))
#define OVERHEAD ((sizeof(pool_header_t) + ALIGNMENT - 1) & ~(ALIGNMENT - 1))

/* ---- the host ---- */
static ta_bind_arena_allocator_t mine; /* what the walk installed */
static _Atomic int prev_allocs, prev_frees;
static void *prev_alloc(void *ctx, size_t size) {
  (void)ctx, (void)size;
  prev_allocs++;
  return NULL;
}
static void prev_free(void *ctx, void *p, size_t size) {
  (void)ctx, (void)p, (void)size;
  prev_frees++;
}
static void get_allocator(ta_bind_arena_allocator_t *a) {
  *a = (ta_bind_arena_allocator_t){NULL, prev_alloc, prev_free};
}
static void set_allocator(ta_bind_arena_allocator_t *a) {
  mine = *a;
}
static int interp_a, interp_b, a_tstate;
static void *_Atomic current = &interp_a; /* this thread's interpreter */
static void *tstate(void) {
  return &a_tstate;
}
static void *tstate_interp(void *ts) {
  return ts == &a_tstate ? atomic_load(&current) : NULL;
}
static _Atomic int locks, unlocks, refusals, refuse;
static int gil_lock(void) {
  if (refuse) {
    refusals++;
    return -1;
  }
  locks++;
  return 7;
}
static void gil_unlock(int state) {
  if (state == 7) unlocks++;
}
static ta_bind_pymalloc_host_t host(const char *version) {
  return (ta_bind_pymalloc_host_t){version,       get_allocator, set_allocator, tstate,
                                   tstate_interp, gil_lock,      gil_unlock};
}

/* ---- pages, pools, fields ---- */

/* Is the page at p present? (/proc/self/pagemap bit 63; -1: unreadable.) */
static int present(const void *p) {
  size_t ps = page_size();
  int fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
  uint64_t e = 0;
  int ok = fd >= 0 && pread(fd, &e, sizeof e, (off_t)((uintptr_t)p / ps * sizeof e)) == (ssize_t)sizeof e;
  if (fd >= 0) close(fd);
  return ok ? (int)(e >> 63 & 1) : -1;
}

/* The present pages of pool h, bit j: page j. */
static unsigned pool_pages(const pool_header_t *h) {
  unsigned bits = 0;
  for (size_t j = 0; j < POOL / page_size(); j++)
    bits |= (unsigned)(present((const uint8_t *)h + j * page_size()) == 1) << j;
  return bits;
}

static pool_header_t *pool_at(uint8_t *arena, size_t i) {
  uintptr_t first = ((uintptr_t)arena + POOL - 1) & ~(uintptr_t)(POOL - 1);
  return (pool_header_t *)(first + i * POOL);
}

static size_t arena_npools(const uint8_t *arena) {
  uintptr_t first = ((uintptr_t)arena + POOL - 1) & ~(uintptr_t)(POOL - 1);
  return ((uintptr_t)arena + ARENA - first) / POOL;
}

static uint8_t *block(pool_header_t *h, size_t size, size_t i) {
  return (uint8_t *)h + OVERHEAD + i * size;
}

/* A used pool of blocks of `size`, every one carved and live, each page
 * written (resident): pymalloc's header, links as a used pool's. */
static void pool_live(pool_header_t *h, size_t size) {
  memset(h, 0xa5, POOL);
  size_t carved = (POOL - OVERHEAD) / size;
  *h = (pool_header_t){.ref.count = (unsigned)carved,
                       .nextpool = h,
                       .prevpool = h,
                       .arenaindex = 3,
                       .szidx = (unsigned)(size / ALIGNMENT - 1),
                       .nextoffset = (unsigned)(OVERHEAD + carved * size),
                       .maxnextoffset = (unsigned)(POOL - size)};
}

/* Block i goes back to the pool (pymalloc's free: pushed on the free list). */
static void pool_free(pool_header_t *h, size_t size, size_t i) {
  uint8_t *b = block(h, size, i);
  *(void **)b = h->freeblock;
  h->freeblock = b;
  h->ref.count--;
}

/* A sparse pool: live only the blocks keep(i) says, the others freed in
 * address order (the free list's head is the last block, on the last page). */
static void pool_sparse(pool_header_t *h, size_t size, int (*keep)(size_t i)) {
  pool_live(h, size);
  for (size_t i = 0; i < (POOL - OVERHEAD) / size; i++)
    if (!keep(i)) pool_free(h, size, i);
}

static int keep_none(size_t i) {
  (void)i;
  return 0;
}
static int keep_3(size_t i) {
  return i == 3;
}
static int keep_3_150(size_t i) { /* block 3 on page 0, block 150 inside page 2 (64-byte blocks) */
  return i == 3 || i == 150;
}
static int keep_dense(size_t i) { /* live 1 to 190, to the end of page 2: page 3 holds none */
  return i > 0 && i < 191;
}

typedef struct {
  uint64_t on, arenas, arena_bytes, free_bytes, trims, pools, sparse, released;
} pools_t;

static int fields_bad; /* reads whose fields were misnamed or miscounted */

static pools_t fields(int weigh_all) {
  ta_bind_field_t f[TA_BIND_PYMALLOC_NFIELDS];
  size_t n = ta_bind_pymalloc_fields(weigh_all, f);
  static const char *const names[] = {"on",    "arenas",         "arena_bytes",          "free_bytes",
                                      "trims", "pools_released", "sparse_pools_trimmed", "released_bytes"};
  int bad = n != TA_BIND_PYMALLOC_NFIELDS;
  for (size_t i = 0; !bad && i < n; i++) bad += strcmp(f[i].name, names[i]) != 0 || !f[i].present;
  fields_bad += bad;
  return (pools_t){f[0].v.u, f[1].v.u, f[2].v.u, f[3].v.u, f[4].v.u, f[5].v.u, f[6].v.u, f[7].v.u};
}

/* pymalloc hands out the free list's first two blocks and takes them
 * back: the same blocks free, the list's head changed. */
static void pool_churn(pool_header_t *h) {
  uint8_t *x = h->freeblock, *y = x ? *(uint8_t **)x : NULL;
  if (!y) return;
  *(uint8_t **)x = *(uint8_t **)y;
  *(uint8_t **)y = x;
  h->freeblock = y;
}

/* A trim as a Python call makes it: the pools with the GIL (trims 1: a
 * hook's budget, 2: every one), then core/bind's trim without it. */
static int64_t job_trim(int trims) {
  ta_bind_pymalloc_job(1, trims);
  ta_bind_job_t j = {.kind = TA_JOB_TRIM, .released = -1};
  ta_bind_job_run(&j);
  ta_bind_pymalloc_job(0, 0);
  return j.released;
}

/* ---- the tests ---- */

static int installed;

static void test_install(void) {
  ta_bind_pymalloc_host_t h = host("3.14.0 (main, Oct  7 2025) [GCC 14.2.0]");
  CHECK(ta_bind_pymalloc_install(&h) == 0 && !mine.alloc, "3.14: not known, nothing installed");
  h = host("3.13.1 experimental free-threading build (main) [GCC 14.2.0]");
  CHECK(ta_bind_pymalloc_install(&h) == 0 && !mine.alloc, "a free-threading build: nothing installed");
  CHECK(fields(1).on == 0, "off until installed");
  h = host("3.12.3 (main, Nov  6 2024) [GCC 12.2.0]");
  installed = ta_bind_pymalloc_install(&h);
  if (POOL / page_size() < 2) { /* qemu-user with 16 or 64 KiB pages */
    CHECK(!installed && !mine.alloc, "pools of one page (%zu): nothing to give back, not installed",
          page_size());
    return;
  }
  CHECK(installed == 1 && mine.alloc && mine.free, "3.12 installs its allocator");
  CHECK(ta_bind_pymalloc_install(&h) == 1, "a second install finds it on");
  pools_t p = fields(1);
  CHECK(p.on == 1 && p.arena_bytes == ARENA && p.arenas == 0 && p.free_bytes == 0, "on: %llu, %llu arenas",
        (unsigned long long)p.on, (unsigned long long)p.arenas);
}

static void test_pools(void) {
  size_t pg = page_size(), per = POOL / pg;
  uint8_t *a = mine.alloc(mine.ctx, ARENA);
  if (!CHECK(a != NULL, "an arena")) return;
  CHECK(fields(1).arenas == 1, "the arena is remembered");

  /* 0: empty, every page resident; 1: empty, page 2 already given back */
  pool_header_t *empty = pool_at(a, 0), *empty2 = pool_at(a, 1);
  pool_sparse(empty, 64, keep_none);
  pool_sparse(empty2, 32, keep_none);
  madvise((uint8_t *)empty2 + 2 * pg, pg, MADV_DONTNEED);
  void *links = empty->nextpool, *head = empty->freeblock;
  /* 2: sparse, 64-byte blocks, live 3 (page 0) and 150 (page 2) */
  pool_header_t *sparse = pool_at(a, 2);
  pool_sparse(sparse, 64, keep_3_150);
  block_fill(block(sparse, 64, 3), 64, 0x31);
  block_fill(block(sparse, 64, 150), 64, 0x32);
  /* 3: never used (a zero header), its pages resident all the same */
  pool_header_t *never = pool_at(a, 3);
  memset(never, 0, pg);
  memset((uint8_t *)never + pg, 0x5a, POOL - pg);
  /* 4: a free list that does not add up (ref.count one short) */
  pool_header_t *odd = pool_at(a, 4);
  pool_sparse(odd, 64, keep_3);
  odd->ref.count = 2;
  /* 5: dense, more than half its bytes live, though its last page holds none */
  pool_header_t *dense = pool_at(a, 5);
  pool_sparse(dense, 64, keep_dense);
  /* 6: never touched at all; 7: an empty pool in another interpreter's arena */
  pool_header_t *untouched = pool_at(a, 6);
  atomic_store(&current, &interp_b);
  uint8_t *b = mine.alloc(mine.ctx, ARENA);
  pool_header_t *theirs = b ? pool_at(b, 0) : NULL;
  if (theirs) pool_sparse(theirs, 64, keep_none);
  CHECK(fields(1).free_bytes == 0, "a thread of another interpreter walks nothing");
  atomic_store(&current, &interp_a);
  unsigned all = (1u << per) - 1;
  if (!CHECK(pool_pages(empty) == all && pool_pages(sparse) == all && pool_pages(never) == all,
             "the pools' pages are resident before the trim"))
    return;

  /* 64-byte blocks: page 1 holds (parts of) 63..127, page 3 191..254: none
   * live, both go; page 2 holds 150 and stays */
  uint64_t want_empty = (per - 1) * pg + (per - 2) * pg, want_sparse = 2 * pg;
  pools_t before = fields(1);
  CHECK(before.free_bytes == want_empty + want_sparse, "free_bytes %llu, want %llu",
        (unsigned long long)before.free_bytes, (unsigned long long)(want_empty + want_sparse));
  int64_t got = job_trim(1);
  pools_t after = fields(1);
  CHECK(got >= (int64_t)(want_empty + want_sparse), "the trim counts the pools' bytes: %lld", (long long)got);
  CHECK(after.released - before.released == want_empty + want_sparse && after.trims == before.trims + 1,
        "released_bytes %llu, want %llu", (unsigned long long)(after.released - before.released),
        (unsigned long long)(want_empty + want_sparse));
  CHECK(after.pools - before.pools == 2 && after.sparse - before.sparse == 1,
        "pools_released %llu, sparse_pools_trimmed %llu", (unsigned long long)(after.pools - before.pools),
        (unsigned long long)(after.sparse - before.sparse));
  CHECK(after.free_bytes == 0, "nothing left to give: %llu", (unsigned long long)after.free_bytes);

  CHECK(pool_pages(empty) == 1 && pool_pages(empty2) == 1,
        "an empty pool keeps its header page only: %#x %#x", pool_pages(empty), pool_pages(empty2));
  CHECK(empty->szidx == DUMMY_SIZE_IDX && empty2->szidx == DUMMY_SIZE_IDX,
        "its size class is DUMMY_SIZE_IDX: %#x", empty->szidx);
  CHECK(empty->nextpool == links && empty->prevpool == links && empty->freeblock == head &&
            empty->maxnextoffset == POOL - 64 && empty->ref.count == 0,
        "the rest of its header is as pymalloc left it");

  CHECK(pool_pages(sparse) == 0x5, "a sparse pool keeps the pages with live blocks (0 and 2): %#x",
        pool_pages(sparse));
  CHECK(block_ok(block(sparse, 64, 3), 64, 0x31) && block_ok(block(sparse, 64, 150), 64, 0x32),
        "its live blocks are intact");
  CHECK(sparse->ref.count == 2 && sparse->szidx == 64 / ALIGNMENT - 1, "its header counts the same");
  /* the free list: every free block wholly off pages 1 and 3, ascending */
  size_t n = 0, want = 0, wrong = 0;
  uint8_t *last = NULL;
  for (size_t i = 0; i < (POOL - OVERHEAD) / 64; i++) {
    size_t lo = OVERHEAD + i * 64, hi = lo + 64;
    int on_given = (lo < 2 * pg && hi > pg) || hi > 3 * pg;
    want += !on_given && i != 3 && i != 150;
  }
  for (uint8_t *p = sparse->freeblock; p && n <= want; p = *(uint8_t **)p, n++) {
    size_t off = (size_t)(p - (uint8_t *)sparse), lo = off, hi = off + 64;
    wrong += (lo < 2 * pg && hi > pg) || hi > 3 * pg || p == block(sparse, 64, 3) ||
             p == block(sparse, 64, 150) || (off - OVERHEAD) % 64 || p <= last;
    last = p;
  }
  CHECK(n == want && wrong == 0 && want == 124, "the free list: %zu blocks (want %zu), %zu wrong", n, want,
        wrong);
  CHECK(pool_pages(never) == all && ((uint8_t *)never)[pg] == 0x5a && never->szidx == 0,
        "a never-used pool is left alone: %#x", pool_pages(never));
  CHECK(pool_pages(odd) == all && odd->ref.count == 2, "a pool that does not add up is left alone: %#x",
        pool_pages(odd));
  CHECK(pool_pages(dense) == all, "a dense pool is left alone: %#x", pool_pages(dense));
  CHECK(pool_pages(untouched) == 0, "an untouched pool stays untouched");
  CHECK(theirs && pool_pages(theirs) == all && theirs->szidx == 64 / ALIGNMENT - 1,
        "another interpreter's arena is left alone");

  before = after;
  job_trim(2);
  after = fields(1);
  CHECK(after.released == before.released && after.pools == before.pools && after.trims == before.trims + 1,
        "a second trim gives back nothing more");

  int frees = prev_frees;
  mine.free(mine.ctx, a, ARENA);
  mine.free(mine.ctx, b, ARENA);
  static uint8_t not_ours[64];
  mine.free(mine.ctx, not_ours, sizeof not_ours);
  CHECK(fields(1).arenas == 0 && prev_frees == frees + 1 && present(a) == 0,
        "freed arenas are unmapped and forgotten, others passed on");
}

static void test_budget(void) {
  enum { ARENAS = 34 };
  uint8_t *a[ARENAS];
  size_t pools = 0, pg = page_size(), per = POOL / pg, made = 0;
  for (size_t k = 0; k < ARENAS; k++) {
    a[k] = mine.alloc(mine.ctx, ARENA);
    if (!a[k]) break;
    made++;
    for (size_t i = 0; i < arena_npools(a[k]); i++, pools++) pool_sparse(pool_at(a[k], i), 64, keep_3);
  }
  if (!CHECK(made == ARENAS && pools > TA_BIND_PYMALLOC_TRIM_BUDGET, "%zu sparse pools", pools)) return;
  uint64_t each = (per - 1) * pg; /* block 3 lies on page 0 */
  uint64_t r1 = fields(0).free_bytes, r2 = fields(0).free_bytes;
  CHECK(r1 == TA_BIND_PYMALLOC_READ_BUDGET * each, "a bounded read weighs %d pools: %llu pools' bytes",
        TA_BIND_PYMALLOC_READ_BUDGET, (unsigned long long)(r1 / each));
  CHECK(r2 == 2 * TA_BIND_PYMALLOC_READ_BUDGET * each, "the next goes on where it ran out: %llu pools' bytes",
        (unsigned long long)(r2 / each));
  /* the first arenas' pools change before every read (a busy program's):
   * reads that went on from the first slot would spend their budget on
   * those and reach 64 more pools a read; from where the last one ran out,
   * they reach 512 more (the first 7 arenas are the first table slots) */
  uint64_t r = 0;
  for (int round = 0; round < 2; round++) {
    for (size_t k = 0; k < 7; k++)
      for (size_t i = 0; i < arena_npools(a[k]); i++) pool_churn(pool_at(a[k], i));
    r = fields(0).free_bytes;
  }
  CHECK(r >= 3 * TA_BIND_PYMALLOC_READ_BUDGET * each, "changing pools starve no others: %llu pools' bytes",
        (unsigned long long)(r / each));
  CHECK(fields(1).free_bytes == pools * each, "weigh_all weighs them all");
  pools_t before = fields(1);
  job_trim(1);
  pools_t after = fields(1);
  CHECK(after.sparse - before.sparse == TA_BIND_PYMALLOC_TRIM_BUDGET &&
            after.released - before.released == TA_BIND_PYMALLOC_TRIM_BUDGET * each,
        "a hook's trim gives back %d pools: %llu", TA_BIND_PYMALLOC_TRIM_BUDGET,
        (unsigned long long)(after.sparse - before.sparse));
  job_trim(2);
  pools_t last = fields(1);
  CHECK(last.sparse - before.sparse == pools && last.free_bytes == 0,
        "trimalloc.trim()'s gives back the rest: %llu", (unsigned long long)(last.sparse - before.sparse));
  size_t kept = 0;
  for (size_t k = 0; k < made; k++)
    for (size_t i = 0; i < arena_npools(a[k]); i++) kept += pool_pages(pool_at(a[k], i)) == 1;
  CHECK(kept == pools, "every pool kept its first page only (%zu of %zu)", kept, pools);
  for (size_t k = 0; k < made; k++) mine.free(mine.ctx, a[k], ARENA);
}

/* The policy's thread: through the host's GIL, or not at all when the
 * interpreter is not initialized. */
static void test_policy_thread(void) {
  size_t pg = page_size(), per = POOL / pg;
  uint8_t *a = mine.alloc(mine.ctx, ARENA);
  if (!CHECK(a != NULL, "an arena")) return;
  pool_header_t *h = pool_at(a, 0);
  pool_sparse(h, 128, keep_none);
  uint64_t released = fields(1).released;
  refuse = 1;
  ta_bind_trim_soon();
  for (int i = 0; i < 5000 && !refusals; i++) usleep(1000);
  sleep_ms(50);
  CHECK(refusals > 0 && locks == 0 && fields(1).released == released && pool_pages(h) == (1u << per) - 1,
        "not initialized: the policy's thread walks nothing (%d refused)", refusals);
  refuse = 0;
  ta_bind_trim_soon();
  for (int i = 0; i < 5000 && fields(1).released == released; i++) usleep(1000);
  sleep_ms(50);
  CHECK(fields(1).released - released == (per - 1) * pg && pool_pages(h) == 1,
        "the policy's thread walks: %llu bytes", (unsigned long long)(fields(1).released - released));
  CHECK(locks >= 1 && unlocks == locks, "with the GIL, taken and let go: %d locks, %d unlocks", locks,
        unlocks);
  mine.free(mine.ctx, a, ARENA);
}

int main(void) {
  ta_bind_init();
  RUN(test_install);
  /* qemu-user: neither the pagemap nor mincore tells a guest page's
   * residency; the pools' layout below is written for 4 KiB pages */
  const char *why = !installed            ? "not installed (pools of one page)"
                    : test_runner()       ? "under an emulator"
                    : page_size() != 4096 ? "pages other than 4 KiB"
                                          : NULL;
  if (why) {
    SKIP(test_pools, why);
    SKIP(test_budget, why);
    SKIP(test_policy_thread, why);
  } else {
    RUN(test_pools);
    RUN(test_budget);
    RUN(test_policy_thread);
    CHECK(prev_allocs == 0, "the table never filled");
  }
  CHECK(fields_bad == 0, "the fields' names and count, in every read (%d wrong)", fields_bad);
  return check_summary();
}
