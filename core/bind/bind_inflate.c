/* gunzip for the profile readers: gzip members (RFC 1952) around deflate
 * (RFC 1951: stored, fixed and dynamic Huffman blocks), so profiles written
 * by the core, by Go, pprof or TCMalloc all read. A plain decoder in the
 * manner of zlib's puff.c (canonical codes decoded a bit at a time): slow
 * next to zlib, but profiles are a few MB and the extensions then need no
 * libz. Every read is bounds-checked; bad input gives a message, never a
 * crash, and the output is capped (a small file cannot inflate to gigabytes). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "bind_internal.h"
#include "../gzip.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
  const uint8_t *in;
  size_t inlen, inpos;
  uint32_t bitbuf;
  int bitcnt;
  uint8_t *out;
  size_t outlen, outcap, max;
  const char *err; /* the first problem, or NULL */
} inf_t;

static void fail(inf_t *s, const char *why) {
  if (!s->err) s->err = why;
}
#define FAIL(s, why) \
  do {               \
    fail(s, why);    \
    return;          \
  } while (0)

/* `need` bits (at most 16), least significant first; 0 after an error. */
static int bits(inf_t *s, int need) {
  uint32_t val = s->bitbuf;
  while (s->bitcnt < need) {
    if (s->inpos == s->inlen) {
      fail(s, "truncated deflate data");
      return 0;
    }
    val |= (uint32_t)s->in[s->inpos++] << s->bitcnt;
    s->bitcnt += 8;
  }
  s->bitbuf = val >> need;
  s->bitcnt -= need;
  return (int)(val & ((1u << need) - 1));
}

static int room(inf_t *s, size_t n) {
  if (s->outcap - s->outlen >= n) return 1;
  if (n > s->max - s->outlen) {
    fail(s, "inflates to more than the size limit");
    return 0;
  }
  size_t cap = s->outcap ? s->outcap : 65536;
  while (cap - s->outlen < n) cap *= 2;
  if (cap > s->max) cap = s->max;
  uint8_t *q = realloc(s->out, cap);
  if (!q) {
    fail(s, "out of memory");
    return 0;
  }
  s->out = q;
  s->outcap = cap;
  return 1;
}

/* A canonical Huffman code: how many codes of each length, and the symbols
 * in code order. */
typedef struct {
  short count[16];
  short symbol[288];
} huff_t;

/* Builds h from code lengths; 0, or -1 when over-subscribed (an incomplete
 * code is accepted: its unused codes fail in decode). */
static int construct(huff_t *h, const short *length, int n) {
  memset(h->count, 0, sizeof h->count);
  for (int i = 0; i < n; i++) h->count[length[i]]++;
  if (h->count[0] == n) return 0;
  int left = 1;
  for (int len = 1; len < 16; len++) {
    left <<= 1;
    left -= h->count[len];
    if (left < 0) return -1;
  }
  short offs[16];
  offs[1] = 0;
  for (int len = 1; len < 15; len++) offs[len + 1] = (short)(offs[len] + h->count[len]);
  for (int i = 0; i < n; i++)
    if (length[i]) h->symbol[offs[length[i]]++] = (short)i;
  return 0;
}

static int decode(inf_t *s, const huff_t *h) {
  int code = 0, first = 0, index = 0;
  for (int len = 1; len < 16; len++) {
    code |= bits(s, 1);
    if (s->err) return -1;
    int count = h->count[len];
    if (code - count < first) return h->symbol[index + (code - first)];
    index += count;
    first = (first + count) << 1;
    code <<= 1;
  }
  fail(s, "invalid Huffman code in deflate data");
  return -1;
}

/* The literal/length and distance codes of one block, up to end-of-block. */
static void codes(inf_t *s, const huff_t *lencode, const huff_t *distcode) {
  for (;;) {
    int sym = decode(s, lencode);
    if (sym < 0) return;
    if (sym < 256) {
      if (!room(s, 1)) return;
      s->out[s->outlen++] = (uint8_t)sym;
      continue;
    }
    if (sym == 256) return;
    sym -= 257;
    if (sym >= 29) FAIL(s, "invalid length code in deflate data");
    size_t len = (size_t)ta_deflate_len_base[sym] + (size_t)bits(s, ta_deflate_len_extra[sym]);
    int d = decode(s, distcode);
    if (d < 0) return;
    if (d >= 30) FAIL(s, "invalid distance code in deflate data");
    size_t dist = (size_t)ta_deflate_dist_base[d] + (size_t)bits(s, ta_deflate_dist_extra[d]);
    if (s->err) return;
    if (dist > s->outlen) FAIL(s, "deflate distance before the start of the data");
    if (!room(s, len)) return;
    for (size_t i = 0; i < len; i++, s->outlen++) s->out[s->outlen] = s->out[s->outlen - dist];
  }
}

static void stored(inf_t *s) {
  s->bitbuf = 0; /* to the byte boundary */
  s->bitcnt = 0;
  if (s->inlen - s->inpos < 4) FAIL(s, "truncated deflate data");
  const uint8_t *h = s->in + s->inpos;
  unsigned len = h[0] | (unsigned)h[1] << 8, nlen = h[2] | (unsigned)h[3] << 8;
  s->inpos += 4;
  if (len != (~nlen & 0xffff)) FAIL(s, "corrupt stored block in deflate data");
  if (s->inlen - s->inpos < len) FAIL(s, "truncated deflate data");
  if (!room(s, len)) return;
  memcpy(s->out + s->outlen, s->in + s->inpos, len);
  s->outlen += len;
  s->inpos += len;
}

/* The fixed codes, built for each block that uses them (cheap next to the block). */
static void fixed(inf_t *s) {
  huff_t lc, dc;
  short lengths[288];
  for (int i = 0; i < 288; i++) lengths[i] = (short)ta_deflate_fixed_len((unsigned)i);
  construct(&lc, lengths, 288);
  for (int i = 0; i < 30; i++) lengths[i] = TA_DEFLATE_FIXED_DIST_LEN;
  construct(&dc, lengths, 30);
  codes(s, &lc, &dc);
}

static void dynamic(inf_t *s) {
  static const short order[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
  short lengths[320];
  huff_t lencode, distcode;
  int nlen = bits(s, 5) + 257, ndist = bits(s, 5) + 1, ncode = bits(s, 4) + 4;
  if (s->err) return;
  if (nlen > 286 || ndist > 30) FAIL(s, "bad counts in a dynamic deflate block");
  int i = 0;
  for (; i < ncode; i++) lengths[order[i]] = (short)bits(s, 3);
  for (; i < 19; i++) lengths[order[i]] = 0;
  if (s->err) return;
  if (construct(&lencode, lengths, 19)) FAIL(s, "bad code lengths in a dynamic deflate block");
  for (i = 0; i < nlen + ndist;) {
    int sym = decode(s, &lencode);
    if (sym < 0) return;
    if (sym < 16) {
      lengths[i++] = (short)sym;
      continue;
    }
    short len = 0;
    int rep;
    if (sym == 16) {
      if (i == 0) FAIL(s, "repeat with no previous length in deflate data");
      len = lengths[i - 1];
      rep = 3 + bits(s, 2);
    } else if (sym == 17) {
      rep = 3 + bits(s, 3);
    } else {
      rep = 11 + bits(s, 7);
    }
    if (s->err) return;
    if (i + rep > nlen + ndist) FAIL(s, "too many code lengths in deflate data");
    while (rep--) lengths[i++] = len;
  }
  if (lengths[256] == 0) FAIL(s, "no end-of-block code in a dynamic deflate block");
  if (construct(&lencode, lengths, nlen) || construct(&distcode, lengths + nlen, ndist))
    FAIL(s, "bad code lengths in a dynamic deflate block");
  codes(s, &lencode, &distcode);
}

/* One raw deflate stream from s->inpos; leaves inpos after its last byte. */
static void inflate(inf_t *s) {
  int last;
  do {
    last = bits(s, 1);
    int type = bits(s, 2);
    if (s->err) return;
    if (type == 0) stored(s);
    else if (type == 1) fixed(s);
    else if (type == 2) dynamic(s);
    else fail(s, "invalid deflate block type");
  } while (!last && !s->err);
  s->bitbuf = 0;
  s->bitcnt = 0;
}

static uint32_t crc_table[256];
static pthread_once_t crc_once = PTHREAD_ONCE_INIT;

static void crc_init(void) {
  for (uint32_t i = 0; i < 256; i++) crc_table[i] = ta_crc32_entry(i);
}

/* The readers run on any thread (a binding releases its interpreter lock). */
uint32_t ta_bind_crc32(const uint8_t *p, size_t n) {
  pthread_once(&crc_once, crc_init);
  uint32_t c = 0xffffffffu;
  for (size_t i = 0; i < n; i++) c = crc_table[(c ^ p[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

static uint32_t le32(const uint8_t *p) {
  return p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

/* One gzip member's header; 0, or -1 with s->err set. */
static int gzip_header(inf_t *s) {
  const uint8_t *h = s->in + s->inpos;
  size_t left = s->inlen - s->inpos;
  if (left < 10 || h[0] != 0x1f || h[1] != 0x8b) return fail(s, "not a gzip member"), -1;
  if (h[2] != 8) return fail(s, "gzip compression method is not deflate"), -1;
  unsigned flags = h[3];
  if (flags & 0xe0) return fail(s, "reserved gzip flags set"), -1;
  size_t pos = 10;
  if (flags & 4) { /* FEXTRA */
    if (left - pos < 2) return fail(s, "truncated gzip header"), -1;
    size_t xlen = h[pos] | (size_t)h[pos + 1] << 8;
    pos += 2;
    if (left - pos < xlen) return fail(s, "truncated gzip header"), -1;
    pos += xlen;
  }
  for (unsigned f = 8; f <= 16; f <<= 1) { /* FNAME, FCOMMENT: NUL-terminated */
    if (!(flags & f)) continue;
    while (pos < left && h[pos]) pos++;
    if (pos == left) return fail(s, "truncated gzip header"), -1;
    pos++;
  }
  if (flags & 2) pos += 2; /* FHCRC */
  if (pos > left) return fail(s, "truncated gzip header"), -1;
  s->inpos += pos;
  return 0;
}

int ta_bind_gunzip(const uint8_t *in, size_t n, size_t max, uint8_t **out, size_t *outlen,
                   const char **why) {
  inf_t s = {.in = in, .inlen = n, .max = max};
  do { /* members, concatenated (as `cat a.gz b.gz`) */
    size_t start = s.outlen;
    if (gzip_header(&s)) break;
    inflate(&s);
    if (s.err) break;
    if (s.inlen - s.inpos < 8) {
      fail(&s, "truncated gzip trailer");
      break;
    }
    const uint8_t *t = s.in + s.inpos;
    if (le32(t) != ta_bind_crc32(s.out + start, s.outlen - start)) fail(&s, "gzip CRC mismatch");
    else if (le32(t + 4) != (uint32_t)(s.outlen - start)) fail(&s, "gzip length mismatch");
    s.inpos += 8;
  } while (!s.err && s.inpos < s.inlen);
  if (s.err) {
    free(s.out);
    *why = s.err;
    return -1;
  }
  *out = s.out ? s.out : malloc(1); /* an empty member: still a buffer to free */
  *outlen = s.outlen;
  if (!*out) return *why = "out of memory", -1;
  return 0;
}
