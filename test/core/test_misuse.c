/* Misuse the core can see cheaply (double free, a pointer that is not ours or
 * not a block start) prints exactly one line, `trimalloc: error: ...` naming
 * the call and the pointer, on stderr and aborts. Each case runs in a forked
 * child; the parent checks SIGABRT and the child's stderr.
 *
 * A double free may be caught when it happens or when the block comes off a
 * free list again (the core checks a free cookie at malloc time, so free
 * stays a few stores), so after a double free the child goes on allocating
 * that size, as any program would. */
#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/wait.h>

#include "check.h"
#include "../../core/internal.h"

static int global_var[16];

/* Each case tells the parent (on ANNOUNCE_FD) which pointer it misuses, then does it.
 * Returning means the misuse went unnoticed. */
enum { ANNOUNCE_FD = 100 };
static void announce(const void *p) {
  dprintf(ANNOUNCE_FD, "%lx\n", (unsigned long)(uintptr_t)p);
}

/* Goes on allocating blocks of n bytes, as a program would after the misuse. */
static void carry_on(size_t n) {
  for (int i = 0; i < 4096; i++) {
    void *q = trimalloc_malloc(n);
    if (q) memset(q, 0x66, n < 64 ? n : 64);
  }
}

static void double_free_of(size_t n) {
  void *keep = trimalloc_malloc(n); /* a live neighbour, so the page stays */
  void *p = trimalloc_malloc(n);
  announce(p);
  trimalloc_free(p);
  trimalloc_free(p);
  (void)keep;
  carry_on(n);
}

static void case_double_free_small(void) {
  double_free_of(64);
}
static void case_double_free_medium(void) {
  double_free_of(20 * KiB);
}
static void case_double_free_large(void) {
  double_free_of(300 * KiB);
}
static void case_double_free_huge(void) {
  double_free_of(5 * MiB);
}

static void case_double_free_after_other_frees(void) {
  void *p[32];
  for (int i = 0; i < 32; i++) p[i] = trimalloc_malloc(48);
  announce(p[7]);
  for (int i = 0; i < 32; i += 2) trimalloc_free(p[i]);
  trimalloc_free(p[7]);
  trimalloc_free(p[9]);
  trimalloc_free(p[7]);
  carry_on(48);
}

/* A double free with the block's cookie word wiped in between (a write after
 * free): the free fast path cannot see it, so the block is in the thread
 * cache twice; the flush into its slab (here a trim's) finds its bit already
 * set. Unchecked, the slab would count the block free twice and hand it out
 * twice. */
static __attribute__((unused)) void case_double_free_wiped_cookie(void) {
  void *p = trimalloc_malloc(80), *q = trimalloc_malloc(80);
  announce(p);
  trimalloc_free(p);
  ((volatile uintptr_t *)p)[1] = 0;
  trimalloc_free(q);
  trimalloc_free(p);
  trimalloc_trim();
  carry_on(80);
}

/* A wild write over a slab's free bitmap (the segment header): the slab,
 * fully carved and left on its bin's lists with one live block, seems to
 * have free blocks and gives none. Reported at the next refill from it; it
 * used to spin there for ever with the bin lock held. */
static void case_bitmap_wiped(void) {
  enum { N = 400, SIZE = 3000 };
  static void *b[N];
  for (int i = 0; i < N; i++) b[i] = trimalloc_malloc(SIZE);
  ta_segment_t *s = ta_segment_of(b[0]);
  ta_span_t *sp = ta_span_of(s, b[0]);
  uint8_t *lo = sp->start, *hi = sp->start + (size_t)sp->reserved * sp->bsize;
  for (int i = 1; i < N; i++) /* all but b[0] of its slab, which is fully carved */
    if ((uint8_t *)b[i] >= lo && (uint8_t *)b[i] < hi) trimalloc_free(b[i]);
  trimalloc_trim(); /* the caches' blocks back in the slab's bitmap */
  announce(sp->start);
  size_t from = (size_t)(lo - (uint8_t *)s) >> TA_GRANULE_SHIFT >> 6, to = (size_t)(hi - 1 - (uint8_t *)s) >> TA_GRANULE_SHIFT >> 6;
  memset(&ta_segbits(s)->free[from], 0, (to + 1 - from) * sizeof(uint64_t));
  carry_on(SIZE);
}

/* A double free of a block whose OS page was purged in between: the purge
 * zeroed the block's cookie word, so the free fast path's test cannot see
 * it; the slab's free bitmap still knows the block is free (issue 17, item
 * 1: v2/v3 took the second free, and handed the block out twice). */
static void double_free_after_purge_of(size_t n) {
  enum { COUNT = 2048 };
  static uint8_t *b[COUNT];
  size_t ps = page_size();
  for (int i = 0; i < COUNT; i++) b[i] = trimalloc_malloc(n);
  /* a block whose OS page holds no other live block once its page-mates go */
  uint8_t *p = b[COUNT / 2];
  uintptr_t page = (uintptr_t)p & ~(uintptr_t)(ps - 1);
  for (int i = 0; i < COUNT; i++) {
    uintptr_t a = (uintptr_t)b[i];
    if (a + n > page && a < page + ps) trimalloc_free(b[i]); /* p and every block on its page */
  }
  trimalloc_trim(); /* the page is purged: it reads 0 */
  announce(p);
  trimalloc_free(p);
  carry_on(n);
}
/* realloc of an interior pointer into a live block of a keyless slab (a
 * purged page holds a free block's start: the fast bound is shut, and
 * realloc's slow path sizes the slab's blocks itself): still reported. */
static void case_realloc_interior_keyless(void) {
  enum { COUNT = 2048 };
  static uint8_t *b[COUNT];
  const size_t n = 64, ps = page_size();
  for (int i = 0; i < COUNT; i++) b[i] = trimalloc_malloc(n);
  uint8_t *p = b[COUNT / 2], *q = NULL;
  uintptr_t page = (uintptr_t)p & ~(uintptr_t)(ps - 1), slab = (uintptr_t)p & ~(uintptr_t)0xffff;
  for (int i = 0; i < COUNT; i++) {
    uintptr_t a = (uintptr_t)b[i];
    if (a + n > page && a < page + ps) trimalloc_free(b[i]); /* p's page: purged by the trim */
    else if (!q && (a & ~(uintptr_t)0xffff) == slab) q = b[i]; /* a live block of the same slab */
  }
  trimalloc_trim();
  if (!q) q = b[0]; /* (a slab of one page: no keyless slab to test; the case still must report) */
  announce(q + 16);
  q = trimalloc_realloc(q + 16, 32);
  carry_on(n);
}
static void case_double_free_after_purge(void) {
  double_free_after_purge_of(64);
}
static void case_double_free_after_purge_medium(void) {
  double_free_after_purge_of(3000);
}

static void *free_it(void *p) {
  trimalloc_free(p);
  return NULL;
}

static void case_double_free_from_other_thread(void) {
  void *keep = trimalloc_malloc(128);
  void *p = trimalloc_malloc(128);
  announce(p);
  trimalloc_free(p);
  pthread_t t;
  pthread_create(&t, NULL, free_it, p);
  pthread_join(t, NULL);
  (void)keep;
  carry_on(128);
}

static void interior_of(size_t n, size_t off) {
  uint8_t *p = trimalloc_malloc(n);
  announce(p + off);
  trimalloc_free(p + off);
}

static void case_interior_small(void) {
  interior_of(64, 16);
}
static void case_interior_small_unaligned(void) {
  interior_of(64, 1);
}
static void case_interior_large(void) {
  interior_of(300 * KiB, 4096);
}
static void case_interior_huge(void) {
  interior_of(5 * MiB, page_size());
}

/* A block start in a slab that was never handed out: free must not take it
 * (it would be handed out later, and again when the slab carves it). */
static uint8_t *never_carved_of(size_t n, size_t last) {
  uint8_t *p = trimalloc_malloc(n);
  size_t bs = (trimalloc_malloc_usable_size(p) + 15) & ~(size_t)15; /* the block (a hardened build's canary) */
  /* A slab of these sizes is one 64 KiB slice, aligned; p is any block of
   * the first refill (the list hands out the last one carved first). */
  uint8_t *slab = (uint8_t *)((uintptr_t)p & ~(uintptr_t)0xffff);
  return slab + last * bs; /* the slab's last block: one refill carves fewer */
}
static uint8_t *never_carved(void) {
  return never_carved_of(7000, 8); /* 7 KiB class: 9 blocks in a 64 KiB slab */
}
static void case_never_carved(void) {
  uint8_t *q = never_carved();
  announce(q);
  trimalloc_free(q);
}
/* A power-of-two size, whose frees the fast path takes (ta_div_magic's + 1
 * for powers of two): its single compare must still tell "never carved". */
static void case_never_carved_pow2(void) {
  uint8_t *q = never_carved_of(8192, 7); /* 8 blocks in a 64 KiB slab, 4 per refill */
  announce(q);
  trimalloc_free(q);
}
static void case_realloc_never_carved(void) {
  uint8_t *q = never_carved();
  announce(q);
  q = trimalloc_realloc(q, 10);
}

/* A write after free over a cached block's link (as a use-after-free would
 * do): the masked link decodes to garbage, which the next malloc of that
 * size reports instead of following. */
static void case_write_after_free_link(void) {
  void *keep = trimalloc_malloc(96);
  uint64_t *p = trimalloc_malloc(96);
  announce(p);
  trimalloc_free(p);
  p[0] = 0x4141414141414141ull;
  (void)keep;
  carry_on(96);
}

/* ... and over its cookie word. */
static void case_write_after_free_cookie(void) {
  uint64_t *p = trimalloc_malloc(96);
  announce(p);
  trimalloc_free(p);
  p[1] = 0;
  carry_on(96);
}

#ifdef TEST_HARDENED
/* The hardened build (make -C core hardened) ends each slab block with a
 * canary: a write one byte past the usable size is reported at the free. */
static void case_overflow_past_usable(void) {
  uint8_t *p = trimalloc_malloc(100);
  size_t u = trimalloc_malloc_usable_size(p);
  announce(p);
  p[u] = 0x77;
  trimalloc_free(p);
}
#endif

/* ... and the very next malloc of the class reports it (the hardened build
 * holds a freed block back behind others, and checks them at the pop). */
static void case_write_after_free_next_malloc(void) {
  void *keep = trimalloc_malloc(4096);
  uint8_t *p = trimalloc_malloc(4096);
  announce(p);
  trimalloc_free(p);
  memset(p, 'A', 4096);
  (void)trimalloc_malloc(4096);
  (void)keep;
}

/* Blocks of size 0 live in memory no access reaches (zero.c): a read or a
 * write of one faults at once (it went into a 16-byte block unnoticed). */
static volatile char sink;
static void case_zero_size_read(void) {
  char *p = trimalloc_malloc(0);
  announce(p);
  sink = *(volatile char *)p;
}
static void case_zero_size_write(void) {
  char *p = trimalloc_calloc(0, 8);
  announce(p);
  *(volatile char *)p = 'A';
}
static void case_zero_size_double_free(void) {
  void *keep = trimalloc_malloc(0);
  void *p = trimalloc_malloc(0);
  announce(p);
  trimalloc_free(p);
  trimalloc_free(p);
  (void)keep;
}

/* A segment's slices stay inaccessible until a span takes them
 * (ta_segment_commit): a stray write far past the blocks in use faults, as
 * past glibc's heap top (a write 1 MiB past a block went into unused heap). */
static void case_past_heap_in_use(void) {
  uint8_t *p = trimalloc_malloc(64);
  uint8_t *end = (uint8_t *)((uintptr_t)p | (uintptr_t)(4 * MiB - 1)); /* the segment's last byte */
  announce(end);
  *(volatile uint8_t *)end ^= 'A';
}

/* A sized free (C23 free_sized, C++'s sized delete) whose size malloc could
 * not have answered with the block: delete of an array as an object, or
 * through the wrong type. */
static void case_free_sized_smaller(void) {
  void *p = trimalloc_malloc(4096);
  announce(p);
  trimalloc_free_sized(p, 1);
}
static void case_free_sized_larger(void) {
  void *p = trimalloc_malloc(8);
  announce(p);
  trimalloc_free_sized(p, 72);
}

/* The end of a huge block's header, just before the block, stays zero: a
 * write there is reported at the free. */
static void huge_underflow_of(size_t by) {
  uint8_t *p = trimalloc_malloc(5 * MiB);
  announce(p);
  p[-(ptrdiff_t)by] ^= 'A';
  trimalloc_free(p);
}
static void case_huge_underflow_1(void) {
  huge_underflow_of(1);
}
static void case_huge_underflow_32(void) {
  huge_underflow_of(32);
}

#ifndef TEST_HARDENED
/* The default build's large block from malloc ends with its span, after a
 * canary of 32 bytes checked at its free: a write before the block is
 * reported there (mimalloc-bench's one_byte_underflow_large and
 * 32_byte_underflow_large). 256 KiB: whole slices, the canary takes one
 * more; 200 KiB + 48: in the slack of the rounding. */
static void large_underflow_of(size_t n, size_t by) {
  uint8_t *p = trimalloc_malloc(n);
  announce(p);
  p[-(ptrdiff_t)by] ^= 'A';
  trimalloc_free(p);
}
static void case_large_underflow_1(void) {
  large_underflow_of(256 * KiB, 1);
}
static void case_large_underflow_32(void) {
  large_underflow_of(200 * KiB + 48, 32);
}

/* A freed large block keeps a mark in its first 16 bytes until its span is
 * taken again or merged with a span freed next to it: a write after the
 * free is reported then (mimalloc-bench's write_after_free_reuse_large).
 * The hardened build keeps a freed large span inaccessible instead. */
static void case_large_write_after_free_reuse(void) {
  uint8_t *p = trimalloc_malloc(256 * KiB);
  announce(p);
  trimalloc_free(p);
  memset(p, 'A', 256 * KiB);
  for (int i = 0; i < 64; i++) trimalloc_malloc(256 * KiB); /* until its span is taken */
}
/* The same, the span taken by a new slab (32 KiB blocks, 4 slices) under
 * its bin's lock, with a SIGABRT handler that allocates from that class (a
 * crash reporter's buffer): the report releases the bin lock as well as the
 * arena's, so the handler's malloc refills and the process ends on its
 * SIGABRT, where it hung on the bin lock until the alarm before. */
static void abort_handler_mallocs(int sig) {
  void *volatile q = trimalloc_malloc(32 * KiB);
  (void)q;
  signal(sig, SIG_DFL);
  raise(sig);
}
static void case_large_write_after_free_slab(void) {
  signal(SIGABRT, abort_handler_mallocs);
  uint8_t *p = trimalloc_malloc(256 * KiB);
  announce(p);
  trimalloc_free(p);
  memset(p, 'A', 256 * KiB);
  for (int i = 0; i < 4096; i++) trimalloc_malloc(32 * KiB); /* until a slab takes its span */
}
static void case_large_write_after_free_merge(void) {
  uint8_t *p = trimalloc_malloc(300 * KiB), *q = trimalloc_malloc(300 * KiB);
  void *keep = trimalloc_malloc(300 * KiB); /* q's span has a live one after it */
  announce(p);
  trimalloc_free(p);
  p[8] ^= 'A';
  trimalloc_free(q); /* merges with p's free span */
  (void)keep;
}
#endif

#ifdef TEST_HARDENED
/* The hardened build puts a large block between two inaccessible pages and
 * keeps a freed one inaccessible until its span is taken again. */
static void case_large_overflow_guard(void) {
  uint8_t *p = trimalloc_malloc(256 * KiB);
  announce(p);
  p[trimalloc_malloc_usable_size(p)] ^= 'A';
}
static void case_large_underflow_guard(void) {
  uint8_t *p = trimalloc_malloc(200 * KiB + 48);
  announce(p);
  size_t ps = page_size();
  uint8_t *page = (uint8_t *)((uintptr_t)p & ~(uintptr_t)(ps - 1));
  page[-1] ^= 'A';
}
/* grown in place by realloc: the tail guard moved to the new end */
static void case_large_overflow_after_growth(void) {
  uint8_t *p = trimalloc_malloc(200 * KiB);
  uint8_t *q = trimalloc_realloc(p, 330 * KiB);
  announce(q);
  q[trimalloc_malloc_usable_size(q)] ^= 'A';
}
static void case_large_write_after_free(void) {
  uint8_t *p = trimalloc_malloc(256 * KiB);
  announce(p);
  trimalloc_free(p);
  memset(p, 'A', 256 * KiB);
}
#endif

/* A pointer into the segment header (descriptors and bitmaps). */
static void case_metadata_pointer(void) {
  uint8_t *p = trimalloc_malloc(64);
  uint8_t *hdr = (uint8_t *)((uintptr_t)p & ~(uintptr_t)(4 * MiB - 1)) + 256;
  announce(hdr);
  trimalloc_free(hdr);
}

static void case_stack_pointer(void) {
  char buf[64];
  announce(buf + 16);
  trimalloc_free(buf + 16);
}

static void case_global_pointer(void) {
  announce(&global_var[4]);
  trimalloc_free(&global_var[4]);
}

static void case_mmap_pointer(void) {
  size_t len = 8 * MiB;
  uint8_t *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  /* A 4 MiB-aligned address inside our own mapping looks like a segment start. */
  uint8_t *p = (uint8_t *)(((uintptr_t)m + 4 * MiB - 1) & ~(uintptr_t)(4 * MiB - 1)) + 64;
  announce(p);
  trimalloc_free(p);
}

static void case_glibc_pointer(void) {
  void *p = malloc(100); /* the process's own malloc: glibc's in this test */
  announce(p);
  trimalloc_free(p);
}

static void case_wild_pointers(void) {
  /* High in the address space: the ownership lookup must not fault. */
  void *p = (void *)(uintptr_t)0xfffffffffffff000ull;
  announce(p);
  trimalloc_free(p);
}

static void case_low_pointer(void) {
  void *p = (void *)(uintptr_t)0x10;
  announce(p);
  trimalloc_free(p);
}

static void case_realloc_stack_pointer(void) {
  char buf[64];
  announce(buf);
  void *q = trimalloc_realloc(buf, 1000);
  (void)q;
}

static void case_realloc_freed_block(void) {
  void *keep = trimalloc_malloc(200);
  void *p = trimalloc_malloc(200);
  announce(p);
  trimalloc_free(p);
  void *q = trimalloc_realloc(p, 400);
  (void)q;
  (void)keep;
  carry_on(200);
}

typedef struct misuse_s {
  const char *name, *call;
  void (*fn)(void);
  int fault; /* 1: the access itself faults (SIGSEGV, no line); else SIGABRT after one line */
} misuse_t;

static const misuse_t cases[] = {
    {"double free, 64 B", "free", case_double_free_small, 0},
    {"double free, 20 KiB", "free", case_double_free_medium, 0},
    {"double free, 300 KiB", "free", case_double_free_large, 0},
    {"double free, 5 MiB", "free", case_double_free_huge, 0},
    {"double free after other frees", "free", case_double_free_after_other_frees, 0},
    {"double free from another thread", "free", case_double_free_from_other_thread, 0},
#ifndef TEST_HARDENED /* its delayed push tangles the list, and its malloc reports another block */
    {"double free behind a wiped cookie, caught at the flush", "free", case_double_free_wiped_cookie, 0},
#endif
    {"double free after the block's page was purged, 64 B", "free", case_double_free_after_purge, 0},
    {"double free after the block's page was purged, 3000 B", "free", case_double_free_after_purge_medium, 0},
    {"interior pointer, small block", "free", case_interior_small, 0},
    {"interior pointer, unaligned", "free", case_interior_small_unaligned, 0},
    {"interior pointer, large block", "free", case_interior_large, 0},
    {"interior pointer, huge block", "free", case_interior_huge, 0},
    {"write after free over a cached link", "malloc", case_write_after_free_link, 0},
    {"write after free over a cached cookie", "malloc", case_write_after_free_cookie, 0},
    {"never-carved block in a slab", "free", case_never_carved, 0},
    {"a slab's free bitmap wiped", "malloc", case_bitmap_wiped, 0},
    {"never-carved block in a slab of 8 KiB blocks", "free", case_never_carved_pow2, 0},
#ifdef TEST_HARDENED
    {"write past the usable size (hardened build)", "free", case_overflow_past_usable, 0},
#endif
    {"realloc of a never-carved block", "realloc", case_realloc_never_carved, 0},
    {"realloc of an interior pointer into a keyless slab", "realloc", case_realloc_interior_keyless, 0},
    {"pointer into a segment header", "free", case_metadata_pointer, 0},
    {"stack pointer", "free", case_stack_pointer, 0},
    {"pointer to a global", "free", case_global_pointer, 0},
    {"pointer into a foreign mmap", "free", case_mmap_pointer, 0},
    {"pointer from glibc malloc", "free", case_glibc_pointer, 0},
    {"pointer near the top of the address space", "free", case_wild_pointers, 0},
    {"pointer 0x10", "free", case_low_pointer, 0},
    {"realloc of a stack pointer", "realloc", case_realloc_stack_pointer, 0},
    {"realloc of a freed block", "realloc", case_realloc_freed_block, 0},
#ifdef TEST_HARDENED /* the default build gives malloc(0) a 16-byte block (core/size.c) */
    {"double free of a zero-size block", "free", case_zero_size_double_free, 0},
#endif
    {"write after free, then one malloc of its class", "malloc", case_write_after_free_next_malloc, 0},
    {"free_sized with a smaller size than the block's class", "free_sized", case_free_sized_smaller, 0},
    {"free_sized with a size larger than the block", "free_sized", case_free_sized_larger, 0},
    {"write one byte before a huge block", "free", case_huge_underflow_1, 0},
    {"write 32 bytes before a huge block", "free", case_huge_underflow_32, 0},
#ifndef TEST_HARDENED /* the hardened build's guard pages make these faults */
    {"write one byte before a large block of whole slices", "free", case_large_underflow_1, 0},
    {"write 32 bytes before a large block", "free", case_large_underflow_32, 0},
    {"write after free into a large block, then mallocs of its size", "malloc", case_large_write_after_free_reuse, 0},
    {"write after free into a large block, then the free of its neighbour", "free", case_large_write_after_free_merge, 0},
    {"write after free into a large block, then a slab takes it, a SIGABRT handler allocating", "malloc",
     case_large_write_after_free_slab, 0},
#endif
    /* Faults: the sanitizers catch SIGSEGV themselves (main skips these there). */
#ifdef TEST_HARDENED /* the default build gives malloc(0) a 16-byte block (core/size.c) */
    {"read of a zero-size block", "", case_zero_size_read, 1},
#endif
#ifdef TEST_HARDENED /* the default build gives malloc(0) a 16-byte block (core/size.c) */
    {"write to a zero-size block", "", case_zero_size_write, 1},
#endif
    {"write far past the blocks in use", "", case_past_heap_in_use, 1},
#ifdef TEST_HARDENED
    {"write one byte past a large block (hardened build)", "", case_large_overflow_guard, 1},
    {"write before a large block's first page (hardened build)", "", case_large_underflow_guard, 1},
    {"write to a freed large block (hardened build)", "", case_large_write_after_free, 1},
    {"write one byte past a large block grown in place (hardened build)", "", case_large_overflow_after_growth, 1},
#endif
};

static ssize_t read_all(int fd, char *buf, size_t len) {
  size_t n = 0;
  for (;;) {
    ssize_t r = read(fd, buf + n, len - 1 - n);
    if (r < 0 && errno == EINTR) continue;
    if (r <= 0) break;
    n += (size_t)r;
    if (n == len - 1) break;
  }
  buf[n] = 0;
  return (ssize_t)n;
}

/* qemu-user reports a program's death by a signal on its stderr itself
 * ("qemu: uncaught target signal 6 (Aborted) - core dumped"): not our line. */
static void drop_emulator_lines(char *text) {
  for (char *l = text; (l = strstr(l, "qemu: uncaught target signal ")) != NULL;) {
    if (l != text && l[-1] != '\n') {
      l++;
      continue;
    }
    char *next = strchr(l, '\n');
    next = next ? next + 1 : l + strlen(l);
    memmove(l, next, strlen(next) + 1);
  }
}

static void run_case(const misuse_t *c) {
  int err[2], ptr[2];
  if (pipe(err) || pipe(ptr)) abort();
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(10);
    close(err[0]);
    close(ptr[0]);
    dup2(err[1], 2);
    dup2(ptr[1], ANNOUNCE_FD);
    /* Warm the allocator up, so the line is not mixed with start-up output. */
    trimalloc_free(trimalloc_malloc(1));
    c->fn();
    _exit(0);
  }
  close(err[1]);
  close(ptr[1]);
  char text[4096], addr[64];
  read_all(err[0], text, sizeof text);
  if (test_runner()) drop_emulator_lines(text);
  read_all(ptr[0], addr, sizeof addr);
  close(err[0]);
  close(ptr[0]);
  int st = 0;
  waitpid(pid, &st, 0);
  char *nl = strchr(addr, '\n');
  if (nl) *nl = 0;
  if (c->fault) {
    CHECK(WIFSIGNALED(st) && (WTERMSIG(st) == SIGSEGV || WTERMSIG(st) == SIGBUS), "%s: child %s %d, stderr: %s",
          c->name, WIFSIGNALED(st) ? "got signal" : "exited with", WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st),
          text[0] ? text : "(nothing)\n");
    return;
  }
  int aborted = WIFSIGNALED(st) && WTERMSIG(st) == SIGABRT;
  int one_line = strlen(text) > 0 && strchr(text, '\n') == text + strlen(text) - 1;
  int prefix = !strncmp(text, "trimalloc: error: ", 18);
  /* realloc may report through the free it calls. */
  int names = (strstr(text, c->call) || strstr(text, "free")) && addr[0] && strstr(text, addr);
  CHECK(aborted, "%s: child %s %d, stderr: %s", c->name, WIFSIGNALED(st) ? "got signal" : "exited with",
        WIFSIGNALED(st) ? WTERMSIG(st) : WEXITSTATUS(st), text[0] ? text : "(nothing)\n");
  CHECK(one_line && prefix, "%s: want exactly one 'trimalloc: error: ...' line, got: %s", c->name,
        text[0] ? text : "(nothing)\n");
  CHECK(!prefix || names, "%s: the line should name %s() and 0x%s: %s", c->name, c->call, addr, text);
}

static void test_misuse_aborts_with_one_line(void) {
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++)
    if (!cases[i].fault || !TEST_SANITIZED) run_case(&cases[i]);
}

/* The checks are not false alarms: the same calls on valid pointers pass. */
static void test_valid_use_does_not_abort(void) {
  int st = 0;
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(10);
    static const size_t sizes[] = {64, 20 * KiB, 300 * KiB, 5 * MiB};
    for (int i = 0; i < 4; i++) {
      void *p = trimalloc_malloc(sizes[i]);
      trimalloc_free(p);
      p = trimalloc_malloc(sizes[i]); /* likely the same address again */
      trimalloc_free(p);
    }
    void *q = trimalloc_realloc(trimalloc_malloc(10), 100000);
    trimalloc_free(q);
    /* large blocks (a front canary, a mark when freed): all of the usable
     * size written, freed next to free spans (the marks checked at the
     * merges), taken again */
    uint8_t *l[6];
    for (int i = 0; i < 6; i++) {
      l[i] = trimalloc_malloc(i % 2 ? 256 * KiB : 200 * KiB + 48);
      memset(l[i], 0x5a, trimalloc_malloc_usable_size(l[i]));
    }
    for (int i = 0; i < 6; i += 2) trimalloc_free(l[i]);
    for (int i = 1; i < 6; i += 2) trimalloc_free(l[i]);
    for (int i = 0; i < 6; i++) trimalloc_free(trimalloc_malloc(256 * KiB));
    /* huge blocks whose header end is checked at free: aligned (a gap
     * before the block), reusing a dirty cached mapping, grown by mremap */
    for (size_t align = 64; align <= 64 * KiB; align *= 4) {
      uint8_t *h = trimalloc_malloc(6 * MiB);
      memset(h, 0x5a, 6 * MiB);
      trimalloc_free(h);
      void *a = NULL;
      if (trimalloc_posix_memalign(&a, align, 5 * MiB) == 0) trimalloc_free(trimalloc_realloc(a, 9 * MiB));
    }
    _exit(0);
  }
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
}

/* Size 0: a distinct address each time, usable size 0, and realloc, free
 * and calloc take them as any block. */
static void test_zero_size_blocks(void) {
  enum { N = 1000 };
  static void *z[N];
  int null = 0, usable = 0, misaligned = 0, twice = 0;
  for (int i = 0; i < N; i++) {
    z[i] = i % 2 ? trimalloc_malloc(0) : trimalloc_calloc(0, 16);
    null += z[i] == NULL;
    usable += z[i] && trimalloc_malloc_usable_size(z[i]) != 0;
    misaligned += ((uintptr_t)z[i] & 15) != 0;
    twice += i && z[i] == z[i - 1];
  }
  CHECK(!null && !misaligned && !twice, "of %d: %d NULL, %d misaligned, %d the same as the one before", N, null,
        misaligned, twice);
  CHECK(!usable, "%d of %d had a usable size (%zu) other than 0", usable, N, trimalloc_malloc_usable_size(z[1]));
  uint8_t *r = trimalloc_realloc(z[0], 100);
  CHECK(r != NULL && r != z[0], "realloc of a zero-size block: %p", (void *)r);
  memset(r, 1, 100);
  trimalloc_free(r);
  for (int i = 1; i < N; i++) trimalloc_free(z[i]);
  void *again = trimalloc_malloc(0);
  CHECK(again != NULL, "malloc(0) after the frees");
  trimalloc_free(again);
  CHECK(trimalloc_check(), "heap check");
}

/* free_sized with the size each block was allocated (or shrunk in place)
 * with is never reported, at every kind of block. */
static void test_free_sized_valid(void) {
  int st = 0;
  fflush(stdout);
  pid_t pid = fork();
  if (pid == 0) {
    alarm(20);
    static const size_t sizes[] = {0,        1,         8,         16,        17,       100,     1000,
                                   4096,     20 * KiB,  128 * KiB - 8, 128 * KiB, 200 * KiB, 256 * KiB,
                                   MiB,      2 * MiB,   3 * MiB,   5 * MiB};
    for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
      trimalloc_free_sized(trimalloc_malloc(sizes[i]), sizes[i]);
      trimalloc_free_sized(trimalloc_calloc(1, sizes[i]), sizes[i]);
      size_t half = sizes[i] / 2 + sizes[i] / 4; /* realloc keeps the block */
      trimalloc_free_sized(trimalloc_realloc(trimalloc_malloc(sizes[i]), half ? half : 1), half ? half : 1);
    }
    trimalloc_free_sized(NULL, 5);
    _exit(0);
  }
  waitpid(pid, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "status %d", st);
}

#ifdef TEST_HARDENED
/* The hardened build does not give the block just freed to the next malloc
 * of its class (mimalloc-bench's malloc_reuse), even when its bin held no
 * other block. */
static void test_no_immediate_reuse(void) {
  static const size_t sizes[] = {8, 64, 4096, 20 * KiB, 100 * KiB};
  for (size_t i = 0; i < sizeof sizes / sizeof sizes[0]; i++) {
    for (int k = 0; k < 3; k++) {
      void *p = trimalloc_malloc(sizes[i]);
      trimalloc_free(p);
      void *q = trimalloc_malloc(sizes[i]);
      CHECK(q != p, "%zu bytes: the block just freed came back (round %d)", sizes[i], k);
      trimalloc_free(q);
    }
  }
}
#endif

/* A large block still grows in place: between guard pages (hardened: its
 * tail guard moves to the new end), or after its front canary (default:
 * checked at the free), and all of its usable size is writable after. */
static void test_large_growth_in_place(void) {
  int in_place = 0;
  for (int k = 0; k < 8; k++) {
    uint8_t *p = trimalloc_malloc(150 * KiB + 16 * (size_t)k);
    memset(p, 7, trimalloc_malloc_usable_size(p));
    uint8_t *q = trimalloc_realloc(p, 400 * KiB);
    in_place += q == p;
    size_t u = trimalloc_malloc_usable_size(q);
    CHECK(u >= 400 * KiB && q[150 * KiB - 1] == 7, "usable %zu, kept %d", u, q[150 * KiB - 1]);
    memset(q, 8, u); /* the old guard page is inside the block now */
    trimalloc_free(q);
  }
  CHECK(in_place > 0, "no growth in place of 8");
}

int main(void) {
  RUN(test_valid_use_does_not_abort);
#ifdef TEST_HARDENED
  RUN(test_zero_size_blocks);
#endif
  RUN(test_free_sized_valid);
#ifdef TEST_HARDENED
  RUN(test_no_immediate_reuse);
#endif
  RUN(test_large_growth_in_place);
  RUN(test_misuse_aborts_with_one_line);
  return check_summary();
}
