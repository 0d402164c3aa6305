/* The heap profiler's unwinder's unwind tables, read from the objects'
 * files. libgcc's _Unwind_Find_FDE (replaced here: libgcc_eh is linked in
 * statically, and this definition keeps its own out) binary-searches an
 * object's .eh_frame_hdr and hands back the FDE, reading both through the
 * object's mapping. Each page it reads there brings the kernel's
 * fault-around window (64 KiB) into the process's RSS: the first deep walk
 * maps nearly all of libruby's tables (408 KiB) or 340 KiB of python3.11's,
 * and 132 KiB of libc's (bench/results-2026-12-06-prof-rss.txt). So the
 * first lookup of each PC reads them from the object's file instead (open,
 * pread, close: page cache, mapped nowhere) and keeps a copy of the FDE and
 * its CIE in the profiler's memory; later lookups of the PC take the copy.
 * The copy's CIE drops the personality and LSDA pointers (encoded relative
 * to where they were; _Unwind_Backtrace uses neither), and an FDE with
 * DW_CFA_set_loc, an unusual header, or an object whose file is not the
 * mapped one (its build id differs: replaced on disk; no build id; the vDSO)
 * is read through the mapping as libgcc would. */
#include "internal.h"

#if TA_PROF_FDE_FILES
#include <dlfcn.h>
#include <elf.h>
#include <fcntl.h>
#include <link.h>
#include <unistd.h>

struct dwarf_eh_bases { /* libgcc's (unwind-dw2-fde.h) */
  void *tbase, *dbase, *func;
};

#define FDE_OBJS 1024 /* objects with their own tables; the rest are read in place */
#define FDE_MAX 65536 /* longer FDEs (libruby's longest: 2.5 KiB) are read in place */
typedef struct {
  uintptr_t vaddr, off, filesz;
} fde_seg_t;
typedef struct {
  const struct link_map *lm;
  uintptr_t eh; /* its .eh_frame_hdr (run-time address) */
  uintptr_t bias;
  bool file; /* its file is the mapped one: read from it */
  uint8_t nsegs;
  fde_seg_t segs[8];
} fde_obj_t;
typedef struct {
  uintptr_t key; /* a PC; in the copies' table, an FDE's run-time address */
  const void *fde;
  void *func;
  uint32_t obj;
} fde_ent_t;
typedef struct {
  fde_ent_t *e;
  size_t cap, n;
} fde_tab_t;
static ta_lock_t fde_lock = PTHREAD_MUTEX_INITIALIZER;
static fde_obj_t fde_objs[FDE_OBJS];
static uint32_t fde_nobjs;
static fde_tab_t fde_pcs, fde_copies;
_Atomic uint64_t ta_prof_fde_reads; /* preads made (test_prof) */

static size_t slot(uintptr_t key, size_t cap) {
  return (size_t)(((uint64_t)key * 0x9e3779b97f4a7c15ull) >> 17) & (cap - 1);
}

/* key's slot in t (its entry, or the empty slot for it), after growing t
 * if it is half full; NULL: no room. fde_lock held. */
static fde_ent_t *tab_find(fde_tab_t *t, uintptr_t key) {
  if ((t->n + 1) * 2 > t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 256;
    fde_ent_t *e = ta_prof_meta_map(cap * sizeof *e);
    if (!e) return NULL;
    for (size_t i = 0; i < t->cap; i++)
      if (t->e[i].key) {
        size_t j = slot(t->e[i].key, cap);
        while (e[j].key) j = (j + 1) & (cap - 1);
        e[j] = t->e[i];
      }
    ta_prof_meta_unmap(t->e, t->cap * sizeof *e);
    t->e = e;
    t->cap = cap;
  }
  size_t j = slot(key, t->cap);
  while (t->e[j].key && t->e[j].key != key) j = (j + 1) & (t->cap - 1);
  return &t->e[j];
}

static void tab_put(fde_tab_t *t, fde_ent_t *slot, fde_ent_t e) {
  t->n += !slot->key;
  *slot = e;
}

typedef struct {
  const fde_obj_t *o;
  int fd; /* -1: through the mapping */
} fde_src_t;

/* n bytes at link-time address a of the object. */
static bool src_read(const fde_src_t *s, uintptr_t a, void *buf, size_t n) {
  if (s->fd < 0) {
    memcpy(buf, (const void *)(a + s->o->bias), n);
    return true;
  }
  for (unsigned i = 0; i < s->o->nsegs; i++) {
    const fde_seg_t *g = &s->o->segs[i];
    if (a >= g->vaddr && a - g->vaddr + n <= g->filesz) {
      ta_relaxed_add(&ta_prof_fde_reads, 1);
      return pread(s->fd, buf, n, (off_t)(g->off + (a - g->vaddr))) == (ssize_t)n;
    }
  }
  return false;
}

static int open_obj(const fde_obj_t *o) {
  const char *path = o->lm->l_name && o->lm->l_name[0] ? o->lm->l_name : "/proc/self/exe";
  return open(path, O_RDONLY | O_CLOEXEC);
}

/* Whether the file open on fd is the object mapped: the same .eh_frame_hdr
 * address and the same notes, a GNU build id among them. Its segments. */
static void obj_check(fde_obj_t *o, int fd) {
  ElfW(Ehdr) eh;
  ElfW(Phdr) ph[24];
  if (fd < 0 || pread(fd, &eh, sizeof eh, 0) != sizeof eh || memcmp(eh.e_ident, ELFMAG, SELFMAG) ||
      eh.e_ident[EI_CLASS] != (sizeof(void *) == 8 ? ELFCLASS64 : ELFCLASS32) || eh.e_phentsize != sizeof *ph ||
      eh.e_phnum > 24 || pread(fd, ph, eh.e_phnum * sizeof *ph, (off_t)eh.e_phoff) != (ssize_t)(eh.e_phnum * sizeof *ph))
    return;
  bool hdr = false, id = false;
  for (unsigned i = 0; i < eh.e_phnum; i++) {
    if (ph[i].p_type == PT_LOAD && o->nsegs < 8)
      o->segs[o->nsegs++] = (fde_seg_t){ph[i].p_vaddr, ph[i].p_offset, ph[i].p_filesz};
    else if (ph[i].p_type == PT_GNU_EH_FRAME)
      hdr = ph[i].p_vaddr + o->bias == o->eh;
    else if (ph[i].p_type == PT_NOTE && ph[i].p_filesz <= 1024) {
      uint32_t note[256];
      size_t n = ph[i].p_filesz;
      if (pread(fd, note, n, (off_t)ph[i].p_offset) != (ssize_t)n || memcmp(note, (const void *)(ph[i].p_vaddr + o->bias), n))
        return;
      for (size_t k = 0; k + 3 < n / 4;) { /* namesz, descsz, type, name, desc (4-aligned) */
        if (note[k + 2] == NT_GNU_BUILD_ID && note[k] == 4 && !memcmp(&note[k + 3], "GNU", 4)) id = true;
        k += 3 + (note[k] + 3) / 4 + (note[k + 1] + 3) / 4;
      }
    }
  }
  o->file = hdr && id;
}

static int enc_size(uint8_t e) { /* DW_EH_PE_* value formats; -1: not handled */
  switch (e & 0x0f) {
  case 0x00: return sizeof(void *);
  case 0x02: case 0x0a: return 2;
  case 0x03: case 0x0b: return 4;
  case 0x04: case 0x0c: return 8;
  default: return -1;
  }
}
static int64_t enc_value(const uint8_t *p, int size, bool is_signed) {
  if (size == 2) {
    uint16_t v;
    memcpy(&v, p, 2);
    return is_signed ? (int64_t)(int16_t)v : (int64_t)v;
  }
  if (size == 4) {
    uint32_t v;
    memcpy(&v, p, 4);
    return is_signed ? (int64_t)(int32_t)v : (int64_t)v;
  }
  int64_t v;
  memcpy(&v, p, 8);
  return v;
}

/* A CIE (c: n bytes from its length field) as far as the lookup needs it. */
typedef struct {
  const uint8_t *fixed, *fixed_end; /* alignments and return column */
  const uint8_t *prog;              /* initial instructions */
  uint8_t fenc;                     /* the FDEs' pointer encoding */
  int psz;
  char keep[2]; /* 'S' (signal frame), 'B' (aarch64 B key) */
  size_t nkeep;
} cie_t;
static bool parse_cie(const uint8_t *c, size_t n, cie_t *ci) {
  const uint8_t *p = c + 9, *end = c + n;
  const char *aug = (const char *)p;
  size_t alen = strnlen(aug, (size_t)(end - p));
  if (!alen || aug[0] != 'z' || p + alen >= end) return false;
  p += alen + 1;
  ci->fixed = p;
  uint64_t v, dlen;
  if (!(p = ta_uleb(p, end, &v)) || !(p = ta_uleb(p, end, &v))) return false;
  if (c[8] == 1) p++;
  else if (!(p = ta_uleb(p, end, &v))) return false;
  ci->fixed_end = p;
  if (!(p = ta_uleb(p, end, &dlen)) || dlen > (uint64_t)(end - p)) return false;
  const uint8_t *d = p;
  ci->prog = p + dlen;
  ci->fenc = 0;
  ci->nkeep = 0;
  for (size_t i = 1; i < alen; i++) {
    if ((aug[i] == 'R' || aug[i] == 'P' || aug[i] == 'L') && d >= ci->prog) return false;
    if (aug[i] == 'R') ci->fenc = *d++;
    else if (aug[i] == 'P') {
      uint8_t pe = *d++;
      if (enc_size(pe) < 0 || (pe & 0x70) == 0x50) return false; /* aligned */
      d += enc_size(pe);
    } else if (aug[i] == 'L') d++;
    else if ((aug[i] == 'S' || aug[i] == 'B') && ci->nkeep < 2) ci->keep[ci->nkeep++] = aug[i];
    else return false; /* unknown to libgcc too */
  }
  ci->psz = enc_size(ci->fenc);
  return ci->psz > 0 && d <= ci->prog;
}

/* Whether a CFA program uses DW_CFA_set_loc (its operand would be decoded
 * relative to the copy); -1 when it cannot be read. */
static int has_set_loc(const uint8_t *p, const uint8_t *end) {
  uint64_t v;
  while (p < end) {
    uint8_t op = *p++;
    if (op >> 6 == 2) { /* offset: one operand */
      if (!(p = ta_uleb(p, end, &v))) return -1;
      continue;
    }
    if (op >> 6) continue; /* advance_loc, restore */
    switch (op) {
    case 0x00: case 0x0a: case 0x0b: case 0x2d: break;             /* nop, remember/restore_state, GNU_window_save */
    case 0x01: return 1;                                             /* set_loc */
    case 0x02: p += 1; break;                                        /* advance_loc1 */
    case 0x03: p += 2; break;
    case 0x04: p += 4; break;
    case 0x05: case 0x09: case 0x0c: case 0x11: case 0x12: case 0x14: case 0x15: case 0x2f: /* two operands */
      if (!(p = ta_uleb(p, end, &v)) || !(p = ta_uleb(p, end, &v))) return -1;
      break;
    case 0x06: case 0x07: case 0x08: case 0x0d: case 0x0e: case 0x13: case 0x2e: /* one */
      if (!(p = ta_uleb(p, end, &v))) return -1;
      break;
    case 0x0f: /* def_cfa_expression: a block */
      if (!(p = ta_uleb(p, end, &v)) || v > (uint64_t)(end - p)) return -1;
      p += v;
      break;
    case 0x10: case 0x16: /* expression, val_expression: register, block */
      if (!(p = ta_uleb(p, end, &v)) || !(p = ta_uleb(p, end, &v)) || v > (uint64_t)(end - p)) return -1;
      p += v;
      break;
    default: return -1;
    }
  }
  return p == end ? 0 : -1;
}

/* The FDE of PC a (link-time) of s's object, found through s: its
 * link-time address (0: none), its function's start (run time). */
static uintptr_t search(const fde_src_t *s, uintptr_t a, void **func) {
  uintptr_t bias = s->o->bias, eh = s->o->eh - bias;
  uint8_t h[12];
  if (!src_read(s, eh, h, 12)) return 0;
  /* version 1; the FDE count udata4; the table datarel sdata4: what every
   * linker writes (libgcc would search .eh_frame linearly otherwise: such an
   * object's frames end the walk here) */
  if (h[0] != 1 || h[2] != 0x03 || h[3] != 0x3b) return 0;
  uint32_t count;
  memcpy(&count, h + 8, 4);
  size_t lo = 0, hi = count, mid = 0;
  int32_t e[4] = {0};
  bool hit = false;
  while (lo < hi) {
    mid = (lo + hi) / 2;
    size_t n = mid + 1 < count ? 16 : 8;
    if (!src_read(s, eh + 12 + 8 * mid, e, n)) return 0;
    if (a < eh + (intptr_t)e[0]) hi = mid;
    else if (n == 16 && a >= eh + (intptr_t)e[2]) lo = mid + 1;
    else {
      hit = true;
      break;
    }
  }
  if (!hit) return 0;
  uintptr_t fde = eh + (intptr_t)e[1];
  /* pc_begin and pc_range, with the encoding of the FDE's CIE */
  uint32_t fh[2], clen;
  uint8_t c[512], pr[16];
  if (!src_read(s, fde, fh, 8) || fh[0] < 8 || fh[0] >= 0xfffffff0u) return 0;
  uintptr_t cie = fde + 4 - fh[1];
  if (!src_read(s, cie, &clen, 4) || clen < 8 || clen > sizeof c - 4 || !src_read(s, cie, c, clen + 4)) return 0;
  cie_t ci;
  if (!parse_cie(c, clen + 4, &ci) || !src_read(s, fde + 8, pr, 2 * (size_t)ci.psz)) return 0;
  uintptr_t start = (uintptr_t)enc_value(pr, ci.psz, ci.fenc & 0x08), range = (uintptr_t)enc_value(pr + ci.psz, ci.psz, false);
  if ((ci.fenc & 0x70) == 0x10) start += fde + 8 + bias; /* pcrel */
  else if ((ci.fenc & 0x70) != 0 || (s->fd >= 0 && bias)) return 0; /* absptr: as relocated, in the mapping */
  if (a + bias < start || a + bias - start >= range) return 0;
  *func = (void *)start;
  return fde;
}

/* A copy of the FDE at link-time address fde, read through s (a file), with
 * a CIE of its own; NULL when the FDE is better read in place. */
static const void *copy_fde(const fde_src_t *s, uintptr_t fde) {
  uint32_t fh[2], clen;
  uint8_t c[512];
  if (!src_read(s, fde, fh, 8) || fh[0] < 8 || fh[0] > FDE_MAX - 4) return NULL;
  uintptr_t cie = fde + 4 - fh[1];
  cie_t ci;
  if (!src_read(s, cie, &clen, 4) || clen < 8 || clen > sizeof c - 4 || !src_read(s, cie, c, clen + 4) ||
      !parse_cie(c, clen + 4, &ci) || has_set_loc(ci.prog, c + 4 + clen) != 0)
    return NULL;
  size_t fixed_n = (size_t)(ci.fixed_end - ci.fixed), prog_n = (size_t)(c + 4 + clen - ci.prog);
  size_t cie_n = (8 + 1 + 3 + ci.nkeep + fixed_n + 2 + prog_n + 7) & ~(size_t)7;
  uint8_t *out = ta_prof_meta_alloc(cie_n + fh[0] + 4);
  if (!out) return NULL;
  uint8_t *f = out + cie_n;
  if (!src_read(s, fde, f, fh[0] + 4)) return NULL; /* the copy stays unused, counted in the budget */
  const uint8_t *fend = f + 4 + fh[0], *fa = f + 8 + 2 * ci.psz;
  uint64_t falen;
  if (!(fa = ta_uleb(fa, fend, &falen)) || falen > (uint64_t)(fend - fa)) return NULL;
  const uint8_t *fprog = fa + falen;
  if (has_set_loc(fprog, fend) != 0) return NULL;
  /* CIE: length, id 0, version, "zR[S][B]", alignments and return column,
   * augmentation data (the FDE encoding), program, DW_CFA_nop to 8 bytes */
  uint8_t *o = out;
  uint32_t w = (uint32_t)(cie_n - 4);
  memcpy(o, &w, 4);
  memset(o + 4, 0, 4);
  o += 8;
  *o++ = c[8];
  *o++ = 'z';
  *o++ = 'R';
  for (size_t i = 0; i < ci.nkeep; i++) *o++ = (uint8_t)ci.keep[i];
  *o++ = 0;
  memcpy(o, ci.fixed, fixed_n);
  o += fixed_n;
  *o++ = 1;
  *o++ = ci.fenc;
  memcpy(o, ci.prog, prog_n);
  o += prog_n;
  memset(o, 0, (size_t)(out + cie_n - o));
  /* FDE: length, CIE pointer, pc_begin (unread: the unwinder takes
   * bases->func) and pc_range as they were, no augmentation data, program */
  size_t fprog_n = (size_t)(fend - fprog);
  memmove(f + 8 + 2 * ci.psz + 1, fprog, fprog_n);
  f[8 + 2 * ci.psz] = 0;
  w = (uint32_t)(4 + 2 * ci.psz + 1 + fprog_n);
  memcpy(f, &w, 4);
  w = (uint32_t)(f + 4 - out);
  memcpy(f + 4, &w, 4);
  return f;
}

/* Called by libgcc's unwinder for each frame (pc: the return address - 1,
 * or the PC itself in a signal frame). */
TA_HIDDEN const void *_Unwind_Find_FDE(void *pc, struct dwarf_eh_bases *bases);
const void *_Unwind_Find_FDE(void *pc, struct dwarf_eh_bases *bases) {
  struct dl_find_object dlfo;
  if (_dl_find_object(pc, &dlfo) != 0 || !dlfo.dlfo_eh_frame) return NULL;
  bases->tbase = NULL;
#if DLFO_STRUCT_HAS_EH_DBASE
  bases->dbase = dlfo.dlfo_eh_dbase;
#else
  bases->dbase = NULL;
#endif
  bases->func = NULL;
  const void *fde = NULL;
  void *func = NULL;
  int fd = -1;
  ta_lock(&fde_lock);
  uint32_t k = 0; /* the object (a closed one's entries stay, unused) */
  while (k < fde_nobjs && !(fde_objs[k].lm == dlfo.dlfo_link_map && fde_objs[k].eh == (uintptr_t)dlfo.dlfo_eh_frame)) k++;
  fde_ent_t *e = tab_find(&fde_pcs, (uintptr_t)pc);
  if (e && e->key && e->obj == k && k < fde_nobjs) {
    fde = e->fde;
    func = e->func;
    goto out;
  }
  fde_obj_t spare = {dlfo.dlfo_link_map, (uintptr_t)dlfo.dlfo_eh_frame, dlfo.dlfo_link_map->l_addr, false, 0, {{0}}};
  if (k == FDE_OBJS) /* as many objects as the table holds: this one through its mapping, every time */
    e = NULL;
  else if (k == fde_nobjs) {
    fde_objs[k] = spare;
    fd = open_obj(&fde_objs[k]);
    obj_check(&fde_objs[k], fd);
    fde_nobjs++;
  } else if (fde_objs[k].file)
    fd = open_obj(&fde_objs[k]);
  const fde_obj_t *o = k < FDE_OBJS ? &fde_objs[k] : &spare;
  fde_src_t s = {o, o->file ? fd : -1};
  uintptr_t at = search(&s, (uintptr_t)pc - o->bias, &func);
  if (!at && s.fd >= 0) { /* what the file does not give, the mapping may */
    s.fd = -1;
    at = search(&s, (uintptr_t)pc - o->bias, &func);
  }
  if (at && s.fd >= 0) {
    fde_ent_t *c = tab_find(&fde_copies, at + o->bias); /* one copy per FDE, whichever PC found it */
    if (c && c->key && c->obj == k) fde = c->fde;
    else if ((fde = copy_fde(&s, at)) && c) tab_put(&fde_copies, c, (fde_ent_t){at + o->bias, fde, NULL, k});
  }
  if (at && !fde) fde = (const void *)(at + o->bias); /* in place, as libgcc reads it */
  if (e) tab_put(&fde_pcs, e, (fde_ent_t){(uintptr_t)pc, fde, func, k});
out:
  ta_unlock(&fde_lock);
  if (fd >= 0) close(fd);
  bases->func = func;
  return fde;
}

void ta_prof_fde_fork_prepare(void) {
  ta_lock(&fde_lock);
}
void ta_prof_fde_fork_parent(void) {
  ta_unlock(&fde_lock);
}
#else
void ta_prof_fde_fork_prepare(void) {}
void ta_prof_fde_fork_parent(void) {}
#endif
