/* Size classes: the tables the fast paths and the slabs read (see
 * ta_class_of in internal.h for the classes themselves). */
#include "internal.h"

/* ta_class_of((n + 15) / 16 * 16), written out: malloc reads it before the
 * process is initialised (a library's constructor may call malloc before
 * ours runs), so it cannot be filled in at start. ta_size_init checks it. */
const uint8_t ta_small_class[TA_SMALL_MAX / TA_ALIGN + 1] = {
    0, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
    15, 16, 16, 17, 17, 18, 18, 19, 19, 20, 20, 21, 21, 22, 22, 23,
    23, 24, 24, 24, 24, 25, 25, 25, 25, 26, 26, 26, 26, 27, 27, 27,
    27, 28, 28, 28, 28, 29, 29, 29, 29, 30, 30, 30, 30, 31, 31, 31,
    31,
};
uint8_t ta_class_slices[TA_CLASSES];
uint16_t ta_class_tmax[TA_TCLASSES];

void ta_size_init(void) {
  for (size_t d = 0; d <= TA_SMALL_MAX / TA_ALIGN; d++)
    if (ta_small_class[d] != ta_class_of(d * TA_ALIGN)) ta_error("size class table is wrong at", (void *)d);
  for (size_t c = 0; c < TA_CLASSES; c++) {
    /* One slice for blocks up to 8 KiB (at least 8 per slab), else enough
     * slices for 8 blocks. */
    size_t bs = ta_class_size(c);
    ta_class_slices[c] = (uint8_t)(bs <= 8192 ? 1 : (8 * bs + TA_SLICE_SIZE - 1) / TA_SLICE_SIZE);
  }
  /* The longest a thread cache bin may grow: about 128 KiB of a class,
   * between 2 and 1024 blocks (the cache's budget, tcache_bytes, bounds the
   * sum; a bin grows only as far as its class is used). */
  for (size_t c = 0; c < TA_TCLASSES; c++) {
    size_t n = TA_TBIN_BYTES / ta_class_size(c);
    ta_class_tmax[c] = (uint16_t)(n < 2 ? 2 : n > 1024 ? 1024 : n);
  }
}
