/* What the core/bind/ files share beyond binding.h. */
#ifndef TRIMALLOC_BIND_INTERNAL_H
#define TRIMALLOC_BIND_INTERNAL_H

#include "binding.h"

/* bind_backend.c: CLOCK_MONOTONIC in ns (the real clock, no test offset). */
uint64_t ta_bind_mono_ns(void);

/* bind_inflate.c: gzip members (RFC 1952, concatenated members too) with
 * deflate (RFC 1951) inside. *out (malloc'ed, the caller frees) gets the
 * data, at most `max` bytes. 0, or -1 with *why a static phrase. */
int ta_bind_gunzip(const uint8_t *in, size_t n, size_t max, uint8_t **out, size_t *outlen,
                   const char **why);
uint32_t ta_bind_crc32(const uint8_t *p, size_t n);

#endif
