/* Size classes: the direct table ranges (see ta_class_of in internal.h). */
#include "internal.h"

/* direct slots d (size (d-1)*16+1 .. d*16) with ta_class_of(d*16) == c */
uint8_t ta_direct_lo[TA_CLASSES], ta_direct_hi[TA_CLASSES];

void ta_size_init(void) {
  for (size_t c = 0; c < TA_CLASSES; c++) ta_direct_lo[c] = ta_direct_hi[c] = 0;
  for (size_t d = TA_DIRECT_SLOTS; d-- > 0;) {
    size_t c = ta_class_of(d * TA_ALIGN);
    if (ta_direct_hi[c] == 0) ta_direct_hi[c] = (uint8_t)d;
    ta_direct_lo[c] = (uint8_t)d;
  }
}
