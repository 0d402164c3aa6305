/* `trimalloc flame`: a profile's call paths (bind_prof.c) as a flame graph,
 * a self-contained SVG (no script, no fonts to fetch: it opens in a browser
 * or an image viewer), or as collapsed stacks ("root;...;leaf value" lines,
 * for flamegraph.pl and speedscope). Tags are not part of a stack here: the
 * graph sums the same frames across tags (`trimalloc top` shows them). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "bind_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WIDTH 1200.0
#define FRAME_H 16
#define PAD 10.0
#define TOP 44 /* title and subtitle */
#define CHAR_W 7.4 /* 12px monospace, with room to spare */

typedef struct {
  uint32_t frame;
  uint32_t parent;
  int64_t total, self; /* self: of paths that end here */
  uint32_t child, next;  /* first child, next sibling (0: none; node 0 is the root) */
  uint32_t depth;
} node_t;

typedef struct {
  ta_bind_prof_t *p;
  node_t *nodes;
  size_t n, cap;
  uint32_t *slots; /* (parent, frame) -> node + 1 */
  size_t mask;
  uint32_t max_depth;
} tree_t;

static uint64_t key_hash(uint32_t parent, uint32_t frame) {
  uint64_t h = ((uint64_t)parent << 32 | frame) * 0x9e3779b97f4a7c15ull;
  return h ^ (h >> 29);
}

static int tree_grow(tree_t *t) {
  if (t->n + 1 >= t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 1024;
    node_t *q = realloc(t->nodes, cap * sizeof *q);
    if (!q) return -1;
    t->nodes = q;
    t->cap = cap;
  }
  if ((t->n + 1) * 2 > t->mask + 1) {
    size_t m = (t->mask + 1) * 2;
    uint32_t *s = calloc(m, sizeof *s);
    if (!s) return -1;
    for (size_t i = 1; i < t->n; i++) { /* every node but the root */
      size_t j = key_hash(t->nodes[i].parent, t->nodes[i].frame) & (m - 1);
      while (s[j]) j = (j + 1) & (m - 1);
      s[j] = (uint32_t)i + 1;
    }
    free(t->slots);
    t->slots = s;
    t->mask = m - 1;
  }
  return 0;
}

static int64_t child_of(tree_t *t, uint32_t parent, uint32_t frame) {
  if (tree_grow(t)) return -1;
  size_t j = key_hash(parent, frame) & t->mask;
  for (; t->slots[j]; j = (j + 1) & t->mask) {
    node_t *c = &t->nodes[t->slots[j] - 1];
    if (c->parent == parent && c->frame == frame) return t->slots[j] - 1;
  }
  uint32_t i = (uint32_t)t->n++;
  node_t *c = &t->nodes[i];
  *c = (node_t){frame, parent, 0, 0, 0, t->nodes[parent].child, t->nodes[parent].depth + 1};
  t->nodes[parent].child = i;
  if (c->depth > t->max_depth) t->max_depth = c->depth;
  t->slots[j] = i + 1;
  return i;
}

/* The tree of positive values of type k, root first. */
static int build(tree_t *t, ta_bind_prof_t *p, size_t k) {
  memset(t, 0, sizeof *t);
  t->p = p;
  t->cap = 1024;
  t->mask = 1023;
  t->nodes = calloc(t->cap, sizeof *t->nodes);
  t->slots = calloc(t->mask + 1, sizeof *t->slots);
  if (!t->nodes || !t->slots) return -1;
  t->n = 1; /* the root, "all" */
  for (size_t i = 0; i < p->npaths; i++) {
    const ta_bind_prof_path_t *e = &p->paths[i];
    int64_t v = p->values[e->value0 + k];
    if (v <= 0) continue;
    uint32_t at = 0;
    t->nodes[0].total += v;
    for (size_t d = e->nframes; d-- > 0;) { /* from the root (the last frame) to the leaf */
      int64_t c = child_of(t, at, p->path_frames[e->frame0 + d]);
      if (c < 0) return -1;
      at = (uint32_t)c;
      t->nodes[at].total += v;
    }
    t->nodes[at].self += v;
  }
  return 0;
}

/* ---- collapsed stacks ---- */

static void put_collapsed_frame(ta_bind_sb_t *b, const char *s) {
  for (; *s; s++) ta_bind_sb_printf(b, "%c", *s == ';' ? ':' : *s); /* ';' separates frames */
}

static void collapsed(tree_t *t, ta_bind_sb_t *b) {
  uint32_t *stack = malloc((t->max_depth + 2) * sizeof *stack);
  if (!stack) {
    b->oom = 1;
    return;
  }
  if (t->nodes[0].self > 0) ta_bind_sb_printf(b, "[no stack] %lld\n", (long long)t->nodes[0].self);
  /* depth-first, each node's path from the root */
  uint32_t i = t->nodes[0].child;
  while (i) {
    node_t *nd = &t->nodes[i];
    stack[nd->depth] = i;
    if (nd->self > 0) {
      for (uint32_t d = 1; d <= nd->depth; d++) {
        if (d > 1) ta_bind_sb_printf(b, ";");
        put_collapsed_frame(b, t->p->names[t->nodes[stack[d]].frame]);
      }
      ta_bind_sb_printf(b, " %lld\n", (long long)nd->self);
    }
    if (nd->child) {
      i = nd->child;
      continue;
    }
    while (i && !t->nodes[i].next) i = t->nodes[i].parent;
    if (i) i = t->nodes[i].next;
  }
  free(stack);
}

/* ---- SVG ---- */

/* Text for XML: &<>"' escaped, control characters and invalid UTF-8 as '?'. */
static void put_xml(ta_bind_sb_t *b, const char *s, size_t max) {
  const unsigned char *u = (const unsigned char *)s;
  size_t shown = 0;
  while (*u && shown < max) {
    unsigned c = *u;
    size_t len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    int ok = len > 0;
    for (size_t k = 1; ok && k < len; k++) ok = (u[k] & 0xc0) == 0x80;
    if (ok && len == 2) ok = c >= 0xc2;                              /* overlong */
    if (ok && len == 3) ok = !(c == 0xe0 && u[1] < 0xa0) && !(c == 0xed && u[1] >= 0xa0); /* overlong, surrogates */
    if (ok && len == 4) ok = c <= 0xf4 && !(c == 0xf0 && u[1] < 0x90) && !(c == 0xf4 && u[1] >= 0x90);
    if (!ok) {
      ta_bind_sb_printf(b, "?");
      u++;
    } else if (len > 1) {
      ta_bind_sb_printf(b, "%.*s", (int)len, (const char *)u);
      u += len;
    } else {
      switch (c) {
      case '&': ta_bind_sb_printf(b, "&amp;"); break;
      case '<': ta_bind_sb_printf(b, "&lt;"); break;
      case '>': ta_bind_sb_printf(b, "&gt;"); break;
      case '"': ta_bind_sb_printf(b, "&quot;"); break;
      case '\'': ta_bind_sb_printf(b, "&apos;"); break;
      default: ta_bind_sb_printf(b, "%c", c < 0x20 || c == 0x7f ? '?' : (char)c);
      }
      u++;
    }
    shown++;
  }
  if (*u) ta_bind_sb_printf(b, "..");
}

/* A stable colour per name: warm for native frames, green-blue for
 * Ruby/Python frames, grey for the root. */
static void colour(char *buf, size_t size, const char *name, int interp) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (const char *c = name; *c && *c != ' '; c++) h = (h ^ (uint8_t)*c) * 0x100000001b3ull;
  unsigned a = (unsigned)(h & 0xff), b = (unsigned)(h >> 8 & 0xff);
  if (interp)
    snprintf(buf, size, "rgb(%u,%u,%u)", 60 + a % 60, 170 + b % 60, 140 + a % 80);
  else
    snprintf(buf, size, "rgb(%u,%u,%u)", 220 + a % 35, 90 + b % 120, 40 + a % 50);
}

typedef struct {
  tree_t *t;
  ta_bind_sb_t *b;
  double scale; /* px per unit */
  int64_t total;
  const char *unit;
  int height;
} svg_t;

static void put_value(svg_t *s, int64_t v) {
  char h[32];
  if (!strcmp(s->unit, "bytes")) ta_bind_sb_printf(s->b, "%s", ta_bind_human(h, sizeof h, v));
  else ta_bind_sb_printf(s->b, "%lld %s", (long long)v, s->unit);
}

static void put_node(svg_t *s, uint32_t i, double x) {
  tree_t *t = s->t;
  node_t *nd = &t->nodes[i];
  double w = (double)nd->total * s->scale;
  double y = s->height - PAD - (double)(nd->depth + 1) * FRAME_H;
  const char *name = i ? t->p->frames[nd->frame] : "all", *label = i ? t->p->names[nd->frame] : "all";
  char fill[32];
  if (i) colour(fill, sizeof fill, name, t->p->frame_interp[nd->frame]);
  else snprintf(fill, sizeof fill, "rgb(200,200,200)");
  ta_bind_sb_t *b = s->b;
  ta_bind_sb_printf(b, "<g><title>");
  put_xml(b, name, (size_t)-1);
  ta_bind_sb_printf(b, " (");
  put_value(s, nd->total);
  ta_bind_sb_printf(b, ", %.2f%%)</title><rect x=\"%.1f\" y=\"%.0f\" width=\"%.1f\" height=\"%d\" fill=\"%s\" rx=\"2\"/>",
                    s->total ? 100.0 * (double)nd->total / (double)s->total : 0.0, x, y, w, FRAME_H - 1, fill);
  size_t chars = w > 3 * CHAR_W ? (size_t)((w - 6) / CHAR_W) : 0;
  if (chars >= 3) {
    ta_bind_sb_printf(b, "<text x=\"%.1f\" y=\"%.0f\">", x + 3, y + FRAME_H - 4);
    put_xml(b, label, chars - 2);
    ta_bind_sb_printf(b, "</text>");
  }
  ta_bind_sb_printf(b, "</g>\n");
}

/* Children in name order, the way flamegraph.pl lays them out. */
static int by_name(const void *x, const void *y, void *ctx) {
  const tree_t *t = ctx;
  const node_t *a = &t->nodes[*(const uint32_t *)x], *c = &t->nodes[*(const uint32_t *)y];
  return strcmp(t->p->frames[a->frame], t->p->frames[c->frame]);
}

static int svg(tree_t *t, ta_bind_sb_t *b, const char *path, const char *type, const char *unit) {
  svg_t s = {t, b, 0, t->nodes[0].total, unit, (int)(TOP + PAD * 2 + (t->max_depth + 1) * FRAME_H)};
  s.scale = s.total > 0 ? (WIDTH - 2 * PAD) / (double)s.total : 0;
  ta_bind_sb_printf(b,
                    "<?xml version=\"1.0\" encoding=\"UTF-8\" standalone=\"no\"?>\n"
                    "<svg xmlns=\"http://www.w3.org/2000/svg\" version=\"1.1\" width=\"%.0f\" height=\"%d\" "
                    "viewBox=\"0 0 %.0f %d\">\n"
                    "<style>text { font-family: monospace; font-size: 12px; fill: #000; pointer-events: none }"
                    " .title { font-size: 16px; font-family: sans-serif } .sub { font-family: sans-serif; fill: #555 }"
                    " rect:hover { stroke: #000; stroke-width: 0.5 }</style>\n"
                    "<rect x=\"0\" y=\"0\" width=\"100%%\" height=\"100%%\" fill=\"#fdfdf8\"/>\n"
                    "<text class=\"title\" x=\"%.0f\" y=\"22\" text-anchor=\"middle\">",
                    WIDTH, s.height, WIDTH, s.height, WIDTH / 2);
  put_xml(b, type, 64);
  ta_bind_sb_printf(b, ": ");
  put_value(&s, s.total);
  ta_bind_sb_printf(b, "</text>\n<text class=\"sub\" x=\"%.0f\" y=\"38\" text-anchor=\"middle\">", WIDTH / 2);
  put_xml(b, path, 200);
  ta_bind_sb_printf(b, " (callers below, the allocating frame on top; hover for names)</text>\n");
  /* depth-first with x positions; children sorted by name once */
  uint32_t *kids = malloc(t->n * sizeof *kids);
  double *xs = malloc(t->n * sizeof *xs);
  if (!kids || !xs) {
    free(kids), free(xs);
    return -1;
  }
  for (size_t i = 0; i < t->n; i++) { /* relink each child list in name order */
    size_t k = 0;
    for (uint32_t c = t->nodes[i].child; c; c = t->nodes[c].next) kids[k++] = c;
    if (k < 2) continue;
    if (ta_bind_sort(kids, k, sizeof *kids, by_name, t)) {
      free(kids), free(xs);
      return -1;
    }
    t->nodes[i].child = kids[0];
    for (size_t j = 0; j + 1 < k; j++) t->nodes[kids[j]].next = kids[j + 1];
    t->nodes[kids[k - 1]].next = 0;
  }
  xs[0] = PAD;
  put_node(&s, 0, PAD);
  uint32_t i = t->nodes[0].child;
  if (i) xs[i] = PAD;
  while (i) {
    node_t *nd = &t->nodes[i];
    double w = (double)nd->total * s.scale;
    if (w >= 0.1) put_node(&s, i, xs[i]); /* narrower than 0.1 px: left out, with its callees */
    if (nd->child && w >= 0.1) {
      xs[nd->child] = xs[i];
      i = nd->child;
      continue;
    }
    while (i && !t->nodes[i].next) i = t->nodes[i].parent;
    if (i) {
      uint32_t prev = i;
      i = t->nodes[i].next;
      xs[i] = xs[prev] + (double)t->nodes[prev].total * s.scale;
    }
  }
  ta_bind_sb_printf(b, "</svg>\n");
  free(kids), free(xs);
  return 0;
}

int ta_bind_prof_flame(const char *path, const char *type, int collapsed_, const char *out, char *err,
                       size_t errlen) {
  if (!out || !*out) {
    snprintf(err, errlen, "no output file given");
    errno = EINVAL;
    return -1;
  }
  ta_bind_prof_t p;
  int k;
  if (ta_bind_prof_load(path, &p) || (k = ta_bind_prof_type(&p, type)) < 0) {
    ta_bind_prof_error(&p, err, errlen);
    int e = errno;
    ta_bind_prof_free(&p);
    errno = e;
    return -1;
  }
  tree_t t;
  ta_bind_sb_t b = {0};
  int rc = build(&t, &p, (size_t)k);
  if (!rc) {
    if (collapsed_) collapsed(&t, &b);
    else rc = svg(&t, &b, path, p.type_names[k], p.type_units[k]);
  }
  if (rc || b.oom) {
    snprintf(err, errlen, "%s: out of memory", path);
    errno = ENOMEM;
    rc = -1;
  } else {
    int fd = strcmp(out, "-") ? open(out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644) : 1;
    if (fd < 0 || ta_bind_write_all(fd, b.s ? b.s : "", b.len)) {
      int e = errno;
      snprintf(err, errlen, "%s: cannot write: %s", out, strerror(e));
      errno = e;
      rc = -1;
    }
    if (fd > 1 && close(fd) && !rc) {
      int e = errno;
      snprintf(err, errlen, "%s: cannot write: %s", out, strerror(e));
      errno = e;
      rc = -1;
    }
  }
  free(t.nodes), free(t.slots), free(b.s);
  ta_bind_prof_free(&p);
  return rc;
}
