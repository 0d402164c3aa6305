/* The heap profiler's x86-64 walk from cached unwind rules, in place of
 * libgcc's _Unwind_Backtrace (which interprets each frame's CIE and FDE
 * programs again for every frame of every walk: 1.6 K instructions a frame,
 * bench/results-2026-12-06-prof-sample-cost.txt section 4).
 *
 * A rule, per return address: CFA = rsp or rbp + offset; the return
 * address at CFA - 8; rbp saved at CFA + k, or unchanged; or "the end"
 * (the return address undefined: _start, clone3), or "give up". It is
 * computed once from the FDE prof_fde.c finds (its copy, or in place) by a
 * small CFA-program interpreter that knows advance_loc*, def_cfa*, offset*,
 * restore*, remember/restore_state, same_value, nop and GNU_args_size, and
 * ignores the rules of registers the walk does not need (not rsp, rbp or
 * the return column). Anything else gives up: expressions or val_* rules or
 * register rules for rsp, rbp or the return address, a CFA from an
 * expression or another register, DW_CFA_set_loc, signal frames ('S'), no
 * FDE. A walk that meets a rule it cannot use, or a read outside the
 * thread's stack (bounds as the frame-pointer walk's), throws its frames
 * away: the caller then runs libgcc's unwinder, as before.
 *
 * Budget: a hit is a hash probe and three loads from the stack (1.2 K
 * instructions a walk of 19-20 frames in preloaded Python, against libgcc's
 * 26 K: bench/results-2026-12-07-unwind-cache.txt); a miss is one prof_fde.c lookup and one program
 * interpreted, under no lock, then an insert under cfa_lock (a leaf but for
 * prof_meta's). The table: 16-byte entries, open addressing, from 256
 * entries (one page), doubled at half full in mappings of its own within
 * prof_max_bytes, at most 1 M entries (16 MiB); a PC that does not fit is
 * walked without being cached. Readers take no lock: entries are written
 * once (the rule, then the key with release), and a table that was
 * outgrown stays mapped (a reader may be in it): the tables together are
 * under twice the last one. Nothing here calls malloc; a sample runs it with
 * the profiler's guard set, so a signal handler's malloc on the same thread
 * never samples into it; fork takes cfa_lock before prof_meta's. */
#include "internal.h"

_Atomic uint64_t ta_prof_cfa_walks, ta_prof_cfa_giveups, ta_prof_cfa_rules;

#if TA_PROF_CFA
#include <unwind.h>

struct dwarf_eh_bases { /* libgcc's (unwind-dw2-fde.h) */
  void *tbase, *dbase, *func;
};
TA_HIDDEN const void *_Unwind_Find_FDE(void *pc, struct dwarf_eh_bases *bases); /* prof_fde.c's */

/* A rule: the kind in bits 0-1, flags, rbp's offset from the CFA in bits
 * 16-31, the CFA's offset in bits 32-63. */
enum { R_WALK = 1, R_END = 2, R_GIVE_UP = 3, R_CFA_RBP = 4, R_RBP_SAVED = 8 };
typedef struct {
  _Atomic uint64_t key; /* a return address; 0 empty */
  _Atomic uint64_t rule;
} cfa_ent_t;
typedef struct {
  cfa_ent_t *e;
  size_t cap;
} cfa_tab_t;
#define CFA_CAP0 256 /* one page */
#define CFA_CAP_MAX ((size_t)1 << 20)
static ta_lock_t cfa_lock = PTHREAD_MUTEX_INITIALIZER;
/* The table and its size in one word (a page-aligned mapping | log2 of its
 * entries), read by walks without the lock. */
static _Atomic uintptr_t cfa_tab;
static size_t cfa_n; /* entries in the table: under cfa_lock */

static inline cfa_tab_t tab_load(void) {
  uintptr_t v = atomic_load_explicit(&cfa_tab, memory_order_acquire);
  return (cfa_tab_t){(cfa_ent_t *)(v & ~(uintptr_t)63), v ? (size_t)1 << (v & 63) : 0};
}

static inline size_t cfa_slot(uint64_t key, size_t cap) {
  return (size_t)((key * 0x9e3779b97f4a7c15ull) >> 20) & (cap - 1);
}

static inline uint64_t cfa_find(cfa_tab_t t, uint64_t key) {
  for (size_t j = cfa_slot(key, t.cap);; j = (j + 1) & (t.cap - 1)) {
    uint64_t k = atomic_load_explicit(&t.e[j].key, memory_order_acquire);
    if (k == key) return atomic_load_explicit(&t.e[j].rule, memory_order_relaxed);
    if (!k) return 0;
  }
}

static void cfa_put(cfa_tab_t t, uint64_t key, uint64_t rule) { /* cfa_lock held; key absent */
  size_t j = cfa_slot(key, t.cap);
  while (atomic_load_explicit(&t.e[j].key, memory_order_relaxed)) j = (j + 1) & (t.cap - 1);
  atomic_store_explicit(&t.e[j].rule, rule, memory_order_relaxed);
  atomic_store_explicit(&t.e[j].key, key, memory_order_release);
}

static void cfa_insert(uint64_t key, uint64_t rule) {
  ta_lock(&cfa_lock);
  cfa_tab_t t = tab_load();
  if (t.cap && cfa_find(t, key)) goto out; /* another thread's */
  if ((cfa_n + 1) * 2 > t.cap) {
    cfa_tab_t g = {NULL, t.cap ? t.cap * 2 : CFA_CAP0};
    if (g.cap > CFA_CAP_MAX || !(g.e = ta_prof_meta_map(g.cap * sizeof(cfa_ent_t))))
      goto out; /* not cached: walked from the rule computed */
    for (size_t i = 0; i < t.cap; i++) {
      uint64_t k = atomic_load_explicit(&t.e[i].key, memory_order_relaxed);
      if (k) cfa_put(g, k, atomic_load_explicit(&t.e[i].rule, memory_order_relaxed));
    }
    /* the old table stays mapped: a walk may be reading it */
    atomic_store_explicit(&cfa_tab, (uintptr_t)g.e | (uintptr_t)__builtin_ctzll(g.cap), memory_order_release);
    t = g;
  }
  cfa_put(t, key, rule);
  ta_relaxed_store(&ta_prof_cfa_rules, ++cfa_n);
out:
  ta_unlock(&cfa_lock);
}

/* ---- the CFA-program interpreter ---- */
enum { REG_RBP = 6, REG_RSP = 7, REG_RA = 16 };
enum { H_SAME, H_OFFSET, H_UNDEF }; /* a register's rule */
typedef struct {
  int64_t cfa_off, rbp_off, ra_off;
  uint8_t cfa_reg, rbp_how, ra_how;
} row_t;

static const uint8_t *sleb(const uint8_t *p, const uint8_t *end, int64_t *v) {
  uint64_t r = 0;
  unsigned sh = 0;
  for (; p < end && sh < 64;) {
    uint8_t b = *p++;
    r |= (uint64_t)(b & 0x7f) << sh;
    sh += 7;
    if (!(b & 0x80)) {
      if (sh < 64 && (b & 0x40)) r |= ~(uint64_t)0 << sh;
      *v = (int64_t)r;
      return p;
    }
  }
  return NULL;
}
static uint32_t u32(const uint8_t *p) {
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
}
static int enc_size(uint8_t e) { /* DW_EH_PE_* value formats; -1: not handled */
  switch (e & 0x0f) {
  case 0x00: return 8;
  case 0x02: case 0x0a: return 2;
  case 0x03: case 0x0b: return 4;
  case 0x04: case 0x0c: return 8;
  default: return -1;
  }
}

typedef struct {
  uint64_t code_align;
  int64_t data_align;
  const uint8_t *prog, *end;
  int psz;   /* the FDEs' pc_begin and pc_range size */
  bool zaug; /* the FDEs have augmentation data */
} cie_t;

static bool parse_cie(const uint8_t *c, cie_t *ci) {
  uint32_t len = u32(c);
  if (len < 9 || len >= 0xfffffff0u || u32(c + 4) != 0) return false;
  const uint8_t *end = c + 4 + len, *p = c + 9;
  uint8_t ver = c[8];
  if (ver != 1 && ver != 3) return false;
  const char *aug = (const char *)p;
  size_t alen = strnlen(aug, (size_t)(end - p));
  if (p + alen >= end) return false;
  p += alen + 1;
  uint64_t ra;
  if (!(p = ta_uleb(p, end, &ci->code_align)) || !(p = sleb(p, end, &ci->data_align))) return false;
  if (ver == 1) ra = p < end ? *p++ : 0xff;
  else if (!(p = ta_uleb(p, end, &ra))) return false;
  if (ra != REG_RA) return false;
  uint8_t fenc = 0; /* absptr */
  ci->zaug = alen && aug[0] == 'z';
  if (ci->zaug) {
    uint64_t dlen;
    if (!(p = ta_uleb(p, end, &dlen)) || dlen > (uint64_t)(end - p)) return false;
    const uint8_t *d = p, *dend = p + dlen;
    for (size_t i = 1; i < alen; i++) {
      if (aug[i] == 'R' && d < dend) fenc = *d++;
      else if (aug[i] == 'P' && d < dend) {
        uint8_t pe = *d++;
        if (enc_size(pe) < 0 || (pe & 0x70) == 0x50) return false; /* aligned */
        d += enc_size(pe);
      } else if (aug[i] == 'L' && d < dend) d++;
      else if (aug[i] != 'B') return false; /* 'S' (a signal frame), or unknown */
    }
    p = dend;
  } else if (alen) return false;
  ci->psz = enc_size(fenc);
  ci->prog = p;
  ci->end = end;
  return ci->psz > 0;
}

/* The rule for a frame whose return address is ra, in the function at
 * func with the FDE fde: R_GIVE_UP when this file cannot express it. */
#define STATES 8
static uint64_t interpret(const uint8_t *fde, uintptr_t func, uintptr_t ra) {
  uint32_t flen = u32(fde);
  if (flen < 8 || flen >= 0xfffffff0u) return R_GIVE_UP;
  const uint8_t *fend = fde + 4 + flen;
  cie_t ci;
  if (!parse_cie(fde + 4 - u32(fde + 4), &ci)) return R_GIVE_UP;
  const uint8_t *p = fde + 8 + 2 * ci.psz;
  if (p > fend) return R_GIVE_UP;
  if (ci.zaug) {
    uint64_t alen;
    if (!(p = ta_uleb(p, fend, &alen)) || alen > (uint64_t)(fend - p)) return R_GIVE_UP;
    p += alen;
  }
  row_t row = {0, 0, 0, 0xff, H_SAME, H_SAME}, init = row, saved[STATES];
  int depth = 0;
  uintptr_t loc = func;
  /* the CIE's initial instructions, then the FDE's, as libgcc's
   * execute_cfa_program runs them: while the location is before ra */
  for (int pass = 0; pass < 2; pass++) {
    const uint8_t *q = pass ? p : ci.prog, *end = pass ? fend : ci.end;
    while (q && q < end && loc < ra) {
      uint8_t op = *q++;
      uint64_t reg = 0, u = 0, delta = 0;
      int64_t s = 0, off = 0;
      int how = -1; /* a register's new rule: set below */
      switch (op >> 6) {
      case 1: delta = op & 0x3f; break;
      case 2:
        reg = op & 0x3f;
        if (!(q = ta_uleb(q, end, &u))) return R_GIVE_UP;
        how = H_OFFSET, off = (int64_t)u * ci.data_align;
        break;
      case 3:
        reg = op & 0x3f;
        how = 3; /* restore */
        break;
      default:
        switch (op) {
        case 0x00: case 0x2e: /* nop; GNU_args_size (for landing pads) */
          if (op && !(q = ta_uleb(q, end, &u))) return R_GIVE_UP;
          break;
        case 0x02: case 0x03: case 0x04: { /* advance_loc1, 2, 4 */
          int n = op == 0x02 ? 1 : op == 0x03 ? 2 : 4;
          if (end - q < n) return R_GIVE_UP;
          for (int i = n - 1; i >= 0; i--) delta = delta << 8 | q[i];
          q += n;
          break;
        }
        case 0x05: /* offset_extended */
          if (!(q = ta_uleb(q, end, &reg)) || !(q = ta_uleb(q, end, &u))) return R_GIVE_UP;
          how = H_OFFSET, off = (int64_t)u * ci.data_align;
          break;
        case 0x11: /* offset_extended_sf */
          if (!(q = ta_uleb(q, end, &reg)) || !(q = sleb(q, end, &s))) return R_GIVE_UP;
          how = H_OFFSET, off = s * ci.data_align;
          break;
        case 0x06: /* restore_extended */
          if (!(q = ta_uleb(q, end, &reg))) return R_GIVE_UP;
          how = 3;
          break;
        case 0x07: /* undefined */
          if (!(q = ta_uleb(q, end, &reg))) return R_GIVE_UP;
          how = H_UNDEF;
          break;
        case 0x08: /* same_value */
          if (!(q = ta_uleb(q, end, &reg))) return R_GIVE_UP;
          how = H_SAME;
          break;
        case 0x09: case 0x14: case 0x15: /* register, val_offset(_sf): a rule this file cannot hold */
          if (!(q = ta_uleb(q, end, &reg)) || !(q = ta_uleb(q, end, &u))) return R_GIVE_UP;
          how = 4;
          break;
        case 0x10: case 0x16: /* expression, val_expression */
          if (!(q = ta_uleb(q, end, &reg)) || !(q = ta_uleb(q, end, &u)) || u > (uint64_t)(end - q)) return R_GIVE_UP;
          q += u;
          how = 4;
          break;
        case 0x0a: /* remember_state (the CFA rule with the registers') */
          if (depth == STATES) return R_GIVE_UP;
          saved[depth++] = row;
          break;
        case 0x0b: /* restore_state */
          if (!depth) return R_GIVE_UP;
          row = saved[--depth];
          break;
        case 0x0c: /* def_cfa */
          if (!(q = ta_uleb(q, end, &reg)) || !(q = ta_uleb(q, end, &u))) return R_GIVE_UP;
          row.cfa_reg = reg < 0xff ? (uint8_t)reg : 0xff, row.cfa_off = (int64_t)u;
          break;
        case 0x12: /* def_cfa_sf */
          if (!(q = ta_uleb(q, end, &reg)) || !(q = sleb(q, end, &s))) return R_GIVE_UP;
          row.cfa_reg = reg < 0xff ? (uint8_t)reg : 0xff, row.cfa_off = s * ci.data_align;
          break;
        case 0x0d: /* def_cfa_register */
          if (!(q = ta_uleb(q, end, &reg))) return R_GIVE_UP;
          row.cfa_reg = reg < 0xff ? (uint8_t)reg : 0xff;
          break;
        case 0x0e: /* def_cfa_offset */
          if (!(q = ta_uleb(q, end, &u))) return R_GIVE_UP;
          row.cfa_off = (int64_t)u;
          break;
        case 0x13: /* def_cfa_offset_sf */
          if (!(q = sleb(q, end, &s))) return R_GIVE_UP;
          row.cfa_off = s * ci.data_align;
          break;
        default: return R_GIVE_UP; /* set_loc, def_cfa_expression, GNU_negative_offset_extended, unknown */
        }
      }
      loc += delta * ci.code_align;
      if (how < 0) continue;
      if (reg == REG_RSP) return R_GIVE_UP; /* the caller's rsp is the CFA: no other rule */
      if (reg != REG_RBP && reg != REG_RA) continue; /* not needed by the walk */
      if (how == 4) return R_GIVE_UP;
      if (how == 3) { /* restore: the CIE's rule */
        if (pass == 0) return R_GIVE_UP;
        if (reg == REG_RBP) row.rbp_how = init.rbp_how, row.rbp_off = init.rbp_off;
        else row.ra_how = init.ra_how, row.ra_off = init.ra_off;
      } else if (reg == REG_RBP) row.rbp_how = (uint8_t)how, row.rbp_off = off;
      else row.ra_how = (uint8_t)how, row.ra_off = off;
    }
    if (!q) return R_GIVE_UP;
    if (!pass) init = row;
  }
  if (row.ra_how == H_UNDEF) return R_END;
  if (row.ra_how != H_OFFSET || row.ra_off != -8 || (row.cfa_reg != REG_RSP && row.cfa_reg != REG_RBP) ||
      row.rbp_how == H_UNDEF || row.cfa_off != (int32_t)row.cfa_off || row.rbp_off != (int16_t)row.rbp_off)
    return R_GIVE_UP;
  return R_WALK | (row.cfa_reg == REG_RBP ? R_CFA_RBP : 0) | (row.rbp_how == H_OFFSET ? R_RBP_SAVED : 0) |
         (uint64_t)(uint16_t)(int16_t)row.rbp_off << 16 | (uint64_t)(uint32_t)(int32_t)row.cfa_off << 32;
}

static uint64_t rule_of(uintptr_t ra) { /* a miss */
  struct dwarf_eh_bases b = {0};
  const uint8_t *fde = _Unwind_Find_FDE((void *)(ra - 1), &b);
  uint64_t r = fde && b.func ? interpret(fde, (uintptr_t)b.func, ra) : R_GIVE_UP;
  cfa_insert(ra, r);
  return r;
}

static bool give_up(ta_prof_walk_t *w, uint64_t *pcs, size_t max) {
  ta_relaxed_add(&ta_prof_cfa_giveups, 1);
  ta_prof_walk_init(w, pcs, max);
  return false;
}

/* From this function's own frame record (it keeps frame pointers: its CFA
 * is rbp + 16) to the first frame of a rule it cannot use. */
TA_PROF_PATH bool ta_prof_unwind_cfa(ta_prof_walk_t *w) {
  if (ta_opt(TA_OPT_PROF_UNWIND) == TA_PROF_UNWIND_LIBGCC_ONLY) return false;
  ta_relaxed_add(&ta_prof_cfa_walks, 1);
  uint64_t *pcs = w->pcs;
  size_t max = w->max;
  uintptr_t lo, hi;
  ta_prof_stack_bounds(&lo, &hi);
  const uintptr_t *fp = __builtin_frame_address(0);
  uintptr_t sp = (uintptr_t)fp + 16, bp, ra;
  if ((uintptr_t)fp < lo || sp > hi) return give_up(w, pcs, max);
  bp = fp[0];
  ra = fp[1];
  cfa_tab_t t = tab_load();
  while (ra) {
    if (!ta_prof_walk_add(w, ra)) return true;
    uint64_t r = t.cap ? cfa_find(t, ra) : 0;
    if (!r) {
      r = rule_of(ra);
      t = tab_load();
    }
    if ((r & 3) == R_END) return true;
    if ((r & 3) != R_WALK) return give_up(w, pcs, max);
    uintptr_t cfa = ((r & R_CFA_RBP) ? bp : sp) + (uintptr_t)(int64_t)(int32_t)(r >> 32);
    if (cfa <= sp || cfa > hi || cfa - 8 < lo || (cfa & 7)) return give_up(w, pcs, max);
    if (r & R_RBP_SAVED) {
      uintptr_t a = cfa + (uintptr_t)(int64_t)(int16_t)(r >> 16);
      if (a < lo || a + 8 > hi || (a & 7)) return give_up(w, pcs, max);
      bp = *(const uintptr_t *)a;
    }
    ra = *(const uintptr_t *)(cfa - 8);
    sp = cfa;
  }
  return true; /* a zero return address: libgcc's end too */
}

void ta_prof_cfa_fork_prepare(void) {
  ta_lock(&cfa_lock);
}
void ta_prof_cfa_fork_parent(void) {
  ta_unlock(&cfa_lock);
}
#else
void ta_prof_cfa_fork_prepare(void) {}
void ta_prof_cfa_fork_parent(void) {}
#endif
