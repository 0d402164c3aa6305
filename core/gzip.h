/* The constants of deflate (RFC 1951) and gzip's CRC-32 (RFC 1952), shared
 * by the core's writer (pprof.c) and the bindings' reader
 * (bind/bind_inflate.c): tables and pure functions only, so that neither
 * side's code goes into the other's library. */
#ifndef TA_GZIP_H
#define TA_GZIP_H

#include <stdint.h>

/* Length codes 257..285 and distance codes 0..29: the base value and the
 * extra bits that follow the code (RFC 1951 3.2.5). */
static const uint16_t ta_deflate_len_base[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                                 31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
static const uint8_t ta_deflate_len_extra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                                 2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
static const uint16_t ta_deflate_dist_base[30] = {1,    2,    3,    4,    5,    7,     9,     13,    17,  25,
                                                  33,   49,   65,   97,   129,  193,   257,   385,   513, 769,
                                                  1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
static const uint8_t ta_deflate_dist_extra[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                                  6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};

/* The fixed Huffman code (BTYPE 01, RFC 1951 3.2.6): the length of literal/
 * length symbol sym (0..287); every distance code is 5 bits. */
#define TA_DEFLATE_FIXED_DIST_LEN 5
static inline unsigned ta_deflate_fixed_len(unsigned sym) {
  return sym < 144 ? 8 : sym < 256 ? 9 : sym < 280 ? 7 : 8;
}

/* Entry i of the CRC-32 table (the reflected polynomial 0xedb88320). */
static inline uint32_t ta_crc32_entry(uint32_t i) {
  uint32_t c = i;
  for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
  return c;
}

#endif
