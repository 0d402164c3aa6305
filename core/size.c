/* Size classes: the tables the fast paths and the slabs read (see
 * ta_class_of in internal.h for the classes themselves). */
#include "internal.h"

uint8_t ta_small_class[TA_SMALL_MAX / TA_ALIGN + 1];
uint8_t ta_class_slices[TA_CLASSES];
uint16_t ta_class_tmax[TA_TCLASSES];

void ta_size_init(void) {
  for (size_t d = 0; d <= TA_SMALL_MAX / TA_ALIGN; d++) ta_small_class[d] = (uint8_t)ta_class_of(d * TA_ALIGN);
  for (size_t c = 0; c < TA_CLASSES; c++) {
    /* One slice for blocks up to 8 KiB (at least 8 per slab), else enough
     * slices for 8 blocks. */
    size_t bs = ta_class_size(c);
    ta_class_slices[c] = (uint8_t)(bs <= 8192 ? 1 : (8 * bs + TA_SLICE_SIZE - 1) / TA_SLICE_SIZE);
  }
  /* A thread cache keeps about 64 KiB of a class, between 2 and 128 blocks:
   * short lists for big blocks (and tcache_bytes bounds the sum). */
  for (size_t c = 0; c < TA_TCLASSES; c++) {
    size_t n = TA_TBIN_BYTES / ta_class_size(c);
    ta_class_tmax[c] = (uint16_t)(n < 2 ? 2 : n > 128 ? 128 : n);
  }
}
