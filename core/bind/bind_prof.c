/* Reading a profile: pprof's profile.proto, gzipped or plain, from any
 * writer (the core, Go, pprof, TCMalloc), into call paths with their values
 * summed by (frames, tag). bind_prof_top.c and bind_flame.c present them.
 *
 * The file is untrusted: every varint, length and index is checked, and what
 * a hostile file could blow up (stack depth, the frames of all samples) is
 * capped. A problem gives -1 and one line naming the file and what is wrong
 * (errno EINVAL for contents, the system's errno when the file cannot be
 * read). These run in a CLI or a binding, never inside malloc: they use malloc. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "bind_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_FILE ((size_t)1 << 30)     /* compressed or not */
#define MAX_DEPTH TA_BIND_PROF_MAX_DEPTH
#define MAX_FRAMES ((size_t)64 << 20)  /* frames over all call paths */

/* ---- errors ---- */

static int prof_fail(ta_bind_prof_t *p, int err, const char *fmt, ...) {
  if (!p->failed) {
    int n = snprintf(p->err, sizeof p->err, "%s: ", p->path);
    va_list ap;
    va_start(ap, fmt);
    if (n >= 0 && (size_t)n < sizeof p->err) vsnprintf(p->err + n, sizeof p->err - (size_t)n, fmt, ap);
    va_end(ap);
    p->failed = err;
  }
  return -1;
}

/* ---- growable arrays ---- */

static int grow(ta_bind_prof_t *p, void **a, size_t *cap, size_t n, size_t size) {
  if (n < *cap) return 0;
  size_t c = *cap ? *cap * 2 : 16;
  while (c <= n) c *= 2;
  void *q = c > SIZE_MAX / size ? NULL : realloc(*a, c * size);
  if (!q) return prof_fail(p, ENOMEM, "out of memory");
  *a = q;
  *cap = c;
  return 0;
}
#define PUSH(p, arr, n, cap, v) \
  (grow((p), (void **)&(arr), &(cap), (n), sizeof *(arr)) ? -1 : ((arr)[(n)++] = (v), 0))

/* ---- protobuf ---- */

typedef struct {
  const uint8_t *p, *end;
} span_t;

/* The next field of m: number, wire type, and the varint (types 0, 1, 5) or
 * the bytes (type 2). 1, 0 at the end, -1 on malformed input. */
static int next_field(span_t *m, unsigned *field, unsigned *wt, uint64_t *v, span_t *bytes) {
  if (m->p >= m->end) return 0;
  uint64_t key = 0;
  int shift = 0;
  for (;;) {
    if (m->p >= m->end || shift > 63) return -1;
    uint8_t b = *m->p++;
    key |= (uint64_t)(b & 0x7f) << shift;
    shift += 7;
    if (!(b & 0x80)) break;
  }
  *field = (unsigned)(key >> 3);
  *wt = (unsigned)(key & 7);
  if (*field == 0) return -1;
  switch (*wt) {
  case 0: {
    uint64_t x = 0;
    for (shift = 0;; shift += 7) {
      if (m->p >= m->end || shift > 63) return -1;
      uint8_t b = *m->p++;
      x |= (uint64_t)(b & 0x7f) << shift;
      if (!(b & 0x80)) break;
    }
    *v = x;
    return 1;
  }
  case 1:
  case 5: {
    size_t n = *wt == 1 ? 8 : 4;
    if ((size_t)(m->end - m->p) < n) return -1;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) x |= (uint64_t)m->p[i] << 8 * i;
    m->p += n;
    *v = x;
    return 1;
  }
  case 2: {
    span_t lenspan = *m;
    uint64_t n = 0;
    for (shift = 0;; shift += 7) {
      if (lenspan.p >= lenspan.end || shift > 63) return -1;
      uint8_t b = *lenspan.p++;
      n |= (uint64_t)(b & 0x7f) << shift;
      if (!(b & 0x80)) break;
    }
    if (n > (uint64_t)(lenspan.end - lenspan.p)) return -1;
    bytes->p = lenspan.p;
    bytes->end = lenspan.p + n;
    m->p = lenspan.p + n;
    return 1;
  }
  default: return -1; /* groups (3, 4) are not in profile.proto */
  }
}

/* The varint fields 1..n of message m (wire type 0; a field seen twice: the
 * last): field k into out[k - 1], which keeps its value when the field is
 * absent. Other fields are skipped. 0, or -1 on malformed input. */
static int varints(span_t m, uint64_t *out, unsigned n) {
  unsigned f, wt;
  uint64_t v;
  span_t b;
  int r;
  while ((r = next_field(&m, &f, &wt, &v, &b)) > 0)
    if (wt == 0 && f <= n) out[f - 1] = v;
  return r;
}

/* A repeated integer field's values: packed (wire type 2) or one (type 0). */
static int each_int(ta_bind_prof_t *p, unsigned wt, uint64_t v, span_t bytes, uint64_t **arr, size_t *n,
                    size_t *cap) {
  if (wt == 0) return PUSH(p, *arr, *n, *cap, v);
  if (wt != 2) return prof_fail(p, EINVAL, "not a profile (bad wire type for a number list)");
  while (bytes.p < bytes.end) {
    uint64_t x = 0;
    int shift = 0;
    for (;;) {
      if (bytes.p >= bytes.end || shift > 63) return prof_fail(p, EINVAL, "not a profile (bad packed varint)");
      uint8_t b = *bytes.p++;
      x |= (uint64_t)(b & 0x7f) << shift;
      shift += 7;
      if (!(b & 0x80)) break;
    }
    if (PUSH(p, *arr, *n, *cap, x)) return -1;
  }
  return 0;
}

/* ---- decoded tables ---- */

typedef struct {
  uint64_t id, name, file;
} fn_t;
typedef struct {
  uint64_t id, file;
} mp_t;
typedef struct {
  uint64_t id, mapping, address;
  size_t line0, nlines;     /* in lines[] (function id, line) pairs */
  int64_t frame0, nframes;  /* in loc_frames[], -1 until rendered */
} lc_t;
typedef struct {
  uint64_t function;
  int64_t line;
} ln_t;

typedef struct {
  ta_bind_prof_t *p;
  span_t *strs;
  size_t nstr;
  fn_t *fns;
  size_t nfn;
  mp_t *maps;
  size_t nmap;
  lc_t *locs;
  size_t nloc;
  ln_t *lines;
  size_t nlines;
  uint32_t *loc_frames;
  size_t nloc_frames, cap_loc_frames;
} dec_t;

static int by_id(const void *a, const void *b) {
  uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
  return x < y ? -1 : x > y;
}

/* The entry with id `id` of a table sorted by id (the id is its first field). */
static void *find_id(void *base, size_t n, size_t size, uint64_t id) {
  return id ? bsearch(&id, base, n, size, by_id) : NULL;
}

static int check_str(dec_t *d, uint64_t i, const char *what) {
  if (i < d->nstr) return 0;
  return prof_fail(d->p, EINVAL, "not a valid profile (%s names string %llu of %zu)", what,
                   (unsigned long long)i, d->nstr);
}

/* ---- frames: interned texts ---- */

static uint64_t hash_bytes(const void *s, size_t n, uint64_t h) {
  const uint8_t *b = s;
  for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
  return h;
}

/* Open addressing over entry index + 1. */
static int table_grow(ta_bind_prof_t *p, uint32_t **slots, size_t *mask, size_t count,
                      uint64_t (*hash)(ta_bind_prof_t *, uint32_t)) {
  if (*slots && (count + 1) * 2 <= *mask + 1) return 0;
  size_t n = *slots ? (*mask + 1) * 2 : 1024;
  uint32_t *s = calloc(n, sizeof *s);
  if (!s) return prof_fail(p, ENOMEM, "out of memory");
  if (*slots)
    for (size_t i = 0; i <= *mask; i++) {
      if (!(*slots)[i]) continue;
      size_t j = hash(p, (*slots)[i] - 1) & (n - 1);
      while (s[j]) j = (j + 1) & (n - 1);
      s[j] = (*slots)[i];
    }
  free(*slots);
  *slots = s;
  *mask = n - 1;
  return 0;
}

static uint64_t frame_hash(ta_bind_prof_t *p, uint32_t i) {
  return hash_bytes(p->frames[i], strlen(p->frames[i]), 0xcbf29ce484222325ull);
}

/* The id of frame text s (copied); -1 on failure. Its name for the rows
 * and collapsed stacks is the first `name_len` bytes (all of s when longer):
 * "function (file:line)" as it is, a native frame without the object. */
static int64_t frame_id(ta_bind_prof_t *p, const char *s, size_t name_len, int interp) {
  if (table_grow(p, &p->frame_slots, &p->frame_mask, p->nframes, frame_hash)) return -1;
  size_t len = strlen(s);
  uint64_t h = hash_bytes(s, len, 0xcbf29ce484222325ull);
  size_t j = h & p->frame_mask;
  for (; p->frame_slots[j]; j = (j + 1) & p->frame_mask)
    if (!strcmp(p->frames[p->frame_slots[j] - 1], s)) return p->frame_slots[j] - 1;
  if (name_len > len) name_len = len;
  char *copy = malloc(len + name_len + 2); /* "text\0name\0" */
  if (!copy || grow(p, (void **)&p->frame_interp, &p->cap_frames2, p->nframes, 1) ||
      grow(p, (void **)&p->frames, &p->cap_frames, p->nframes, sizeof(char *)) ||
      grow(p, (void **)&p->names, &p->cap_names, p->nframes, sizeof(char *))) {
    free(copy);
    return prof_fail(p, ENOMEM, "out of memory");
  }
  memcpy(copy, s, len + 1);
  memcpy(copy + len + 1, s, name_len);
  copy[len + 1 + name_len] = 0;
  p->frames[p->nframes] = copy;
  p->names[p->nframes] = name_len == len ? copy : copy + len + 1;
  p->frame_interp[p->nframes] = (unsigned char)interp;
  p->frame_slots[j] = (uint32_t)++p->nframes;
  return (int64_t)p->nframes - 1;
}

/* "function (file:line)", "function (file)" without a line (a native
 * frame's file is its object: its name is "function" alone, but for "??"),
 * "function" without a file, or "0x<address> (object)" for an address
 * nobody named. */
static int render(dec_t *d, lc_t *l) {
  char buf[4096];
  l->frame0 = (int64_t)d->nloc_frames;
  l->nframes = 0;
  mp_t *m = find_id(d->maps, d->nmap, sizeof *d->maps, l->mapping);
  span_t mf = m ? d->strs[m->file] : (span_t){NULL, NULL};
  int interp = l->mapping == 0;
  if (!l->nlines) {
    if (m && mf.end > mf.p)
      snprintf(buf, sizeof buf, "0x%llx (%.*s)", (unsigned long long)l->address, (int)(mf.end - mf.p), mf.p);
    else
      snprintf(buf, sizeof buf, "0x%llx", (unsigned long long)l->address);
    int64_t f = frame_id(d->p, buf, SIZE_MAX, 0);
    if (f < 0 || PUSH(d->p, d->loc_frames, d->nloc_frames, d->cap_loc_frames, (uint32_t)f)) return -1;
    l->nframes = 1;
    return 0;
  }
  for (size_t i = 0; i < l->nlines; i++) { /* leaf (innermost inlined) first */
    ln_t *ln = &d->lines[l->line0 + i];
    fn_t *fn = find_id(d->fns, d->nfn, sizeof *d->fns, ln->function);
    span_t name = fn ? d->strs[fn->name] : (span_t){NULL, NULL};
    span_t file = fn ? d->strs[fn->file] : (span_t){NULL, NULL};
    int nn = (int)(name.end - name.p), nf = (int)(file.end - file.p);
    if (!nn) name = (span_t){(const uint8_t *)"??", (const uint8_t *)"??" + 2}, nn = 2;
    size_t name_len = strnlen((const char *)name.p, (size_t)nn);
    if (!(nf && ln->line <= 0) || (name_len == 2 && !memcmp(name.p, "??", 2))) name_len = SIZE_MAX;
    if (nf && ln->line > 0)
      snprintf(buf, sizeof buf, "%.*s (%.*s:%lld)", nn, name.p, nf, file.p, (long long)ln->line);
    else if (nf)
      snprintf(buf, sizeof buf, "%.*s (%.*s)", nn, name.p, nf, file.p);
    else
      snprintf(buf, sizeof buf, "%.*s", nn, name.p);
    /* a name with a NUL inside stops there; the text stays one line */
    for (char *c = buf; *c; c++)
      if (*c == '\n' || *c == '\r') *c = ' ';
    int64_t f = frame_id(d->p, buf, name_len, interp);
    if (f < 0 || PUSH(d->p, d->loc_frames, d->nloc_frames, d->cap_loc_frames, (uint32_t)f)) return -1;
    l->nframes++;
  }
  return 0;
}

/* ---- call paths: summed by (frames, tag) ---- */

static uint64_t path_hash_of(const uint32_t *fr, size_t n, int64_t tag) {
  uint64_t h = hash_bytes(fr, n * sizeof *fr, 0xcbf29ce484222325ull);
  return hash_bytes(&tag, sizeof tag, h);
}

static uint64_t path_hash(ta_bind_prof_t *p, uint32_t i) {
  ta_bind_prof_path_t *e = &p->paths[i];
  return path_hash_of(p->path_frames + e->frame0, e->nframes, e->tag);
}

static int add_path(ta_bind_prof_t *p, const uint32_t *fr, size_t n, int64_t tag, const int64_t *v) {
  if (table_grow(p, &p->path_slots, &p->path_mask, p->npaths, path_hash)) return -1;
  size_t j = path_hash_of(fr, n, tag) & p->path_mask;
  for (; p->path_slots[j]; j = (j + 1) & p->path_mask) {
    ta_bind_prof_path_t *e = &p->paths[p->path_slots[j] - 1];
    if (e->tag == tag && e->nframes == n && !memcmp(p->path_frames + e->frame0, fr, n * sizeof *fr)) {
      for (size_t k = 0; k < p->ntypes; k++) p->values[e->value0 + k] += v[k];
      return 0;
    }
  }
  if (p->npath_frames + n > MAX_FRAMES)
    return prof_fail(p, EINVAL, "too large to read (more than %zu frames over all call paths)", MAX_FRAMES);
  if (grow(p, (void **)&p->paths, &p->cap_paths, p->npaths, sizeof *p->paths) ||
      grow(p, (void **)&p->path_frames, &p->cap_path_frames, p->npath_frames + n, sizeof *p->path_frames) ||
      grow(p, (void **)&p->values, &p->cap_values, p->nvalues + p->ntypes, sizeof *p->values))
    return -1;
  ta_bind_prof_path_t *e = &p->paths[p->npaths];
  e->frame0 = p->npath_frames;
  e->nframes = n;
  e->tag = tag;
  e->value0 = p->nvalues;
  if (n) memcpy(p->path_frames + p->npath_frames, fr, n * sizeof *fr);
  p->npath_frames += n;
  for (size_t k = 0; k < p->ntypes; k++) p->values[p->nvalues++] = v[k];
  p->path_slots[j] = (uint32_t)++p->npaths;
  return 0;
}

/* ---- the Profile message ---- */

static char *span_dup(span_t s) {
  size_t n = (size_t)(s.end - s.p);
  char *c = malloc(n + 1);
  if (c) {
    if (n) memcpy(c, s.p, n);
    c[n] = 0;
  }
  return c;
}

#define BAD(d) prof_fail((d)->p, EINVAL, "not a profile (malformed protobuf)")

static int decode_sample(dec_t *d, span_t m, uint64_t **ids, size_t *cap_ids, uint64_t **vals,
                         size_t *cap_vals, uint32_t *fr) {
  ta_bind_prof_t *p = d->p;
  size_t nids = 0, nvals = 0;
  int64_t tag = -1;
  unsigned f, wt;
  uint64_t v = 0; /* next_field sets the one its wire type has (gcc -O3 cannot tell) */
  span_t b = {0};
  int r;
  while ((r = next_field(&m, &f, &wt, &v, &b)) > 0) {
    if (f == 1 && each_int(p, wt, v, b, ids, &nids, cap_ids)) return -1;
    if (f == 2 && each_int(p, wt, v, b, vals, &nvals, cap_vals)) return -1;
    if (f == 3 && wt == 2) { /* Label */
      uint64_t ks[2] = {0, 0}, key, str; /* key, str */
      if (varints(b, ks, 2) < 0) return BAD(d);
      key = ks[0], str = ks[1];
      if (check_str(d, key, "a label") || check_str(d, str, "a label")) return -1;
      span_t k = d->strs[key];
      if (str && k.end - k.p == 3 && !memcmp(k.p, "tag", 3)) {
        span_t s = d->strs[str];
        char buf[256];
        snprintf(buf, sizeof buf, "%.*s", (int)(s.end - s.p), s.p);
        tag = frame_id(p, buf, SIZE_MAX, 0);
        if (tag < 0) return -1;
      }
    }
  }
  if (r < 0) return BAD(d);
  if (nvals != p->ntypes)
    return prof_fail(p, EINVAL, "not a valid profile (a sample has %zu values for %zu sample types)", nvals,
                     p->ntypes);
  size_t n = 0;
  for (size_t i = 0; i < nids && n < MAX_DEPTH; i++) {
    lc_t *l = find_id(d->locs, d->nloc, sizeof *d->locs, (*ids)[i]);
    if (!l)
      return prof_fail(p, EINVAL, "not a valid profile (a sample names location %llu, which is not there)",
                       (unsigned long long)(*ids)[i]);
    if (l->frame0 < 0 && render(d, l)) return -1;
    for (int64_t k = 0; k < l->nframes && n < MAX_DEPTH; k++) fr[n++] = d->loc_frames[l->frame0 + k];
  }
  int64_t vv[64];
  for (size_t k = 0; k < p->ntypes; k++) vv[k] = (int64_t)(*vals)[k];
  for (size_t k = 0; k < p->ntypes; k++) p->totals[k] += vv[k];
  p->nsamples++;
  return add_path(p, fr, n, tag, vv);
}

static int decode(ta_bind_prof_t *p, const uint8_t *buf, size_t len) {
  dec_t d = {.p = p};
  span_t m = {buf, buf + len}, b;
  span_t *samples = NULL, *fns = NULL, *maps = NULL, *locs = NULL, *types = NULL;
  size_t nsamples = 0, cap_samples = 0, nfns = 0, cap_fns = 0, nmaps = 0, cap_maps = 0, nlocs = 0, cap_locs = 0;
  size_t ntypes = 0, cap_types = 0, cap_strs = 0, ncom = 0, cap_com = 0;
  uint64_t *com = NULL, *ids = NULL, *vals = NULL;
  size_t cap_ids = 0, cap_vals = 0, cap_lines = 0;
  uint64_t default_type = 0, v;
  uint32_t *fr = NULL;
  unsigned f, wt;
  int r, rc = -1;
  /* Pass 1: where each message is (the string table may come last). */
  while ((r = next_field(&m, &f, &wt, &v, &b)) > 0) {
    int e = 0;
    if (wt == 2 && f == 1) e = PUSH(p, types, ntypes, cap_types, b);
    else if (wt == 2 && f == 2) e = PUSH(p, samples, nsamples, cap_samples, b);
    else if (wt == 2 && f == 3) e = PUSH(p, maps, nmaps, cap_maps, b);
    else if (wt == 2 && f == 4) e = PUSH(p, locs, nlocs, cap_locs, b);
    else if (wt == 2 && f == 5) e = PUSH(p, fns, nfns, cap_fns, b);
    else if (wt == 2 && f == 6) e = PUSH(p, d.strs, d.nstr, cap_strs, b);
    else if (f == 12 && wt == 0) p->period = (int64_t)v;
    else if (f == 13) e = each_int(p, wt, v, b, &com, &ncom, &cap_com);
    else if (f == 14 && wt == 0) default_type = v;
    else if (f == 11 && wt == 2) {
      uint64_t type = (uint64_t)p->period_type_index;
      varints(b, &type, 1); /* as far as it reads */
      p->period_type_index = (int64_t)type;
    }
    if (e) goto out;
  }
  if (r < 0) {
    BAD(&d);
    goto out;
  }
  if (d.nstr == 0 || d.strs[0].end != d.strs[0].p) {
    prof_fail(p, EINVAL, len ? "not a profile (no string table starting with \"\")" : "empty file");
    goto out;
  }
  /* sample types */
  if (!ntypes || ntypes > 64) {
    prof_fail(p, EINVAL, "not a valid profile (%zu sample types)", ntypes);
    goto out;
  }
  p->ntypes = ntypes;
  for (size_t i = 0; i < ntypes; i++) {
    uint64_t tu[2] = {0, 0}, t, u; /* type, unit */
    if (varints(types[i], tu, 2) < 0) {
      BAD(&d);
      goto out;
    }
    t = tu[0], u = tu[1];
    if (check_str(&d, t, "a sample type") || check_str(&d, u, "a sample type")) goto out;
    if (!(p->type_names[i] = span_dup(d.strs[t])) || !(p->type_units[i] = span_dup(d.strs[u]))) {
      prof_fail(p, ENOMEM, "out of memory");
      goto out;
    }
  }
  if (default_type && default_type < d.nstr) p->default_type = span_dup(d.strs[default_type]);
  if (p->period_type_index > 0 && (uint64_t)p->period_type_index < d.nstr)
    p->period_type = span_dup(d.strs[p->period_type_index]);
  for (size_t i = 0; i < ncom; i++) {
    if (check_str(&d, com[i], "a comment")) goto out;
    span_t s = d.strs[com[i]];
    size_t n = (size_t)(s.end - s.p);
    if (n > 16 && !memcmp(s.p, "exact_allocated=", 16)) {
      char num[32];
      snprintf(num, sizeof num, "%.*s", (int)(n - 16 < 31 ? n - 16 : 31), s.p + 16);
      char *end;
      errno = 0;
      unsigned long long x = strtoull(num, &end, 10);
      if (!*end && !errno && num[0] != '-') p->exact_allocated = (int64_t)x, p->has_exact = 1;
    } else if (n > 7 && !memcmp(s.p, "reason=", 7)) {
      free(p->reason);
      p->reason = span_dup((span_t){s.p + 7, s.end});
    }
  }
  /* functions, mappings */
  if (!(d.fns = calloc(nfns + 1, sizeof *d.fns)) || !(d.maps = calloc(nmaps + 1, sizeof *d.maps)) ||
      !(d.locs = calloc(nlocs + 1, sizeof *d.locs))) {
    prof_fail(p, ENOMEM, "out of memory");
    goto out;
  }
  for (size_t i = 0; i < nfns; i++) {
    fn_t *fn = &d.fns[d.nfn++];
    uint64_t x[4] = {0}; /* id, name, system_name, filename */
    if (varints(fns[i], x, 4) < 0) {
      BAD(&d);
      goto out;
    }
    *fn = (fn_t){x[0], x[1], x[3]};
    if (check_str(&d, fn->name, "a function") || check_str(&d, fn->file, "a function")) goto out;
  }
  for (size_t i = 0; i < nmaps; i++) {
    mp_t *mp = &d.maps[d.nmap++];
    uint64_t x[5] = {0}; /* id, memory_start, memory_limit, file_offset, filename */
    if (varints(maps[i], x, 5) < 0) {
      BAD(&d);
      goto out;
    }
    *mp = (mp_t){x[0], x[4]};
    if (check_str(&d, mp->file, "a mapping")) goto out;
  }
  for (size_t i = 0; i < nlocs; i++) {
    lc_t *l = &d.locs[d.nloc++];
    l->line0 = d.nlines;
    l->frame0 = -1;
    unsigned g, w2;
    span_t c;
    while ((r = next_field(&locs[i], &g, &w2, &v, &c)) > 0) {
      if (g == 1 && w2 == 0) l->id = v;
      else if (g == 2 && w2 == 0) l->mapping = v;
      else if (g == 3 && w2 == 0) l->address = v;
      else if (g == 4 && w2 == 2) {
        uint64_t x[2] = {0, 0}; /* function_id, line */
        if (varints(c, x, 2) < 0) {
          BAD(&d);
          goto out;
        }
        if (PUSH(p, d.lines, d.nlines, cap_lines, ((ln_t){x[0], (int64_t)x[1]}))) goto out;
        l->nlines++;
      }
    }
    if (r < 0) {
      BAD(&d);
      goto out;
    }
  }
  qsort(d.fns, d.nfn, sizeof *d.fns, by_id);
  qsort(d.maps, d.nmap, sizeof *d.maps, by_id);
  qsort(d.locs, d.nloc, sizeof *d.locs, by_id);
  for (size_t i = 1; i < d.nloc; i++)
    if (d.locs[i].id == d.locs[i - 1].id) {
      prof_fail(p, EINVAL, "not a valid profile (two locations with id %llu)", (unsigned long long)d.locs[i].id);
      goto out;
    }
  /* samples */
  if (!(fr = malloc(MAX_DEPTH * sizeof *fr))) {
    prof_fail(p, ENOMEM, "out of memory");
    goto out;
  }
  for (size_t i = 0; i < nsamples; i++)
    if (decode_sample(&d, samples[i], &ids, &cap_ids, &vals, &cap_vals, fr)) goto out;
  rc = 0;
out:
  free(samples), free(fns), free(maps), free(locs), free(types), free(com), free(ids), free(vals), free(fr);
  free(d.strs), free(d.fns), free(d.maps), free(d.locs), free(d.lines), free(d.loc_frames);
  return rc;
}

/* ---- load, free, sample types ---- */

void ta_bind_prof_free(ta_bind_prof_t *p) {
  for (size_t i = 0; i < p->nframes; i++) free(p->frames[i]);
  for (size_t i = 0; i < p->ntypes; i++) free(p->type_names[i]), free(p->type_units[i]);
  free(p->frames), free(p->names), free(p->frame_interp), free(p->frame_slots), free(p->paths), free(p->path_frames);
  free(p->values), free(p->path_slots), free(p->default_type), free(p->period_type), free(p->reason);
  free(p->path);
  memset(p, 0, sizeof *p);
}

/* The whole file (a pipe too), at most MAX_FILE bytes. */
static int read_all(ta_bind_prof_t *p, uint8_t **out, size_t *n) {
  int fd = open(p->path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return prof_fail(p, errno, "cannot open: %s", strerror(errno));
  struct stat st;
  if (fstat(fd, &st) == 0 && S_ISDIR(st.st_mode)) {
    close(fd);
    return prof_fail(p, EISDIR, "is a directory");
  }
  uint8_t *b = NULL;
  size_t got = 0, cap = 0;
  for (;;) {
    if (got == cap) {
      if (cap > MAX_FILE) {
        free(b);
        close(fd);
        return prof_fail(p, EFBIG, "too large (the limit is 1 GiB)");
      }
      cap = cap ? cap * 2 : 65536;
      uint8_t *q = realloc(b, cap);
      if (!q) {
        free(b);
        close(fd);
        return prof_fail(p, ENOMEM, "out of memory");
      }
      b = q;
    }
    ssize_t r = read(fd, b + got, cap - got);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      int e = errno;
      free(b);
      close(fd);
      return prof_fail(p, e, "cannot read: %s", strerror(e));
    }
    if (r == 0) break;
    got += (size_t)r;
  }
  close(fd);
  *out = b;
  *n = got;
  return 0;
}

int ta_bind_prof_load(const char *path, ta_bind_prof_t *p) {
  memset(p, 0, sizeof *p);
  p->path = strdup(path ? path : "(null)");
  if (!p->path) {
    snprintf(p->err, sizeof p->err, "out of memory");
    p->failed = ENOMEM;
    return -1;
  }
  uint8_t *raw = NULL, *plain = NULL;
  size_t n = 0, len = 0;
  if (read_all(p, &raw, &n)) return -1;
  int rc;
  if (n >= 2 && raw[0] == 0x1f && raw[1] == 0x8b) {
    const char *why = NULL;
    if (ta_bind_gunzip(raw, n, MAX_FILE, &plain, &len, &why))
      rc = prof_fail(p, strcmp(why, "out of memory") ? EINVAL : ENOMEM, "bad gzip data (%s)", why);
    else
      rc = decode(p, plain, len);
  } else {
    rc = decode(p, raw, n);
  }
  free(raw);
  free(plain);
  return rc;
}

int ta_bind_prof_type(ta_bind_prof_t *p, const char *name) {
  if (!name) { /* inuse_space, else the file's default, else the last (pprof's rule) */
    for (size_t i = 0; i < p->ntypes; i++)
      if (!strcmp(p->type_names[i], "inuse_space")) return (int)i;
    if (p->default_type)
      for (size_t i = 0; i < p->ntypes; i++)
        if (!strcmp(p->type_names[i], p->default_type)) return (int)i;
    return (int)p->ntypes - 1;
  }
  for (size_t i = 0; i < p->ntypes; i++)
    if (!strcmp(p->type_names[i], name)) return (int)i;
  char have[512] = "";
  size_t k = 0;
  for (size_t i = 0; i < p->ntypes && k < sizeof have; i++) {
    int w = snprintf(have + k, sizeof have - k, "%s%s", i ? ", " : "", p->type_names[i]);
    if (w < 0) break;
    k += (size_t)w;
  }
  return prof_fail(p, EINVAL, "no sample type '%s' (the profile has: %s)", name, have);
}

void ta_bind_prof_error(ta_bind_prof_t *p, char *err, size_t errlen) {
  if (err && errlen) snprintf(err, errlen, "%s", p->err);
  errno = p->failed ? p->failed : EINVAL;
}

/* ---- output helpers for bind_prof_top.c and bind_flame.c ---- */

/* Room for n more bytes and the NUL; 0, or -1 (b->oom set). */
static int sb_room(ta_bind_sb_t *b, size_t n) {
  if (b->cap - b->len > n) return 0;
  size_t cap = b->cap ? b->cap * 2 : 4096;
  while (cap - b->len <= n) cap *= 2;
  char *q = realloc(b->s, cap);
  if (!q) {
    b->oom = 1;
    return -1;
  }
  b->s = q;
  b->cap = cap;
  return 0;
}

__attribute__((format(printf, 2, 3))) void ta_bind_sb_printf(ta_bind_sb_t *b, const char *fmt, ...) {
  if (b->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->s ? b->s + b->len : NULL, b->s ? b->cap - b->len : 0, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if (b->s && (size_t)n < b->cap - b->len) {
      b->len += (size_t)n;
      return;
    }
    if (sb_room(b, (size_t)n)) return;
  }
}

void ta_bind_sb_put(ta_bind_sb_t *b, const char *s, size_t n) {
  if (b->oom || sb_room(b, n)) return;
  memcpy(b->s + b->len, s, n);
  b->len += n;
  b->s[b->len] = 0;
}

/* 1536 -> "1.5 KiB"; below 1 KiB in bytes. */
const char *ta_bind_human(char *buf, size_t size, int64_t v) {
  static const char *const units[] = {"KiB", "MiB", "GiB", "TiB", "PiB"};
  double x = v < 0 ? -(double)v : (double)v;
  if (x < 1024) {
    snprintf(buf, size, "%lld B", (long long)v);
    return buf;
  }
  int u = -1;
  while (x >= 1024 && u < 4) x /= 1024, u++;
  snprintf(buf, size, "%s%.1f %s", v < 0 ? "-" : "", x, units[u]);
  return buf;
}

int ta_bind_write_all(int fd, const char *s, size_t n) {
  while (n) {
    ssize_t w = write(fd, s, n);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return -1;
    s += w;
    n -= (size_t)w;
  }
  return 0;
}


/* A stable merge sort with a context (qsort has none in C11; qsort_r is not
 * in musl's older releases). */
int ta_bind_sort(void *base, size_t n, size_t size, int (*cmp)(const void *, const void *, void *), void *ctx) {
  if (n < 2) return 0;
  char *a = base, *tmp = malloc(n * size);
  if (!tmp) return -1;
  for (size_t w = 1; w < n; w *= 2) {
    for (size_t lo = 0; lo < n; lo += 2 * w) {
      size_t mid = lo + w < n ? lo + w : n, hi = lo + 2 * w < n ? lo + 2 * w : n, i = lo, j = mid, o = lo;
      while (i < mid && j < hi)
        if (cmp(a + j * size, a + i * size, ctx) < 0) memcpy(tmp + o++ * size, a + j++ * size, size);
        else memcpy(tmp + o++ * size, a + i++ * size, size);
      memcpy(tmp + o * size, a + i * size, (mid - i) * size), o += mid - i;
      memcpy(tmp + o * size, a + j * size, (hi - j) * size);
    }
    memcpy(a, tmp, n * size);
  }
  free(tmp);
  return 0;
}
