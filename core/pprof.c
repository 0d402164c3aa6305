/* The profiler's file format: pprof's profile.proto, gzipped
 * (research/profiling.md section 3 has the field numbers).
 *
 * A dump runs in a process whose allocator is this one, on a thread that must
 * not sample itself: every buffer and table here is mapped with ta_prim_map,
 * never malloc. A mapping that fails is remembered: later calls do nothing
 * and ta_pprof_finish returns ENOMEM without writing.
 *
 * Strings, mappings, functions and locations are interned (ids are index + 1,
 * never 0; string 0 is ""); samples are encoded as they come; finish writes
 * the Profile message in field order, then gzips it to the caller's fd. */
#include "gzip.h"
#include "internal.h"

#include <errno.h>
#include <unistd.h>

/* ---- growable byte buffers, in whole pages -------------------------------- */

typedef struct {
  uint8_t *p;
  size_t len, cap;
} buf_t;

/* An open-addressing table of entry indices (slot: hash << 32 | index + 1). */
typedef struct {
  uint64_t *slot;
  size_t mask, count;
} tab_t;

typedef struct {
  uint32_t off, len;
} str_t;
typedef struct {
  uint64_t start, limit, offset, file;
  int has_functions;
} map_t;
typedef struct {
  uint64_t name, system_name, file;
} func_t;
typedef struct {
  uint64_t address, mapping, function;
  int64_t line;
} loc_t;

struct ta_pprof_s {
  int oom;
  uint64_t period;
  int64_t time_nanos;
  buf_t chars, strs, maps, funcs, locs, samples, comments;
  tab_t tstr, tmap, tfunc, tloc;
  /* string indices of the fixed names */
  uint64_t s_types[4], s_units[4], s_space, s_bytes, s_tag, s_default;
};

static size_t page_round(size_t n) {
  size_t pg = ta_prim_page_size();
  return (n + pg - 1) & ~(pg - 1);
}

/* Room for `need` more bytes in b; false (and p->oom) when mapping fails. */
static bool buf_reserve(ta_pprof_t *p, buf_t *b, size_t need) {
  if (p->oom) return false;
  if (b->cap - b->len >= need) return true;
  if (need > ((size_t)1 << 40) - b->len) goto oom; /* an absurd size: not a mapping */
  size_t cap = b->cap ? b->cap : ta_prim_page_size();
  while (cap - b->len < need) cap *= 2;
  cap = page_round(cap);
  void *q;
  int err = b->cap ? ta_prim_remap(b->p, b->cap, cap, ta_prim_page_size(), &q)
                   : ta_prim_map(cap, ta_prim_page_size(), &q);
  if (err && b->cap && ta_prim_map(cap, ta_prim_page_size(), &q) == 0) {
    /* The move refused (mremap can, e.g. under qemu-user): a copy will do. */
    memcpy(q, b->p, b->len);
    ta_prim_unmap(b->p, b->cap);
    err = 0;
  }
  if (err) goto oom;
  b->p = q;
  b->cap = cap;
  return true;
oom:
  p->oom = 1;
  return false;
}

static void buf_free(buf_t *b) {
  if (b->cap) ta_prim_unmap(b->p, b->cap);
  b->p = NULL;
  b->len = b->cap = 0;
}

static bool buf_put(ta_pprof_t *p, buf_t *b, const void *src, size_t n) {
  if (!buf_reserve(p, b, n)) return false;
  if (n) memcpy(b->p + b->len, src, n);
  b->len += n;
  return true;
}

/* ---- protobuf wire format: varints and length-delimited fields ------------ */

static size_t varint_len(uint64_t v) {
  size_t n = 1;
  while (v >= 0x80) v >>= 7, n++;
  return n;
}

static uint8_t *put_varint(uint8_t *o, uint64_t v) {
  while (v >= 0x80) *o++ = (uint8_t)(v | 0x80), v >>= 7;
  *o++ = (uint8_t)v;
  return o;
}

/* A varint field (wire type 0); zero is the default and left out. */
static uint8_t *put_field(uint8_t *o, unsigned field, uint64_t v) {
  if (!v) return o;
  o = put_varint(o, (uint64_t)field << 3);
  return put_varint(o, v);
}

/* Varint fields 1..n of a message, from v[0 .. n-1] (zeros left out). */
static uint8_t *put_fields(uint8_t *o, const uint64_t *v, unsigned n) {
  for (unsigned k = 0; k < n; k++) o = put_field(o, k + 1, v[k]);
  return o;
}

/* tag + length + body of a sub-message or string (wire type 2) into b. */
static void buf_put_ld(ta_pprof_t *p, buf_t *b, unsigned field, const void *body, size_t n) {
  uint8_t head[16], *o = put_varint(head, (uint64_t)field << 3 | 2);
  o = put_varint(o, n);
  if (buf_put(p, b, head, (size_t)(o - head))) buf_put(p, b, body, n);
}

/* ---- interning ------------------------------------------------------------ */

static uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v;
  h *= 0x9e3779b97f4a7c15ull;
  return h ^ (h >> 29);
}

static bool tab_init(ta_pprof_t *p, tab_t *t, size_t slots) {
  void *q;
  if (ta_prim_map(page_round(slots * sizeof(uint64_t)), ta_prim_page_size(), &q)) {
    p->oom = 1;
    return false;
  }
  t->slot = q;
  t->mask = slots - 1;
  t->count = 0;
  return true;
}

static void tab_free(tab_t *t) {
  if (t->slot) ta_prim_unmap(t->slot, page_round((t->mask + 1) * sizeof(uint64_t)));
  t->slot = NULL;
}

/* Doubles the table once it is half full (probes stay short). */
static bool tab_grow(ta_pprof_t *p, tab_t *t) {
  if ((t->count + 1) * 2 <= t->mask + 1) return true;
  tab_t n;
  if (!tab_init(p, &n, (t->mask + 1) * 2)) return false;
  for (size_t i = 0; i <= t->mask; i++) {
    uint64_t s = t->slot[i];
    if (!s) continue;
    size_t j = (size_t)(s >> 32) & n.mask;
    while (n.slot[j]) j = (j + 1) & n.mask;
    n.slot[j] = s;
  }
  n.count = t->count;
  tab_free(t);
  *t = n;
  return true;
}

/* The entry index + 1 of the entry equal to `key` (eq), or 0 with *at set to
 * the empty slot where it goes. */
typedef bool (*eq_fn)(const ta_pprof_t *p, size_t index, const void *key);
static uint64_t tab_find(const ta_pprof_t *p, const tab_t *t, uint32_t h, eq_fn eq,
                         const void *key, size_t *at) {
  for (size_t i = h & t->mask;; i = (i + 1) & t->mask) {
    uint64_t s = t->slot[i];
    if (!s) {
      *at = i;
      return 0;
    }
    if ((uint32_t)(s >> 32) == h && eq(p, (uint32_t)s - 1, key)) return (uint32_t)s;
  }
}

/* Adds entry `e` (size n) to buffer b and the table at slot `at`; its id. */
static uint64_t tab_add(ta_pprof_t *p, tab_t *t, buf_t *b, uint32_t h, size_t at,
                        const void *e, size_t n) {
  uint64_t id = b->len / n + 1;
  if (id > UINT32_MAX || !buf_put(p, b, e, n)) {
    p->oom = 1;
    return 0;
  }
  t->slot[at] = (uint64_t)h << 32 | id;
  t->count++;
  return id;
}

typedef struct {
  const char *s;
  size_t len;
} skey_t;

static bool str_eq(const ta_pprof_t *p, size_t i, const void *key) {
  const skey_t *k = key;
  const str_t *e = (const str_t *)p->strs.p + i;
  return e->len == k->len && memcmp(p->chars.p + e->off, k->s, k->len) == 0;
}

/* The string's index in string_table (0 for "" and NULL). */
static uint64_t intern(ta_pprof_t *p, const char *s) {
  if (p->oom || !tab_grow(p, &p->tstr)) return 0;
  skey_t k = {s ? s : "", s ? strlen(s) : 0};
  if (k.len > UINT32_MAX / 2 || p->chars.len > UINT32_MAX / 2) {
    p->oom = 1;
    return 0;
  }
  uint64_t h = 0xcbf29ce484222325ull ^ k.len;
  size_t i = 0;
  for (; i + 8 <= k.len; i += 8) { /* a word at a time: names are long */
    uint64_t w;
    memcpy(&w, k.s + i, 8);
    h = mix(h, w);
  }
  uint64_t tail = 0;
  memcpy(&tail, k.s + i, k.len - i);
  h = mix(h, tail);
  h ^= h >> 32;
  size_t at = 0;
  uint64_t id = tab_find(p, &p->tstr, (uint32_t)h, str_eq, &k, &at);
  if (id) return id - 1;
  str_t e = {(uint32_t)p->chars.len, (uint32_t)k.len};
  if (!buf_put(p, &p->chars, k.s, k.len)) return 0;
  id = tab_add(p, &p->tstr, &p->strs, (uint32_t)h, at, &e, sizeof e);
  return id ? id - 1 : 0;
}

static bool map_eq(const ta_pprof_t *p, size_t i, const void *key) {
  return ((const map_t *)p->maps.p)[i].start == *(const uint64_t *)key;
}

uint64_t ta_pprof_mapping(ta_pprof_t *p, uint64_t start, uint64_t limit, uint64_t offset,
                          const char *file) {
  if (p->oom || !tab_grow(p, &p->tmap)) return 0;
  uint32_t h = (uint32_t)mix(0, start);
  size_t at = 0;
  uint64_t id = tab_find(p, &p->tmap, h, map_eq, &start, &at);
  if (id) return id;
  map_t e = {start, limit, offset, intern(p, file), 0};
  if (p->oom) return 0;
  return tab_add(p, &p->tmap, &p->maps, h, at, &e, sizeof e);
}

static bool func_eq(const ta_pprof_t *p, size_t i, const void *key) {
  const func_t *a = (const func_t *)p->funcs.p + i, *b = key;
  return a->name == b->name && a->system_name == b->system_name && a->file == b->file;
}

static uint64_t function(ta_pprof_t *p, const char *name, bool native, const char *file) {
  if (p->oom || !tab_grow(p, &p->tfunc)) return 0;
  func_t e = {intern(p, name), 0, intern(p, file)};
  if (native) e.system_name = e.name;
  if (p->oom) return 0;
  uint32_t h = (uint32_t)mix(mix(mix(0, e.name), e.system_name), e.file);
  size_t at = 0;
  uint64_t id = tab_find(p, &p->tfunc, h, func_eq, &e, &at);
  return id ? id : tab_add(p, &p->tfunc, &p->funcs, h, at, &e, sizeof e);
}

/* A linker symbol: system_name is the name, which pprof may demangle or
 * shorten (a C++ name loses its template and parameter lists). */
uint64_t ta_pprof_function(ta_pprof_t *p, const char *name, const char *file) {
  return function(p, name, true, file);
}

/* A Ruby or Python name: no system_name, so pprof takes the name as already
 * demangled and leaves it as it is. (With system_name = name it would take
 * "block in <main>" or "Foo#<=>" for C++ and cut what is between < and >:
 * "block in ", "<unknown>".) */
uint64_t ta_pprof_interp_function(ta_pprof_t *p, const char *name, const char *file) {
  return function(p, name, false, file);
}

static bool loc_eq(const ta_pprof_t *p, size_t i, const void *key) {
  const loc_t *a = (const loc_t *)p->locs.p + i, *b = key;
  return a->address == b->address && a->mapping == b->mapping && a->function == b->function &&
         a->line == b->line;
}

uint64_t ta_pprof_location(ta_pprof_t *p, uint64_t address, uint64_t mapping_id,
                           uint64_t function_id, int64_t line) {
  if (p->oom || !tab_grow(p, &p->tloc)) return 0;
  loc_t e = {address, mapping_id, function_id, line};
  uint32_t h = (uint32_t)mix(mix(mix(mix(0, address), mapping_id), function_id), (uint64_t)line);
  size_t at = 0;
  uint64_t id = tab_find(p, &p->tloc, h, loc_eq, &e, &at);
  if (id) return id;
  /* A mapping whose frames carry function names: pprof must not try to
   * symbolize it again (it would need the binary). */
  if (function_id && mapping_id && mapping_id <= p->maps.len / sizeof(map_t))
    ((map_t *)p->maps.p)[mapping_id - 1].has_functions = 1;
  return tab_add(p, &p->tloc, &p->locs, h, at, &e, sizeof e);
}

/* ---- samples and comments ------------------------------------------------- */

void ta_pprof_sample(ta_pprof_t *p, const uint64_t *loc_ids, size_t n, const int64_t values[4],
                     const char *tag) {
  if (p->oom) return;
  uint64_t key = tag && *tag ? p->s_tag : 0, str = key ? intern(p, tag) : 0;
  size_t ids = 0, vals = 0;
  for (size_t i = 0; i < n; i++) ids += varint_len(loc_ids[i]);
  for (int i = 0; i < 4; i++) vals += varint_len((uint64_t)values[i]);
  size_t label = 2 + varint_len(key) + varint_len(str);
  size_t body = (n ? 1 + varint_len(ids) + ids : 0) + 1 + varint_len(vals) + vals +
                (key ? 1 + varint_len(label) + label : 0);
  if (!buf_reserve(p, &p->samples, 1 + varint_len(body) + body)) return;
  uint8_t *o = p->samples.p + p->samples.len;
  *o++ = 2 << 3 | 2; /* Profile.sample */
  o = put_varint(o, body);
  if (n) {
    *o++ = 1 << 3 | 2; /* Sample.location_id, packed, leaf first */
    o = put_varint(o, ids);
    for (size_t i = 0; i < n; i++) o = put_varint(o, loc_ids[i]);
  }
  *o++ = 2 << 3 | 2; /* Sample.value, packed, in sample_type order */
  o = put_varint(o, vals);
  for (int i = 0; i < 4; i++) o = put_varint(o, (uint64_t)values[i]);
  if (key) {
    *o++ = 3 << 3 | 2; /* Sample.label {key, str}: the tag */
    o = put_varint(o, label);
    *o++ = 1 << 3;
    o = put_varint(o, key);
    *o++ = 2 << 3;
    o = put_varint(o, str);
  }
  p->samples.len = (size_t)(o - p->samples.p);
}

void ta_pprof_comment(ta_pprof_t *p, const char *text) {
  uint64_t s = intern(p, text);
  if (!p->oom) buf_put(p, &p->comments, &s, sizeof s);
}

/* ---- begin, abort ---------------------------------------------------------- */

static void pprof_free(ta_pprof_t *p) {
  buf_t *bufs[] = {&p->chars, &p->strs, &p->maps, &p->funcs, &p->locs, &p->samples, &p->comments};
  for (size_t i = 0; i < sizeof bufs / sizeof *bufs; i++) buf_free(bufs[i]);
  tab_t *tabs[] = {&p->tstr, &p->tmap, &p->tfunc, &p->tloc};
  for (size_t i = 0; i < sizeof tabs / sizeof *tabs; i++) tab_free(tabs[i]);
  ta_prim_unmap(p, page_round(sizeof *p));
}

void ta_pprof_abort(ta_pprof_t *p) {
  if (p) pprof_free(p);
}

ta_pprof_t *ta_pprof_begin(uint64_t period, int64_t time_nanos) {
  void *q;
  if (ta_prim_map(page_round(sizeof(ta_pprof_t)), ta_prim_page_size(), &q)) return NULL;
  ta_pprof_t *p = q; /* zeroed */
  p->period = period;
  p->time_nanos = time_nanos;
  tab_t *tabs[] = {&p->tstr, &p->tmap, &p->tfunc, &p->tloc};
  for (size_t i = 0; i < 4; i++) tab_init(p, tabs[i], 512);
  static const char *const types[4] = {"alloc_objects", "alloc_space", "inuse_objects",
                                       "inuse_space"};
  static const char *const units[4] = {"count", "bytes", "count", "bytes"};
  intern(p, ""); /* string_table[0] */
  for (int i = 0; i < 4; i++) p->s_types[i] = intern(p, types[i]), p->s_units[i] = intern(p, units[i]);
  p->s_space = intern(p, "space");
  p->s_bytes = intern(p, "bytes");
  p->s_tag = intern(p, "tag");
  p->s_default = intern(p, "inuse_space");
  if (p->oom) {
    pprof_free(p);
    return NULL;
  }
  return p;
}

/* ---- the Profile message -------------------------------------------------- */

/* A ValueType {type, unit} as field `field` of Profile. */
static void put_value_type(ta_pprof_t *p, buf_t *out, unsigned field, uint64_t type, uint64_t unit) {
  uint8_t m[32], *o = put_fields(m, (const uint64_t[]){type, unit}, 2);
  buf_put_ld(p, out, field, m, (size_t)(o - m));
}

static void encode(ta_pprof_t *p, buf_t *out) {
  for (int i = 0; i < 4; i++) put_value_type(p, out, 1, p->s_types[i], p->s_units[i]);
  buf_put(p, out, p->samples.p, p->samples.len);
  uint8_t m[128], *o;
  size_t nmap = p->maps.len / sizeof(map_t);
  for (size_t i = 0; i < nmap; i++) {
    const map_t *e = (const map_t *)p->maps.p + i;
    /* id, memory_start, memory_limit, file_offset, filename, build_id, has_functions */
    const uint64_t f[7] = {i + 1, e->start, e->limit, e->offset, e->file, 0, (uint64_t)e->has_functions};
    o = put_fields(m, f, 7);
    buf_put_ld(p, out, 3, m, (size_t)(o - m));
  }
  size_t nloc = p->locs.len / sizeof(loc_t);
  for (size_t i = 0; i < nloc; i++) {
    const loc_t *e = (const loc_t *)p->locs.p + i;
    o = put_fields(m, (const uint64_t[]){i + 1, e->mapping, e->address}, 3); /* id, mapping_id, address */
    if (e->function) {
      uint8_t line[32], *l = put_fields(line, (const uint64_t[]){e->function, (uint64_t)e->line}, 2);
      o = put_varint(o, 4 << 3 | 2);
      o = put_varint(o, (uint64_t)(l - line));
      memcpy(o, line, (size_t)(l - line));
      o += l - line;
    }
    buf_put_ld(p, out, 4, m, (size_t)(o - m));
  }
  size_t nfunc = p->funcs.len / sizeof(func_t);
  for (size_t i = 0; i < nfunc; i++) {
    const func_t *e = (const func_t *)p->funcs.p + i;
    /* id, name, system_name (native: the name, no demangling here; 0 for
     * an interpreter's frame), filename */
    const uint64_t f[4] = {i + 1, e->name, e->system_name, e->file};
    o = put_fields(m, f, 4);
    buf_put_ld(p, out, 5, m, (size_t)(o - m));
  }
  size_t nstr = p->strs.len / sizeof(str_t);
  for (size_t i = 0; i < nstr; i++) {
    const str_t *e = (const str_t *)p->strs.p + i;
    buf_put_ld(p, out, 6, p->chars.p + e->off, e->len);
  }
  o = put_field(m, 9, (uint64_t)p->time_nanos);
  buf_put(p, out, m, (size_t)(o - m));
  put_value_type(p, out, 11, p->s_space, p->s_bytes);
  o = put_field(m, 12, p->period);
  buf_put(p, out, m, (size_t)(o - m));
  size_t ncom = p->comments.len / sizeof(uint64_t), clen = 0;
  const uint64_t *com = (const uint64_t *)p->comments.p;
  for (size_t i = 0; i < ncom; i++) clen += varint_len(com[i]);
  if (ncom && buf_reserve(p, out, 2 + varint_len(clen) + clen)) { /* packed */
    o = put_varint(out->p + out->len, 13 << 3 | 2);
    o = put_varint(o, clen);
    for (size_t i = 0; i < ncom; i++) o = put_varint(o, com[i]);
    out->len = (size_t)(o - out->p);
  }
  o = put_field(m, 14, p->s_default);
  buf_put(p, out, m, (size_t)(o - m));
}

/* ---- gzip (RFC 1952) around deflate (RFC 1951) ----------------------------- */

/* Slicing by 8: eight bytes a step through eight tables (t[k][b]: the CRC of
 * byte b followed by k zero bytes), a third of the time of a byte a step. */
static uint32_t crc32(const uint8_t *s, size_t n) {
  uint32_t t[8][256];
  for (uint32_t i = 0; i < 256; i++) t[0][i] = ta_crc32_entry(i);
  for (int k = 1; k < 8; k++)
    for (uint32_t i = 0; i < 256; i++) t[k][i] = t[0][t[k - 1][i] & 0xff] ^ (t[k - 1][i] >> 8);
  uint32_t c = 0xffffffffu;
  size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    uint32_t a = c ^ ((uint32_t)s[i] | (uint32_t)s[i + 1] << 8 | (uint32_t)s[i + 2] << 16 | (uint32_t)s[i + 3] << 24);
    uint32_t b = (uint32_t)s[i + 4] | (uint32_t)s[i + 5] << 8 | (uint32_t)s[i + 6] << 16 | (uint32_t)s[i + 7] << 24;
    c = t[7][a & 0xff] ^ t[6][a >> 8 & 0xff] ^ t[5][a >> 16 & 0xff] ^ t[4][a >> 24] ^ t[3][b & 0xff] ^
        t[2][b >> 8 & 0xff] ^ t[1][b >> 16 & 0xff] ^ t[0][b >> 24];
  }
  for (; i < n; i++) c = t[0][(c ^ s[i]) & 0xff] ^ (c >> 8);
  return c ^ 0xffffffffu;
}

/* Stored blocks (BTYPE 00): the data as it is, at most 65535 bytes a block. */
static void deflate_stored(ta_pprof_t *p, buf_t *z, const uint8_t *s, size_t n) {
  size_t done = 0;
  do {
    size_t k = n - done > 65535 ? 65535 : n - done;
    uint8_t h[5] = {done + k == n, (uint8_t)k, (uint8_t)(k >> 8), (uint8_t)~k, (uint8_t)(~k >> 8)};
    buf_put(p, z, h, 5);
    buf_put(p, z, s + done, k);
    done += k;
  } while (done < n);
}

/* One block with the fixed Huffman codes (BTYPE 01) and LZ77 matches found
 * through a hash of 3 bytes, chains 8 deep, a match of 32 bytes taken as it
 * is: no code tables to build or send. Measured: test_pprof's 4000-sample
 * profile 416 KB -> 209 KB (gzip -6, dynamic codes: 153 KB); 10,000 samples
 * of 24 frames 953 KB -> 671 KB (gzip -6: 577 KB) in about 17 ms of CPU;
 * test/prof/make_profile.c's 1328 -> 988 bytes (gzip -6: 878). */
#define WINDOW 32768
#define HASH_BITS 15
#define CHAIN 8
#define NICE 32

typedef struct {
  ta_pprof_t *p;
  buf_t *z;
  uint64_t bits;
  unsigned n;
  uint16_t lit[288]; /* the fixed codes, bit-reversed (Huffman codes go most significant bit first) */
  uint8_t lit_len[288];
  uint8_t dist[30];
  uint8_t len_code[259];   /* match length 3..258 -> length code - 257 */
  uint8_t dist_code[512];  /* distance - 1 < 256 -> its code; 256 + (distance - 1 >> 7) for the rest */
} bits_t;

/* n (<= 32) bits of v, least significant first. The room was reserved by
 * deflate_fixed: 4 bytes go out whenever 32 bits are waiting. */
static inline void put_bits(bits_t *w, uint32_t v, unsigned n) {
  w->bits |= (uint64_t)v << w->n;
  w->n += n;
  if (w->n < 32) return;
  uint8_t *o = w->z->p + w->z->len;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
  uint32_t lo = (uint32_t)w->bits;
  memcpy(o, &lo, 4);
#else
  for (int k = 0; k < 4; k++) o[k] = (uint8_t)(w->bits >> 8 * k);
#endif
  w->z->len += 4;
  w->bits >>= 32;
  w->n -= 32;
}

static uint32_t reverse(uint32_t code, unsigned len) {
  uint32_t r = 0;
  for (unsigned i = 0; i < len; i++) r |= ((code >> i) & 1) << (len - 1 - i);
  return r;
}

static void fixed_codes(bits_t *w) {
  for (unsigned sym = 0; sym < 288; sym++) {
    uint32_t code = sym < 144 ? 0x30 + sym : sym < 256 ? 0x190 + sym - 144 : sym < 280 ? sym - 256 : 0xc0 + sym - 280;
    unsigned len = ta_deflate_fixed_len(sym);
    w->lit[sym] = (uint16_t)reverse(code, len);
    w->lit_len[sym] = (uint8_t)len;
  }
  for (unsigned d = 0; d < 30; d++) w->dist[d] = (uint8_t)reverse(d, TA_DEFLATE_FIXED_DIST_LEN);
  /* codes by table, not by a search per match (most matches are short) */
  for (unsigned len = 3, k = 0; len <= 258; len++) {
    while (k < 28 && len >= ta_deflate_len_base[k + 1]) k++;
    w->len_code[len] = (uint8_t)k;
  }
  for (unsigned d = 1, k = 0; d <= 256; d++) {
    while (d >= ta_deflate_dist_base[k + 1]) k++;
    w->dist_code[d - 1] = (uint8_t)k;
  }
  for (unsigned j = 2, k = 0; j < 256; j++) { /* distances 257..32768 by (distance - 1) >> 7 */
    while (k < 29 && (j << 7) + 1 >= ta_deflate_dist_base[k + 1]) k++;
    w->dist_code[256 + j] = (uint8_t)k;
  }
}

static void put_lit(bits_t *w, unsigned sym) {
  put_bits(w, w->lit[sym], w->lit_len[sym]);
}

static void put_match(bits_t *w, unsigned len, unsigned dist) {
  unsigned k = w->len_code[len];
  put_lit(w, 257 + k);
  put_bits(w, len - ta_deflate_len_base[k], ta_deflate_len_extra[k]);
  k = dist <= 256 ? w->dist_code[dist - 1] : w->dist_code[256 + ((dist - 1) >> 7)];
  put_bits(w, w->dist[k], TA_DEFLATE_FIXED_DIST_LEN);
  put_bits(w, dist - ta_deflate_dist_base[k], ta_deflate_dist_extra[k]);
}

/* How many of the first max bytes of a and b agree, 8 at a time. */
static inline size_t match_len(const uint8_t *a, const uint8_t *b, size_t max) {
  size_t len = 0;
  for (; len + 8 <= max; len += 8) {
    uint64_t x, y;
    memcpy(&x, a + len, 8);
    memcpy(&y, b + len, 8);
    if (x != y) {
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
      return len + (size_t)__builtin_ctzll(x ^ y) / 8;
#else
      return len + (size_t)__builtin_clzll(x ^ y) / 8;
#endif
    }
  }
  while (len < max && a[len] == b[len]) len++;
  return len;
}

static uint32_t hash3(const uint8_t *s) {
  return ((uint32_t)s[0] << 16 | (uint32_t)s[1] << 8 | s[2]) * 2654435761u >> (32 - HASH_BITS);
}

/* false when its tables cannot be mapped (then stored blocks do). */
static bool deflate_fixed(ta_pprof_t *p, buf_t *z, const uint8_t *s, size_t n) {
  size_t head_size = page_round(sizeof(uint32_t) << HASH_BITS), prev_size = page_round(sizeof(uint32_t) * WINDOW);
  void *hq, *pq;
  if (n >= UINT32_MAX || ta_prim_map(head_size, ta_prim_page_size(), &hq)) return false;
  if (ta_prim_map(prev_size, ta_prim_page_size(), &pq)) {
    ta_prim_unmap(hq, head_size);
    return false;
  }
  uint32_t *head = hq, *prev = pq; /* position + 1; 0: none */
  /* the most it can write, so that put_bits need not check: 9 bits a byte
   * (a literal; a match costs less a byte), the block's head and end */
  if (!buf_reserve(p, z, n + n / 8 + 16)) {
    ta_prim_unmap(hq, head_size);
    ta_prim_unmap(pq, prev_size);
    return false;
  }
  bits_t w = {.p = p, .z = z};
  fixed_codes(&w);
  put_bits(&w, 1, 1); /* BFINAL */
  put_bits(&w, 1, 2); /* BTYPE 01: fixed codes */
  size_t i = 0;
  while (i < n && !p->oom) {
    size_t best = 0, dist = 0;
    if (n - i >= 3) {
      uint32_t h = hash3(s + i), cand = head[h];
      size_t max = n - i < 258 ? n - i : 258;
      for (int chain = CHAIN; cand && chain--;) {
        size_t c = cand - 1;
        if (i - c > WINDOW) break;
        if (s[c + best] == s[i + best]) { /* could beat the best: measure */
          size_t len = match_len(s + c, s + i, max);
          if (len > best) best = len, dist = i - c;
          if (len >= NICE) break; /* long enough: looking further costs more than it saves */
        }
        uint32_t next = prev[c & (WINDOW - 1)];
        if (next >= cand) break; /* only ever older */
        cand = next;
      }
      prev[i & (WINDOW - 1)] = head[h];
      head[h] = (uint32_t)i + 1;
    }
    if (best >= 3) {
      put_match(&w, (unsigned)best, (unsigned)dist);
      for (size_t k = 1; k < best && best <= NICE; k++) { /* a short match's positions join the chains */
        if (n - (i + k) < 3) break;
        uint32_t h = hash3(s + i + k);
        prev[(i + k) & (WINDOW - 1)] = head[h];
        head[h] = (uint32_t)(i + k) + 1;
      }
      i += best;
    } else {
      put_lit(&w, s[i++]);
    }
  }
  put_lit(&w, 256); /* end of block */
  if (buf_reserve(p, z, 8)) /* the last bits, padded to a whole byte: the CRC comes next */
    for (; w.n; w.n = w.n > 8 ? w.n - 8 : 0, w.bits >>= 8) z->p[z->len++] = (uint8_t)w.bits;
  ta_prim_unmap(hq, head_size);
  ta_prim_unmap(pq, prev_size);
  return true;
}

static int write_all(int fd, const uint8_t *s, size_t n) {
  while (n) {
    ssize_t w = write(fd, s, n);
    if (w < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    s += w;
    n -= (size_t)w;
  }
  return 0;
}

int ta_pprof_finish(ta_pprof_t *p, int fd) {
  if (!p) return ENOMEM;
  int saved = errno;
  buf_t raw = {0}, z = {0};
  encode(p, &raw);
  static const uint8_t head[10] = {0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3}; /* deflate, no name, Unix */
  buf_put(p, &z, head, sizeof head);
  if (!deflate_fixed(p, &z, raw.p, raw.len) || z.len - sizeof head > raw.len + raw.len / 65535 * 5 + 5) {
    z.len = sizeof head; /* no memory for the tables, or it did not shrink: stored blocks */
    deflate_stored(p, &z, raw.p, raw.len);
  }
  uint32_t crc = crc32(raw.p, raw.len), isize = (uint32_t)raw.len;
  uint8_t tail[8];
  for (int i = 0; i < 4; i++) tail[i] = (uint8_t)(crc >> 8 * i), tail[4 + i] = (uint8_t)(isize >> 8 * i);
  buf_put(p, &z, tail, sizeof tail);
  int err = p->oom ? ENOMEM : write_all(fd, z.p, z.len);
  buf_free(&raw);
  buf_free(&z);
  pprof_free(p);
  errno = saved;
  return err;
}
