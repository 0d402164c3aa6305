/* `trimalloc top` and the bindings' Profile.top: the call paths of a profile
 * (bind_prof.c) with the most of one sample type, as rows or as a text table
 * for a Ruby or Python developer: live bytes, share, objects, bytes
 * allocated, then where: the first frames below the allocator, and the first
 * Ruby/Python frames in full (the native frames between them counted). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "bind_internal.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char *const ta_bind_prof_types[TA_BIND_PROF_ROW_NFIELDS] = {"inuse_space", "inuse_objects", "alloc_space",
                                                                    "alloc_objects"};

static int check_order(const char *path, const char *order, char *err, size_t errlen) {
  if (!order) return 0;
  for (int i = 0; i < 4; i++)
    if (!strcmp(order, ta_bind_prof_types[i])) return 0;
  snprintf(err, errlen, "%s: unknown sample type '%s' (inuse_space, inuse_objects, alloc_space or alloc_objects)",
           path, order);
  errno = EINVAL;
  return -1;
}

/* Path indices sorted by sample type k, largest first (ties: file order). */
typedef struct {
  const ta_bind_prof_t *p;
  size_t k;
} order_t;
static int by_value(const void *a, const void *b, void *ctx) {
  const order_t *o = ctx;
  size_t x = *(const size_t *)a, y = *(const size_t *)b;
  int64_t vx = o->p->values[o->p->paths[x].value0 + o->k], vy = o->p->values[o->p->paths[y].value0 + o->k];
  if (vx != vy) return vx > vy ? -1 : 1;
  return x < y ? -1 : x > y;
}

static size_t *sorted(const ta_bind_prof_t *p, size_t k) {
  size_t *idx = malloc((p->npaths + 1) * sizeof *idx);
  if (!idx) return NULL;
  for (size_t i = 0; i < p->npaths; i++) idx[i] = i;
  order_t o = {p, k};
  if (ta_bind_sort(idx, p->npaths, sizeof *idx, by_value, &o)) {
    free(idx);
    return NULL;
  }
  return idx;
}

/* Loads the profile and picks the sample type; -1 with err set. */
static int open_profile(const char *path, const char *order, ta_bind_prof_t *p, int *k, char *err,
                        size_t errlen) {
  if (check_order(path, order, err, errlen)) return -1;
  if (ta_bind_prof_load(path, p) || (*k = ta_bind_prof_type(p, order)) < 0) {
    ta_bind_prof_error(p, err, errlen);
    int e = errno;
    ta_bind_prof_free(p);
    errno = e;
    return -1;
  }
  return 0;
}

static int type_index(const ta_bind_prof_t *p, const char *name) {
  for (size_t i = 0; i < p->ntypes; i++)
    if (!strcmp(p->type_names[i], name)) return (int)i;
  return -1;
}

static int64_t value_of(const ta_bind_prof_t *p, const ta_bind_prof_path_t *e, int i) {
  return i < 0 ? 0 : p->values[e->value0 + (size_t)i];
}

int ta_bind_prof_top(const char *path, const char *order, size_t n,
                     void (*row)(void *arg, const ta_bind_prof_row_t *r), void *arg, char *err, size_t errlen) {
  ta_bind_prof_t p;
  int k;
  if (open_profile(path, order, &p, &k, err, errlen)) return -1;
  size_t *idx = sorted(&p, (size_t)k);
  const char **frames = malloc(TA_BIND_PROF_MAX_DEPTH * sizeof *frames);
  if (!idx || !frames) {
    free(idx), free(frames), ta_bind_prof_free(&p);
    snprintf(err, errlen, "%s: out of memory", path);
    errno = ENOMEM;
    return -1;
  }
  int is = type_index(&p, "inuse_space"), io = type_index(&p, "inuse_objects");
  int as = type_index(&p, "alloc_space"), ao = type_index(&p, "alloc_objects");
  size_t count = n && n < p.npaths ? n : p.npaths;
  for (size_t r = 0; r < count; r++) {
    const ta_bind_prof_path_t *e = &p.paths[idx[r]];
    for (size_t i = 0; i < e->nframes; i++) frames[i] = p.names[p.path_frames[e->frame0 + i]];
    ta_bind_prof_row_t out = {value_of(&p, e, is), value_of(&p, e, io), value_of(&p, e, as),
                              value_of(&p, e, ao), e->nframes, frames,
                              e->tag >= 0 ? p.frames[e->tag] : NULL};
    row(arg, &out);
  }
  free(idx), free(frames), ta_bind_prof_free(&p);
  return 0;
}

/* ---- the text table ---- */

/* Allocator entry points and their wrappers: the leaf frames nobody asked
 * about (the row's bytes are what they allocated for the frames below). */
static int allocator_frame(const char *f) {
  static const char *const names[] = {
      "malloc",           "calloc",           "realloc",           "reallocarray",       "free",
      "posix_memalign",   "aligned_alloc",    "memalign",          "valloc",             "pvalloc",
      "ruby_xmalloc",     "ruby_xmalloc2",    "ruby_xcalloc",      "ruby_xrealloc",      "ruby_xrealloc2",
      "ruby_mimmalloc",   "rb_xmalloc_mul_add", "rb_xcalloc_mul_add", "rb_xrealloc_mul_add",
      "rb_xmalloc_mul_add_mul", "objspace_xmalloc0", "objspace_xcalloc", "objspace_xrealloc",
      "PyObject_Malloc",  "PyObject_Calloc",  "PyObject_Realloc",  "_PyObject_Malloc",   "_PyObject_Calloc",
      "_PyObject_Realloc", "gc_alloc"};
  static const char *const prefixes[] = {"trimalloc_", "ta_",       "__libc_", "PyMem_", "_PyMem_",
                                         "pymalloc_",  "_PyObject_GC_", "operator new", "_Znw", "_Zna"};
  size_t len = strcspn(f, " "); /* the name, before " (file)" */
  for (size_t i = 0; i < sizeof names / sizeof *names; i++)
    if (strlen(names[i]) == len && !strncmp(f, names[i], len)) return 1;
  for (size_t i = 0; i < sizeof prefixes / sizeof *prefixes; i++)
    if (!strncmp(f, prefixes[i], strlen(prefixes[i]))) return 1;
  return 0;
}

/* A frame nobody could name: "?? object" (the core's), "??", an address. */
static int unnamed(const ta_bind_prof_t *p, uint32_t f) {
  const char *s = p->names[f];
  return !strncmp(s, "??", 2) || !strncmp(s, "0x", 2);
}

/* The file name of a native frame's object ("" when none is known). */
static const char *object_of(const ta_bind_prof_t *p, uint32_t f, size_t *len) {
  const char *s = p->frames[f], *open = strrchr(s, '(');
  size_t n = strlen(s);
  *len = 0;
  if (p->frame_interp[f] || !open || s[n - 1] != ')' || strchr(open, ':')) return "";
  const char *obj = open + 1, *slash = memrchr(obj, '/', (size_t)(s + n - 1 - obj));
  if (slash) obj = slash + 1;
  *len = (size_t)(s + n - 1 - obj);
  return obj;
}

static int same_object(const ta_bind_prof_t *p, uint32_t a, uint32_t b) {
  size_t la, lb;
  const char *oa = object_of(p, a, &la), *ob = object_of(p, b, &lb);
  return la == lb && !memcmp(oa, ob, la);
}

/* A frame for the table: a native frame's object by its file name only
 * ("rb_str_plus (libruby-3.1.so.3.1)", "?? (libruby-3.1.so.3.1)"). */
static void put_frame(ta_bind_sb_t *b, const ta_bind_prof_t *p, uint32_t f) {
  const char *s = p->frames[f];
  const char *open = strrchr(s, '(');
  size_t n = strlen(s);
  if (!p->frame_interp[f] && open && open > s && open[-1] == ' ' && s[n - 1] == ')' && !strchr(open, ':')) {
    const char *obj = open + 1, *slash = memrchr(obj, '/', (size_t)(s + n - 1 - obj));
    size_t name = unnamed(p, f) && s[0] == '?' ? 2 : (size_t)(open - 1 - s);
    ta_bind_sb_printf(b, "%.*s (%s", (int)name, s, slash ? slash + 1 : obj);
    return;
  }
  ta_bind_sb_printf(b, "%s", s);
}

/* Where a call path allocated, in one line: the frames below the allocator
 * (unnamed ones skipped), and when there are Ruby/Python frames, the native
 * frame the interpreter called and then the interpreter's frames. */
static void put_where(ta_bind_sb_t *b, const ta_bind_prof_t *p, const ta_bind_prof_path_t *e) {
  const uint32_t *fr = p->path_frames + e->frame0;
  size_t n = e->nframes, i = 0, shown = 0, last = 0;
  if (e->tag >= 0) ta_bind_sb_printf(b, "[%s] ", p->frames[e->tag]);
  if (!n) {
    ta_bind_sb_printf(b, "(no stack)");
    return;
  }
  while (i + 1 < n && allocator_frame(p->frames[fr[i]])) i++;
  /* unnamed frames in the allocator's object (Ruby's static xmalloc and the like) */
  for (size_t k = i; i + 1 < n && unnamed(p, fr[i]) && same_object(p, fr[i], fr[k]);) i++;
  size_t j = i; /* the first interpreter frame */
  while (j < n && !p->frame_interp[fr[j]]) j++;
  if (j < n) {
    if (j > i) { /* what the interpreter called */
      put_frame(b, p, fr[i]);
      shown++;
      if (j > i + 1) ta_bind_sb_printf(b, " < (%zu native)", j - i - 1);
      ta_bind_sb_printf(b, " < ");
    }
    for (i = j; i < n && shown < 4; i++, shown++) {
      if (i > j) ta_bind_sb_printf(b, " < ");
      put_frame(b, p, fr[i]);
      last = i;
    }
  } else { /* native only: the first four frames, unnamed ones when they say which object */
    for (last = i; i < n && shown < 4; i++) {
      if (shown && unnamed(p, fr[i]) && same_object(p, fr[i], fr[last])) continue;
      if (shown) ta_bind_sb_printf(b, " < ");
      put_frame(b, p, fr[i]);
      shown++;
      last = i;
    }
  }
  if (last + 1 < n) ta_bind_sb_printf(b, " < +%zu", n - last - 1);
}

static int table(const char *path, const char *order, size_t n, ta_bind_sb_t *b, char *err, size_t errlen) {
  ta_bind_prof_t p;
  int k;
  if (open_profile(path, order, &p, &k, err, errlen)) return -1;
  size_t *idx = sorted(&p, (size_t)k);
  if (!idx) {
    ta_bind_prof_free(&p);
    snprintf(err, errlen, "%s: out of memory", path);
    errno = ENOMEM;
    return -1;
  }
  int is = type_index(&p, "inuse_space"), io = type_index(&p, "inuse_objects");
  int as = type_index(&p, "alloc_space");
  char h1[32], h2[32], h3[32];
  int bytes = !strcmp(p.type_units[k], "bytes");
  ta_bind_sb_printf(b, "%s: %zu samples", path, p.nsamples);
  if (p.reason) ta_bind_sb_printf(b, ", reason %s", p.reason);
  if (p.period > 0 && p.period_type && !strcmp(p.period_type, "space"))
    ta_bind_sb_printf(b, ", one sample every %s allocated on average", ta_bind_human(h1, sizeof h1, p.period));
  ta_bind_sb_printf(b, "\n");
  if (is >= 0) {
    ta_bind_sb_printf(b, "live: %s", ta_bind_human(h1, sizeof h1, p.totals[is]));
    if (io >= 0) ta_bind_sb_printf(b, " in %lld objects", (long long)p.totals[io]);
    ta_bind_sb_printf(b, " (estimated from the samples)");
    if (p.has_exact) ta_bind_sb_printf(b, "; exactly %s at the dump", ta_bind_human(h2, sizeof h2, p.exact_allocated));
    if (as >= 0) ta_bind_sb_printf(b, "; allocated (estimated): %s", ta_bind_human(h3, sizeof h3, p.totals[as]));
    ta_bind_sb_printf(b, "\n");
  }
  size_t count = n && n < p.npaths ? n : p.npaths;
  ta_bind_sb_printf(b, "top %zu of %zu call paths by %s (%% of its total); frames leaf first (a < its caller), "
                    "allocator frames left out\n\n", count, p.npaths, p.type_names[k]);
  ta_bind_sb_printf(b, "%10s %6s %10s %10s  %s\n", is >= 0 ? "live" : p.type_names[k], "%", "objects", "allocated", "where");
  int64_t total = p.totals[k], shown = 0;
  for (size_t r = 0; r < count; r++) {
    const ta_bind_prof_path_t *e = &p.paths[idx[r]];
    int64_t v = p.values[e->value0 + (size_t)k], main_v = is >= 0 ? value_of(&p, e, is) : v;
    shown += v;
    char pct[16];
    if (total > 0) snprintf(pct, sizeof pct, "%.1f%%", 100.0 * (double)v / (double)total);
    else snprintf(pct, sizeof pct, "-");
    if (is >= 0) ta_bind_human(h1, sizeof h1, main_v);
    else if (bytes) ta_bind_human(h1, sizeof h1, v);
    else snprintf(h1, sizeof h1, "%lld", (long long)v);
    ta_bind_sb_printf(b, "%10s %6s %10lld %10s  ", h1, pct, (long long)value_of(&p, e, io),
              as >= 0 ? ta_bind_human(h2, sizeof h2, value_of(&p, e, as)) : "-");
    put_where(b, &p, e);
    ta_bind_sb_printf(b, "\n");
  }
  if (count < p.npaths) {
    char rest[32];
    if (bytes) ta_bind_human(rest, sizeof rest, total - shown);
    else snprintf(rest, sizeof rest, "%lld", (long long)(total - shown));
    ta_bind_sb_printf(b, "%10s %6s  in the other %zu call paths\n", rest, "", p.npaths - count);
  }
  free(idx);
  ta_bind_prof_free(&p);
  if (b->oom) {
    snprintf(err, errlen, "%s: out of memory", path);
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

int ta_bind_prof_top_str(const char *path, const char *order, size_t n, char **out, char *err, size_t errlen) {
  ta_bind_sb_t b = {0};
  if (table(path, order, n, &b, err, errlen)) {
    free(b.s);
    return -1;
  }
  *out = b.s ? b.s : strdup("");
  return *out ? 0 : -1;
}

int ta_bind_prof_top_text(const char *path, const char *order, size_t n, int fd, char *err, size_t errlen) {
  char *s;
  if (ta_bind_prof_top_str(path, order, n, &s, err, errlen)) return -1;
  int rc = ta_bind_write_all(fd, s, strlen(s));
  if (rc) {
    int e = errno;
    snprintf(err, errlen, "cannot write the table: %s", strerror(e));
    errno = e;
  }
  free(s);
  return rc;
}
