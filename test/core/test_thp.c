/* Transparent huge pages (option thp): what the kernel makes resident in a
 * huge-page segment, the allocator sees and returns. Run where the kernel
 * gives huge pages to a range that asks (THP "always" or "madvise", a
 * probe mapping gets one); skipped elsewhere.
 *  - A fresh huge-page segment holding one small block keeps its first
 *    2 MiB (the header's huge page) at most 256 KiB resident (v2: the header
 *    write faulted the whole huge page in, 2 MiB that neither the stats nor a
 *    trim saw).
 *  - A huge page whose only block is freed is returned whole by a trim: at
 *    most 64 KiB of it resident after (v2 returned the pages it had counted
 *    and split the huge page, keeping the rest: about 2 MiB).
 *  - Stats' resident counts the huge page holding that block whole (issue
 *    17, 8(h): it counted the block's OS pages, 2 MiB under), and not after
 *    the trim. */
#include <sys/mman.h>

#include "check.h"

#define HUGE_PAGE (2 * MiB)

static size_t resident_bytes(const void *p, size_t n) {
  size_t ps = page_size(), count = 0;
  unsigned char vec[1024];
  if (n / ps > sizeof vec || mincore((void *)p, n, vec) != 0) return SIZE_MAX;
  for (size_t i = 0; i < n / ps; i++) count += vec[i] & 1;
  return count * ps;
}

/* Does a range that asks for huge pages get one at its first touch? */
static bool kernel_gives_huge_pages(void) {
  if (page_size() != 4096) return false;
  uint8_t *m = mmap(NULL, 2 * HUGE_PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (m == MAP_FAILED) return false;
  uint8_t *p = (uint8_t *)(((uintptr_t)m + HUGE_PAGE - 1) & ~(uintptr_t)(HUGE_PAGE - 1));
  bool yes = madvise(p, HUGE_PAGE, MADV_HUGEPAGE) == 0 && (p[0] = 1) && resident_bytes(p, HUGE_PAGE) == HUGE_PAGE;
  munmap(m, 2 * HUGE_PAGE);
  return yes;
}

static void test_huge_page_segment(void) {
  trimalloc_option_set("background", 0); /* only the trim below returns anything */
  trimalloc_option_set("thp", 1);
  /* Three full segments of large blocks (32 + 31 slices each; FRONT: the
   * 32 bytes of a large block's front canary, which a size of whole slices
   * would take one slice more for): the next segment is a huge-page one
   * (past the first two) and gets the next slab. */
  enum { FRONT = 64 };
  void *big[6];
  for (int i = 0; i < 3; i++) {
    big[2 * i] = trimalloc_malloc(2 * MiB - FRONT);
    big[2 * i + 1] = trimalloc_malloc(31 * 64 * KiB - FRONT);
  }
  uint8_t *a = trimalloc_malloc(3000); /* a class no block of this program had: a new slab */
  memset(a, 1, 3000);
  uint8_t *seg = (uint8_t *)((uintptr_t)a & ~(uintptr_t)(4 * MiB - 1));
  CHECK((uint8_t *)big[4] < seg || (uint8_t *)big[4] >= seg + 4 * MiB, "the slab went into a full segment");
  size_t head = resident_bytes(seg, HUGE_PAGE);
  printf("   a fresh segment with one small block: %zu KiB of its first 2 MiB resident\n", head / KiB);
  CHECK(head <= 256 * KiB, "%zu KiB of the header's huge page resident for one small block", head / KiB);
  /* Slices 2..31 taken by a large block, the next slab goes to slice 32: the
   * second huge page, faulted in whole at its first write. */
  void *fill = trimalloc_malloc(30 * 64 * KiB - FRONT);
  size_t real0 = resident_bytes(seg + HUGE_PAGE, HUGE_PAGE);
  uint64_t counted0 = stats_now().resident;
  uint8_t *b = trimalloc_malloc(5000);
  if (!CHECK(b >= seg + HUGE_PAGE && b < seg + 4 * MiB, "the second slab is not in the second huge page")) return;
  memset(b, 2, 5000);
  size_t before = resident_bytes(seg + HUGE_PAGE, HUGE_PAGE);
  uint64_t counted1 = stats_now().resident;
  printf("   one block in the second huge page: %zu KiB more resident, %lld KiB more counted\n",
         (before - real0) / KiB, ((long long)counted1 - (long long)counted0) / 1024);
  CHECK(counted1 + 256 * KiB >= counted0 + (before - real0),
        "the huge page holding a block: %zu KiB more resident, %lld KiB more in stats' resident", (before - real0) / KiB,
        ((long long)counted1 - (long long)counted0) / 1024);
  trimalloc_free(b);
  trimalloc_trim(); /* the slab empties (the cache flushed), its span is free: returned */
  size_t after = resident_bytes(seg + HUGE_PAGE, HUGE_PAGE);
  printf("   the second huge page: %zu KiB resident with one block, %zu KiB after its free and a trim\n",
         before / KiB, after / KiB);
  CHECK(after <= 64 * KiB, "%zu KiB of a free huge page resident after a trim", after / KiB);
  uint64_t counted2 = stats_now().resident;
  CHECK(counted2 <= counted0 + 256 * KiB, "returned, still counted: resident %llu -> %llu KiB",
        (unsigned long long)counted0 / KiB, (unsigned long long)counted2 / KiB);
  trimalloc_free(fill);
  trimalloc_free(a);
  for (int i = 0; i < 6; i++) trimalloc_free(big[i]);
  trimalloc_trim();
  trimalloc_option_set("thp", 0);
}

int main(void) {
  if (kernel_gives_huge_pages())
    RUN(test_huge_page_segment);
  else
    SKIP(test_huge_page_segment, "the kernel gives no transparent huge page to a range that asks");
  return check_summary();
}
