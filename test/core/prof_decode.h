/* A test-side reader of the core's profiles: gunzip (the bindings'
 * core/bind/bind_inflate.c, compiled in) and a protobuf varint walker that
 * decodes profile.proto into plain arrays, independent of pprof.c and of
 * the bindings' reader. test_prof.c and test_pprof.c read profiles with it. */
#ifndef TRIMALLOC_TEST_PROF_DECODE_H
#define TRIMALLOC_TEST_PROF_DECODE_H
#include "check.h"
#include "../../core/internal.h"
#ifndef PROF_DECODE_INFLATE_LINKED /* test_pprof.c links it with the other readers */
#include "../../core/bind/bind_inflate.c"
#else
#include "../../core/bind/bind_internal.h"
#endif

#include <sys/stat.h>

/* ---- a protobuf walker ---- */

typedef struct {
  const uint8_t *p, *end;
  int bad;
} rd_t;

static uint64_t rd_varint(rd_t *r) {
  uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    if (r->p >= r->end) break;
    uint8_t b = *r->p++;
    v |= (uint64_t)(b & 0x7f) << shift;
    if (!(b & 0x80)) return v;
  }
  r->bad = 1;
  return 0;
}

/* The next field: its number, and a varint value or a sub-reader (wire type
 * 2). 0 at the end or on bad input (r->bad). */
static int rd_next(rd_t *r, unsigned *field, uint64_t *v, rd_t *sub) {
  if (r->bad || r->p >= r->end) return 0;
  uint64_t key = rd_varint(r);
  *field = (unsigned)(key >> 3);
  switch (key & 7) {
  case 0: *v = rd_varint(r); break;
  case 2: {
    uint64_t n = rd_varint(r);
    if (n > (uint64_t)(r->end - r->p)) r->bad = 1;
    else *sub = (rd_t){r->p, r->p + n, 0}, r->p += n;
    break;
  }
  default: r->bad = 1;
  }
  return !r->bad;
}

/* ---- the decoded profile ---- */

#define MAXN 16384
typedef struct {
  uint64_t type, unit;
} vt_t;
typedef struct {
  uint64_t id, start, limit, offset, file, has_functions;
} dmap_t;
typedef struct {
  uint64_t id, mapping, address, nlines, function;
  int64_t line;
} dloc_t;
typedef struct {
  uint64_t id, name, system_name, file;
} dfunc_t;
typedef struct {
  uint64_t locs[64];
  size_t nlocs, nvals;
  int64_t vals[8];
  uint64_t label_key, label_str, nlabels;
} dsample_t;

typedef struct {
  vt_t types[8], period_type;
  size_t ntypes, nstr, nmap, nloc, nfunc, nsample, ncomment;
  const uint8_t *str[MAXN];
  size_t strlen_[MAXN];
  dmap_t map[64];
  dloc_t loc[MAXN];
  dfunc_t func[MAXN];
  dsample_t *sample; /* MAXN of them */
  uint64_t comment[16], default_type, period;
  int64_t time_nanos;
  int bad;
} prof_t;

static void decode_vt(rd_t r, vt_t *t) {
  unsigned f;
  uint64_t v;
  rd_t s;
  while (rd_next(&r, &f, &v, &s))
    if (f == 1) t->type = v;
    else if (f == 2) t->unit = v;
}

static void decode_packed(rd_t r, uint64_t *out, size_t *n, size_t max) {
  while (r.p < r.end && !r.bad) {
    uint64_t v = rd_varint(&r);
    if (*n < max) out[(*n)++] = v;
  }
}

static int decode_profile(const uint8_t *buf, size_t len, prof_t *pr) {
  rd_t r = {buf, buf + len, 0}, s, t;
  unsigned f, g;
  uint64_t v, w;
  while (rd_next(&r, &f, &v, &s)) {
    switch (f) {
    case 1: if (pr->ntypes < 8) decode_vt(s, &pr->types[pr->ntypes++]); break;
    case 2: {
      if (pr->nsample >= MAXN) break;
      dsample_t *d = &pr->sample[pr->nsample++];
      memset(d, 0, sizeof *d);
      while (rd_next(&s, &g, &w, &t)) {
        if (g == 1) decode_packed(t, d->locs, &d->nlocs, 64);
        else if (g == 2) {
          uint64_t vals[8];
          size_t n = 0;
          decode_packed(t, vals, &n, 8);
          for (size_t i = 0; i < n; i++) d->vals[d->nvals++] = (int64_t)vals[i];
        } else if (g == 3) {
          d->nlabels++;
          unsigned h;
          uint64_t x;
          rd_t u;
          while (rd_next(&t, &h, &x, &u))
            if (h == 1) d->label_key = x;
            else if (h == 2) d->label_str = x;
        }
      }
      break;
    }
    case 3: {
      dmap_t *m = &pr->map[pr->nmap < 63 ? pr->nmap++ : 63];
      memset(m, 0, sizeof *m);
      while (rd_next(&s, &g, &w, &t)) {
        uint64_t *fld[] = {NULL, &m->id, &m->start, &m->limit, &m->offset, &m->file, NULL, &m->has_functions};
        if (g < 8 && fld[g]) *fld[g] = w;
      }
      break;
    }
    case 4: {
      dloc_t *l = &pr->loc[pr->nloc < MAXN - 1 ? pr->nloc++ : MAXN - 1];
      memset(l, 0, sizeof *l);
      while (rd_next(&s, &g, &w, &t)) {
        if (g == 1) l->id = w;
        else if (g == 2) l->mapping = w;
        else if (g == 3) l->address = w;
        else if (g == 4) {
          l->nlines++;
          unsigned h;
          uint64_t x;
          rd_t u;
          while (rd_next(&t, &h, &x, &u))
            if (h == 1) l->function = x;
            else if (h == 2) l->line = (int64_t)x;
        }
      }
      break;
    }
    case 5: {
      dfunc_t *fn = &pr->func[pr->nfunc < MAXN - 1 ? pr->nfunc++ : MAXN - 1];
      memset(fn, 0, sizeof *fn);
      while (rd_next(&s, &g, &w, &t)) {
        uint64_t *fld[] = {NULL, &fn->id, &fn->name, &fn->system_name, &fn->file};
        if (g < 5) *fld[g] = w;
      }
      break;
    }
    case 6:
      if (pr->nstr < MAXN) pr->str[pr->nstr] = s.p, pr->strlen_[pr->nstr++] = (size_t)(s.end - s.p);
      break;
    case 9: pr->time_nanos = (int64_t)v; break;
    case 11: decode_vt(s, &pr->period_type); break;
    case 12: pr->period = v; break;
    case 13: decode_packed(s, pr->comment, &pr->ncomment, 16); break;
    case 14: pr->default_type = v; break;
    default: pr->bad = 1;
    }
  }
  return !r.bad && !pr->bad;
}

/* The string at index i, NUL-terminated (static rotation of buffers). */
static const char *S(const prof_t *pr, uint64_t i) {
  static char bufs[8][512];
  static int k;
  char *b = bufs[k++ & 7];
  if (i >= pr->nstr) return "<out of range>";
  size_t n = pr->strlen_[i] < 511 ? pr->strlen_[i] : 511;
  memcpy(b, pr->str[i], n);
  b[n] = 0;
  return b;
}

static const dloc_t *loc_by_id(const prof_t *pr, uint64_t id) {
  for (size_t i = 0; i < pr->nloc; i++)
    if (pr->loc[i].id == id) return &pr->loc[i];
  return NULL;
}
static const dfunc_t *func_by_id(const prof_t *pr, uint64_t id) {
  for (size_t i = 0; i < pr->nfunc; i++)
    if (pr->func[i].id == id) return &pr->func[i];
  return NULL;
}
static const dmap_t *map_by_id(const prof_t *pr, uint64_t id) {
  for (size_t i = 0; i < pr->nmap; i++)
    if (pr->map[i].id == id) return &pr->map[i];
  return NULL;
}

static uint8_t *read_file(const char *path, size_t *n) {
  int fd = open(path, O_RDONLY);
  if (fd < 0) return NULL;
  struct stat st;
  fstat(fd, &st);
  uint8_t *b = malloc((size_t)st.st_size + 1);
  size_t got = 0;
  while (got < (size_t)st.st_size) {
    ssize_t r = read(fd, b + got, (size_t)st.st_size - got);
    if (r <= 0) break;
    got += (size_t)r;
  }
  close(fd);
  *n = got;
  return b;
}

/* Gunzips `path` and decodes it into pr (pr->sample allocated). */
static int load(const char *path, prof_t *pr, uint8_t **raw) {
  size_t n = 0, len = 0;
  uint8_t *z = read_file(path, &n);
  const char *why = "";
  memset(pr, 0, sizeof *pr);
  pr->sample = calloc(MAXN, sizeof(dsample_t));
  if (!CHECK(z && n > 18 && z[0] == 0x1f && z[1] == 0x8b, "%s is not gzip", path)) return 0;
  int rc = ta_bind_gunzip(z, n, (size_t)1 << 30, raw, &len, &why);
  int ok = CHECK(rc == 0, "gunzip: %s", why ? why : "");
  free(z);
  return ok && CHECK(decode_profile(*raw, len, pr), "the profile does not decode");
}

static void unload(prof_t *pr, uint8_t *raw) {
  free(pr->sample);
  free(raw);
}

#endif
