/* Size classes: the tables the fast paths and the slabs read (see
 * ta_class_of in internal.h for the classes themselves). */
#include "internal.h"

/* ta_class_of((n + 15) / 16 * 16), written out: malloc reads it before the
 * process is initialised (a library's constructor may call malloc before
 * ours runs), so it cannot be filled in at start. ta_size_init checks it. */
/* By (n + 15) / 16. In the hardened build entry 0 (n == 0 only) is the
 * zero-size class, whose thread-cache bin stays empty: malloc(0) takes the
 * slow path to a block no access reaches (zero.c). The default build gives
 * malloc(0) a 16-byte block, as glibc (24 bytes), jemalloc and mimalloc give
 * a small one: a program that writes a terminating NUL into malloc(strlen(s))
 * for an empty s is wrong, but runs under all of them, and a preloaded
 * allocator must not be what stops it. */
const uint8_t ta_small_class[TA_SMALL_MAX / TA_ALIGN + 1] = {
#ifdef TA_HARDENED
    TA_ZERO_CLASS,
#else
    0,
#endif
    0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
    15, 16, 16, 17, 17, 18, 18, 19, 19, 20, 20, 21, 21, 22, 22, 23,
    23, 24, 24, 24, 24, 25, 25, 25, 25, 26, 26, 26, 26, 27, 27, 27,
    27, 28, 28, 28, 28, 29, 29, 29, 29, 30, 30, 30, 30, 31, 31, 31,
    31,
};
uint8_t ta_class_slices[TA_CLASSES];
uint16_t ta_class_tmax[TA_TCLASSES];

void ta_size_init(void) {
  for (size_t d = 1; d <= TA_SMALL_MAX / TA_ALIGN; d++)
    if (ta_small_class[d] != ta_class_of(d * TA_ALIGN)) ta_error("size class table is wrong at", (void *)d);
  for (size_t c = 0; c < TA_CLASSES; c++) {
    /* One slice for blocks up to 8 KiB (at least 8 per slab), else enough
     * slices for 8 blocks. */
    size_t bs = ta_class_size(c);
    ta_class_slices[c] = (uint8_t)(bs <= 8192 ? 1 : (8 * bs + TA_SLICE_SIZE - 1) / TA_SLICE_SIZE);
  }
  /* The longest a thread cache bin may grow: about 64 KiB of a class,
   * between 4 and 128 blocks (the cache's budget, tcache_bytes, bounds the
   * sum; a bin grows only as far as its class is used). The count matters
   * as well as the bytes: every cached block keeps its OS page resident, so
   * with bigger OS pages a bin holds fewer blocks (128 with 4 KiB pages, 32
   * with 16 KiB, 8 with 64 KiB: a burst freed by 4 threads that then sleep
   * left 16.6 MiB resident with 64 KiB pages at 128, v2 12.9). */
  size_t most = (size_t)128 >> (ta_ospage_shift - TA_OSPAGE_MIN_SHIFT);
  if (most < 4) most = 4;
  for (size_t c = 0; c < TA_TCLASSES; c++) {
    size_t n = TA_TBIN_BYTES / ta_class_size(c);
    ta_class_tmax[c] = (uint16_t)(n < 4 ? 4 : n > most ? most : n);
  }
}
