/* Slabs: small blocks (<= 8 KiB) live in 64 KiB slabs aligned to 64 KiB, so
 * a block's slab is `addr & ~0xFFFF`. Everything here runs with arenas = 1,
 * so all blocks of a class come from one bin.
 *  - Fullest-first refill: of two full slabs, A loses ~90% of its blocks and
 *    B ~10% (B's first, so a last-freed-first or lowest-address-first
 *    allocator would hand out A's); after a trim (which flushes the caller's
 *    cache into the arena) new blocks fill B before they take from A. With
 *    tcache_bytes = 0 that holds block for block; with a cache, up to one
 *    refill batch may straddle.
 *  - Exact purge inside a live slab: slabs of 64-byte blocks keep one live
 *    block on every 4th OS page; after a trim mincore() shows every OS page
 *    without a live block non-resident and every page with one resident, the
 *    live blocks keep their contents, dirty is 0, and the purged pages are
 *    reused.
 *  - A refill faults in the pages of the blocks it hands out in one call
 *    (MADV_POPULATE_WRITE), for a fresh slab and for purged pages of a live
 *    one: a block's pages are all resident before it is written. */
#include <pthread.h>

#include "check.h"

#define U(x) ((unsigned long long)(x))
#define SLAB ((uintptr_t)64 * 1024)

static uintptr_t slab_of(const void *p) {
  return (uintptr_t)p & ~(SLAB - 1);
}

static int by_address(const void *a, const void *b) {
  uintptr_t x = (uintptr_t) * (void *const *)a, y = (uintptr_t) * (void *const *)b;
  return x < y ? -1 : x > y;
}

/* ---- fullest-first refill ---- */
enum { FF_MAX = 4096 };

typedef struct ff_s {
  size_t size;     /* block size (one class) */
  long long bound; /* tcache_bytes for the thread that runs it */
  /* results */
  int ok;          /* found two full slabs */
  size_t cap;      /* blocks per full slab */
  size_t free_a, free_b;
  size_t a_before_b_done; /* A's blocks handed out before B was full again */
  size_t b_got, others, bad;
  int valid;
} ff_t;

static uint8_t *ff_blk[FF_MAX], *ff_sorted[FF_MAX], *ff_new[FF_MAX];

static void *fullest_first(void *arg) {
  ff_t *r = arg;
  size_t n = r->size, count = FF_MAX;
  for (size_t i = 0; i < count; i++) {
    ff_blk[i] = trimalloc_malloc(n);
    if (!ff_blk[i]) return NULL;
    pattern_fill(ff_blk[i], n, pattern_seed(ff_blk[i], n));
  }
  memcpy(ff_sorted, ff_blk, sizeof ff_blk);
  qsort(ff_sorted, count, sizeof *ff_sorted, by_address);
  /* Blocks per slab; the full slabs are those with the most (the cache holds
   * the rest of the last slabs carved). */
  size_t cap = 0;
  for (size_t i = 0, j; i < count; i = j) {
    for (j = i; j < count && slab_of(ff_sorted[j]) == slab_of(ff_sorted[i]); j++) {
    }
    if (j - i > cap) cap = j - i;
  }
  /* A: the lowest full slab, B: the next full one above it. */
  size_t a0 = SIZE_MAX, b0 = SIZE_MAX;
  for (size_t i = 0, j; i < count; i = j) {
    for (j = i; j < count && slab_of(ff_sorted[j]) == slab_of(ff_sorted[i]); j++) {
    }
    if (j - i != cap) continue;
    if (a0 == SIZE_MAX)
      a0 = i;
    else if (b0 == SIZE_MAX)
      b0 = i;
  }
  r->cap = cap;
  if (a0 == SIZE_MAX || b0 == SIZE_MAX || cap < 10) return NULL;
  r->ok = 1;
  uintptr_t sa = slab_of(ff_sorted[a0]), sb = slab_of(ff_sorted[b0]);
  /* Free ~10% of B first, then ~90% of A. */
  for (size_t k = 0; k < cap; k++)
    if (k % 10 == 0) {
      trimalloc_free(ff_sorted[b0 + k]);
      ff_sorted[b0 + k] = NULL;
      r->free_b++;
    }
  for (size_t k = 0; k < cap; k++)
    if (k % 10 != 0) {
      trimalloc_free(ff_sorted[a0 + k]);
      ff_sorted[a0 + k] = NULL;
      r->free_a++;
    }
  trimalloc_trim(); /* flushes this thread's cache into the arena */
  /* Allocate until B is full again (or far more than B and A had free). */
  size_t got = 0, limit = r->free_a + r->free_b + 4 * cap;
  if (limit > FF_MAX) limit = FF_MAX;
  while (r->b_got < r->free_b && got < limit) {
    uint8_t *p = trimalloc_malloc(n);
    if (!p) break;
    pattern_fill(p, n, pattern_seed(p, n));
    ff_new[got++] = p;
    if (slab_of(p) == sb)
      r->b_got++;
    else if (slab_of(p) == sa)
      r->a_before_b_done++;
    else
      r->others++;
  }
  /* Every block still live kept its contents. */
  for (size_t i = 0; i < count; i++)
    if (ff_sorted[i] && !pattern_ok(ff_sorted[i], n, pattern_seed(ff_sorted[i], n))) r->bad++;
  for (size_t i = 0; i < got; i++)
    if (!pattern_ok(ff_new[i], n, pattern_seed(ff_new[i], n))) r->bad++;
  r->valid = trimalloc_check();
  for (size_t i = 0; i < count; i++) trimalloc_free(ff_sorted[i]);
  for (size_t i = 0; i < got; i++) trimalloc_free(ff_new[i]);
  return NULL;
}

/* Runs it on a new thread, which starts with an empty cache and takes the
 * tcache bound set just before. */
static void run_fullest_first(size_t size, long long bound, int strict) {
  long long old = option_swap("tcache_bytes", bound);
  ff_t r;
  memset(&r, 0, sizeof r);
  r.size = size;
  r.bound = bound;
  pthread_t t;
  pthread_create(&t, NULL, fullest_first, &r);
  pthread_join(t, NULL);
  trimalloc_option_set("tcache_bytes", old);
  if (!CHECK(r.ok, "size %zu: no two full slabs among %d blocks (%zu blocks per slab at most)", size, FF_MAX,
             r.cap))
    return;
  fprintf(stdout,
          "   size %zu, tcache_bytes %lld: %zu blocks a slab, freed %zu of A, %zu of B; B full again after "
          "%zu of A's and %zu others\n",
          size, bound, r.cap, r.free_a, r.free_b, r.a_before_b_done, r.others);
  CHECK(r.b_got == r.free_b, "size %zu, tcache_bytes %lld: only %zu of B's %zu free blocks came back", size,
        bound, r.b_got, r.free_b);
  if (strict)
    CHECK(r.a_before_b_done == 0,
          "size %zu, tcache_bytes %lld: %zu of A's blocks (90%% free) handed out before B (10%% free) was full",
          size, bound, r.a_before_b_done);
  else
    CHECK(r.a_before_b_done <= r.free_a / 2,
          "size %zu, tcache_bytes %lld: %zu of A's %zu free blocks handed out before B (10%% free) was full",
          size, bound, r.a_before_b_done, r.free_a);
  CHECK(r.bad == 0, "%zu blocks with wrong contents", r.bad);
  CHECK(r.valid, "trimalloc_check failed in the thread");
}

static void test_fullest_first_no_cache(void) {
  run_fullest_first(256, 0, 1);
}

static void test_fullest_first_small_cache(void) {
  run_fullest_first(320, 16 * 1024, 0);
}

static void test_fullest_first_default_cache(void) {
  run_fullest_first(192, option_value("tcache_bytes"), 0);
}

/* ---- exact purge of the free OS pages inside live slabs ---- */
enum { EP_SIZE = 64, EP_N = 16 * 1024 };
/* What to ask for so that a block takes EP_SIZE bytes: the hardened build
 * (make -C core hardened) keeps 8 bytes of each block for its canary. */
#ifdef TEST_HARDENED
enum { EP_REQ = EP_SIZE - 8 };
#else
enum { EP_REQ = EP_SIZE };
#endif
static uint8_t *ep_blk[EP_N];
static uint8_t ep_live[EP_N];

/* One entry per OS page the blocks touch. */
typedef struct page_s {
  uintptr_t addr;
  size_t freed_bytes; /* bytes of the page covered by freed blocks */
  int live;           /* a live block overlaps it */
} page_t;
static page_t ep_page[EP_N + 16];
static size_t ep_pages;

static page_t *page_find(uintptr_t a) {
  size_t lo = 0, hi = ep_pages;
  while (lo < hi) {
    size_t mid = (lo + hi) / 2;
    if (ep_page[mid].addr < a)
      lo = mid + 1;
    else
      hi = mid;
  }
  return lo < ep_pages && ep_page[lo].addr == a ? &ep_page[lo] : NULL;
}

/* Adds the block [p, p + n) to the pages it overlaps. */
static void page_account(const uint8_t *p, size_t n, int live) {
  uintptr_t ps = page_size(), a = (uintptr_t)p, end = a + n;
  for (uintptr_t pg = a & ~(ps - 1); pg < end; pg += ps) {
    page_t *e = page_find(pg);
    if (!e) continue;
    uintptr_t lo = a > pg ? a : pg, hi = end < pg + ps ? end : pg + ps;
    if (live)
      e->live = 1;
    else
      e->freed_bytes += hi - lo;
  }
}

static void test_exact_purge_in_live_slabs(void) {
  size_t ps = page_size();
  for (int i = 0; i < EP_N; i++) {
    ep_blk[i] = trimalloc_malloc(EP_REQ);
    if (!ep_blk[i]) {
      CHECK(0, "allocation %d of %d bytes failed", i, EP_REQ);
      return;
    }
    pattern_fill(ep_blk[i], EP_REQ, pattern_seed(ep_blk[i], EP_REQ));
  }
  qsort(ep_blk, EP_N, sizeof *ep_blk, by_address);
  /* The OS pages, in address order. */
  ep_pages = 0;
  for (int i = 0; i < EP_N; i++) {
    uintptr_t a = (uintptr_t)ep_blk[i], end = a + EP_SIZE;
    for (uintptr_t pg = a & ~(ps - 1); pg < end; pg += ps)
      if (!ep_pages || ep_page[ep_pages - 1].addr < pg) ep_page[ep_pages++] = (page_t){pg, 0, 0};
  }
  /* One live block on every 4th OS page (by page number), the first block
   * that starts on it; every other block is freed. */
  uintptr_t last_kept_page = 0;
  for (int i = 0; i < EP_N; i++) {
    uintptr_t pg = (uintptr_t)ep_blk[i] & ~(ps - 1);
    ep_live[i] = (pg / ps) % 4 == 0 && pg != last_kept_page;
    if (ep_live[i]) last_kept_page = pg;
  }
  for (int i = 0; i < EP_N; i++) page_account(ep_blk[i], EP_SIZE, ep_live[i]);
  for (int i = 0; i < EP_N; i++)
    if (!ep_live[i]) {
      trimalloc_free(ep_blk[i]);
      ep_blk[i] = NULL;
    }
  size_t released = trimalloc_trim();
  trimalloc_stats_t s = stats_now();
  /* mincore before any read of a live block (a read would fault a purged
   * page back in). */
  size_t want_purged = 0, not_purged = 0, want_resident = 0, not_resident = 0, errors = 0;
  uintptr_t first_bad = 0;
  for (size_t k = 0; k < ep_pages; k++) {
    page_t *e = &ep_page[k];
    int res = page_resident((void *)e->addr);
    if (res < 0) {
      errors++;
      continue;
    }
    if (e->live) {
      want_resident++;
      if (!res) not_resident++;
    } else if (e->freed_bytes == ps) {
      want_purged++;
      if (res) {
        not_purged++;
        if (!first_bad) first_bad = e->addr;
      }
    }
  }
  fprintf(stdout, "   %zu OS pages of %zu bytes: %zu with a live block, %zu wholly freed; trim released %zu KiB\n",
          ep_pages, ps, want_resident, want_purged, released / KiB);
  CHECK(errors == 0, "mincore failed on %zu pages", errors);
  CHECK(want_purged >= ep_pages / 2, "only %zu of %zu pages wholly freed: the test did not set up what it wants",
        want_purged, ep_pages);
  CHECK(not_purged == 0, "%zu of %zu OS pages without a live block still resident after trim (first at %p)",
        not_purged, want_purged, (void *)first_bad);
  CHECK(not_resident == 0, "%zu of %zu OS pages with a live block not resident after trim", not_resident,
        want_resident);
  CHECK(s.dirty == 0, "dirty %llu bytes right after a trim with no other thread", U(s.dirty));
  size_t bad = 0, live = 0;
  for (int i = 0; i < EP_N; i++)
    if (ep_blk[i]) {
      live++;
      if (!pattern_ok(ep_blk[i], EP_REQ, pattern_seed(ep_blk[i], EP_REQ))) bad++;
    }
  CHECK(bad == 0, "%zu of %zu live blocks damaged by the trim", bad, live);
  /* The purged pages are reused: new blocks there hold what is written. */
  for (int i = 0; i < EP_N; i++)
    if (!ep_blk[i]) {
      ep_blk[i] = trimalloc_malloc(EP_REQ);
      if (ep_blk[i]) pattern_fill(ep_blk[i], EP_REQ, pattern_seed(ep_blk[i], EP_REQ));
    }
  bad = 0;
  for (int i = 0; i < EP_N; i++) {
    if (!ep_blk[i] || !pattern_ok(ep_blk[i], EP_REQ, pattern_seed(ep_blk[i], EP_REQ))) bad++;
    trimalloc_free(ep_blk[i]);
  }
  CHECK(bad == 0, "%zu blocks wrong after reusing the purged pages", bad);
}

/* ---- a keyless slab's frees are cached ----
 * A purge that takes a page holding a free block's start makes its slab
 * keyless (the block's cookie word reads 0 there, so free's fast path could
 * not see a second free of it) and shuts the slab's fast free. The slab's
 * other blocks, freed, still go to the thread cache: the block's first page
 * tells a second free apart (purged: the block is free). Before, each went
 * through the slab's lock and bitmap: 5% of a Python task's frees, at 265
 * instructions each. test_misuse: a second free of the purged block is
 * still caught. */
static void test_keyless_slab_frees_are_cached(void) {
  enum { N = 2048, WANT = 16 };
  static uint8_t *b[N];
  const size_t n = 64, ps = page_size();
  if (ps >= SLAB) {
    fprintf(stdout, "   skipped: a slab is one OS page of %zu bytes (no other page of it to free into)\n", ps);
    return;
  }
  trimalloc_trim();
  for (int i = 0; i < N; i++) {
    b[i] = trimalloc_malloc(n);
    if (!CHECK(b[i] != NULL)) return;
  }
  uint8_t *p = b[N / 2];
  uintptr_t page = (uintptr_t)p & ~(uintptr_t)(ps - 1), slab = slab_of(p);
  for (int i = 0; i < N; i++)
    if ((uintptr_t)b[i] + n > page && (uintptr_t)b[i] < page + ps) {
      trimalloc_free(b[i]); /* p and its page-mates */
      b[i] = NULL;
    }
  trimalloc_trim(); /* the page is purged; the caller's cache is empty */
  trimalloc_stats_t s0 = stats_now();
  size_t k = 0;
  for (int i = 0; i < N && k < WANT; i++)
    if (b[i] && slab_of(b[i]) == slab) {
      trimalloc_free(b[i]);
      b[i] = NULL;
      k++;
    }
  trimalloc_stats_t s1 = stats_now();
  fprintf(stdout, "   %zu blocks of a keyless slab freed: thread caches %llu -> %llu bytes\n", k, U(s0.tcache_bytes),
          U(s1.tcache_bytes));
  CHECK(k == WANT, "only %zu blocks of the slab besides the purged page: the test did not set up what it wants", k);
  CHECK(s1.tcache_bytes >= s0.tcache_bytes + k * n,
        "%zu frees into a keyless slab: thread caches %llu -> %llu bytes (want them cached)", k, U(s0.tcache_bytes),
        U(s1.tcache_bytes));
  CHECK(trimalloc_check(), "the heap is not sound");
  /* realloc sizes a keyless slab's blocks without ta_usable_size: in place
   * within the class, moved beyond it, the bytes kept either way */
  for (int i = 0; i < N; i++)
    if (b[i] && slab_of(b[i]) == slab) {
      memset(b[i], 0x5a, n);
      uint8_t *r = trimalloc_realloc(b[i], n - 8);
      CHECK(r == b[i], "realloc within the class moved a keyless slab's block: %p -> %p", (void *)b[i], (void *)r);
      r = trimalloc_realloc(r, 4 * n);
      if (!CHECK(r != NULL)) break;
      size_t same = 0;
      while (same < n - 8 && r[same] == 0x5a) same++;
      CHECK(same == n - 8, "realloc out of a keyless slab kept %zu of %zu bytes", same, n - 8);
      b[i] = r;
      break;
    }
  for (int i = 0; i < N; i++) trimalloc_free(b[i]);
}

/* ---- a refill faults its pages in at once ---- */
/* A class of its own in this program, whose blocks span OS pages (10 a slab
 * at 6 KiB); what to ask for so that a block takes PA_SIZE bytes: */
enum { PA_SIZE = 6144 };
#ifdef TEST_HARDENED
enum { PA_REQ = PA_SIZE - 8 };
#else
enum { PA_REQ = PA_SIZE };
#endif

/* Is each OS page of [p, p + n) resident? 0/1 into out; returns the count. */
static size_t pa_resident(uintptr_t p, size_t n, int *out) {
  size_t ps = page_size(), k = 0;
  for (uintptr_t pg = p; pg < p + n; pg += ps) out[k++] = page_resident((void *)pg) == 1;
  return k;
}

/* Pages [0, upto] resident and the rest not: the count of those that differ. */
static size_t pa_wrong(const int *res, size_t pages, size_t upto) {
  size_t bad = 0;
  for (size_t k = 0; k < pages; k++) bad += res[k] != (k <= upto);
  return bad;
}

static void *populates(void *unused) {
  (void)unused;
  size_t ps = page_size();
  int real = populate_works(); /* else only what does not depend on it */
  if (!real) fprintf(stdout, "   MADV_POPULATE_WRITE does nothing here: residency not checked\n");
  trimalloc_trim();
  enum { N = (int)(SLAB / PA_SIZE) };
  void *b[N];
  int res[64];
  /* A fresh slab: its first block, written nowhere yet (the allocator writes
   * its link at the start), has both its pages resident. */
  b[0] = trimalloc_malloc(PA_REQ);
  uintptr_t slab = slab_of(b[0]);
  size_t pages = pa_resident(slab, SLAB, res);
  CHECK((uintptr_t)b[0] == slab, "the first block of the class is at its slab's start (%p)", b[0]);
  size_t bad = pa_wrong(res, pages, (PA_SIZE - 1) / ps);
  CHECK(bad == 0 || !real, "fresh slab: %zu of %zu pages not as expected (resident: 0..%zu, before any write)", bad,
        pages, (PA_SIZE - 1) / ps);
  /* Fill it, free all but the first block, trim: the pages wholly free are
   * purged. */
  int same = 1;
  for (int i = 1; i < N; i++) {
    b[i] = trimalloc_malloc(PA_REQ);
    same &= slab_of(b[i]) == slab;
  }
  CHECK(same, "the slab's %d blocks all come from it", N);
  for (int i = 1; i < N; i++) trimalloc_free(b[i]);
  trimalloc_trim();
  pa_resident(slab, SLAB, res);
  bad = pa_wrong(res, pages, (PA_SIZE - 1) / ps);
  CHECK(bad == 0, "after the trim %zu of %zu pages not as expected (resident: those of the first block)", bad,
        pages);
  /* The next block is the lowest free one (block 1): all its pages come
   * back before it is handed out. */
  b[1] = trimalloc_malloc(PA_REQ);
  CHECK(b[1] == (void *)(slab + PA_SIZE), "the lowest free block is reused first (%p)", b[1]);
  pa_resident(slab, SLAB, res);
  bad = pa_wrong(res, pages, (2 * PA_SIZE - 1) / ps);
  CHECK(bad == 0 || !real, "purged pages of a live slab: %zu of %zu pages not as expected (resident: 0..%zu)", bad,
        pages, (2 * PA_SIZE - 1) / ps);
  trimalloc_stats_t s = stats_now();
  CHECK(s.dirty == 0, "nothing populated is left unused: dirty %llu", U(s.dirty));
  CHECK(heap_valid(), "trimalloc_check after populating");
  trimalloc_free(b[0]);
  trimalloc_free(b[1]);
  return NULL;
}

/* A refill of several blocks populates the pages of them all before it
 * writes their links (one call, not a fault per page): a slab filled, then
 * emptied but for its lowest block and trimmed, has its free pages purged;
 * one malloc takes a batch of its lowest free blocks, and every page of
 * every block of the batch is resident, those of the blocks left free not. */
static void *populates_batch(void *unused) {
  (void)unused;
  size_t ps = page_size();
  enum { N = (int)(SLAB / PA_SIZE) };
  void *b[N];
  int res[64], want[64] = {0};
  trimalloc_trim();
  int same = 1, low = 0;
  for (int i = 0; i < N; i++) {
    b[i] = trimalloc_malloc(PA_REQ);
    same &= slab_of(b[i]) == slab_of(b[0]);
    if ((uintptr_t)b[i] < (uintptr_t)b[low]) low = i;
  }
  CHECK(same, "the slab's %d blocks all come from it", N);
  uintptr_t slab = slab_of(b[0]);
  for (int i = 0; i < N; i++)
    if (i != low) trimalloc_free(b[i]);
  trimalloc_trim();
  uint64_t cached0 = stats_now().tcache_bytes;
  void *q = trimalloc_malloc(PA_REQ);
  uint64_t cached = (stats_now().tcache_bytes - cached0) / PA_SIZE;
  CHECK(cached >= 2, "the refill took a batch of blocks (%llu left in the cache)", U(cached));
  /* in use: the lowest block and the batch, the next 1 + cached blocks */
  size_t first = ((uintptr_t)b[low] - slab) / PA_SIZE, pages = pa_resident(slab, SLAB, res);
  for (size_t j = first; j <= first + 1 + cached && j < (size_t)N; j++)
    for (size_t pg = j * PA_SIZE / ps; pg <= ((j + 1) * PA_SIZE - 1) / ps; pg++) want[pg] = 1;
  size_t bad = 0;
  for (size_t k = 0; k < pages; k++) bad += res[k] != want[k];
  CHECK(bad == 0 || !populate_works(), "a batch of %llu blocks taken from purged pages: %zu of %zu pages not as expected",
        U(cached + 1), bad, pages);
  CHECK(heap_valid(), "trimalloc_check after populating a batch");
  trimalloc_free(q);
  trimalloc_free(b[low]);
  trimalloc_trim();
  return NULL;
}

static void test_refill_populates_its_batch(void) {
  if (page_size() >= PA_SIZE) {
    fprintf(stdout, "   skipped: a %d-byte block is on one OS page of %zu bytes\n", PA_SIZE, page_size());
    return;
  }
  pthread_t t;
  pthread_create(&t, NULL, populates_batch, NULL);
  pthread_join(t, NULL);
}

/* On a new thread, which starts with an empty cache and takes the bound set
 * just before: tcache_bytes 0, so every malloc is a refill of one block. */
static void test_refill_populates_its_pages(void) {
  if (page_size() >= PA_SIZE) {
    fprintf(stdout, "   skipped: a %d-byte block is on one OS page of %zu bytes\n", PA_SIZE, page_size());
    return;
  }
  long long old = option_swap("tcache_bytes", 0);
  pthread_t t;
  pthread_create(&t, NULL, populates, NULL);
  pthread_join(t, NULL);
  option_swap("tcache_bytes", old);
}

int main(void) {
  /* One arena: every refill of a class comes from the same bin. */
  CHECK(trimalloc_option_set("arenas", 1) == 0, "arenas = 1");
  RUN(test_fullest_first_no_cache);
  RUN(test_fullest_first_small_cache);
  RUN(test_fullest_first_default_cache);
  RUN(test_exact_purge_in_live_slabs);
  RUN(test_keyless_slab_frees_are_cached);
  RUN(test_refill_populates_its_pages);
  RUN(test_refill_populates_its_batch);
  return check_summary();
}
