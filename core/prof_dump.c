/* Heap profile dumps: a snapshot of the live (or peak) set summed per trace
 * under the live set's lock, then, with no allocator or profiler lock held,
 * symbolized (prof_sym.c; dl_iterate_phdr for the mappings), encoded by pprof.c
 * and written. Files are <prefix>.<pid>.<seq>.<reason>.pb.gz, at most
 * prof_keep per reason kept (the oldest of this process's removed); a fork
 * child numbers its own from 0. Growth dumps are made by the profiler's own
 * thread, woken by the sample that passed the mark: no allocating thread
 * waits for a dump. */
#include "internal.h"

#include <errno.h>

#include <link.h>

_Atomic uint64_t ta_prof_last_rate;

/* ---- file names and keep ---- */
static const char *const reasons[] = {"dump", "peak", "growth", "exit"};
#define TA_REASONS 4
#define TA_KEEP_MAX 4096
static ta_lock_t files_lock = PTHREAD_MUTEX_INITIALIZER;
static uint64_t seq; /* under files_lock */
static uint64_t kept[TA_REASONS][TA_KEEP_MAX]; /* rings of seqs written */
static size_t kept_first[TA_REASONS], kept_n[TA_REASONS];

static size_t put(char *buf, size_t len, size_t size, const char *s) {
  for (; *s; s++, len++)
    if (len + 1 < size) buf[len] = *s;
  if (size) buf[len < size ? len : size - 1] = 0;
  return len;
}
static size_t put_u64(char *buf, size_t len, size_t size, uint64_t v) {
  char d[24];
  d[ta_fmt_u64(d, v)] = 0;
  return put(buf, len, size, d);
}

static size_t file_name(char *buf, size_t size, int pid, uint64_t n, const char *reason) {
  const char *prefix = ta_prim_getenv("TRIMALLOC_PROF_PREFIX");
  size_t len = put(buf, 0, size, prefix && *prefix ? prefix : "/tmp/trimalloc");
  len = put(buf, len, size, ".");
  len = put_u64(buf, len, size, (uint64_t)pid);
  len = put(buf, len, size, ".");
  len = put_u64(buf, len, size, n);
  len = put(buf, len, size, ".");
  len = put(buf, len, size, reason);
  return put(buf, len, size, ".pb.gz");
}

static int reason_index(const char *reason) {
  for (int i = 0; i < TA_REASONS; i++)
    if (!strcmp(reason, reasons[i])) return i;
  return 0;
}

/* A file of this reason was written: the oldest beyond prof_keep go. */
static void keep(int ri, uint64_t n) {
  long long k = ta_opt(TA_OPT_PROF_KEEP);
  if (k <= 0) return;
  if (k > TA_KEEP_MAX) k = TA_KEEP_MAX;
  ta_lock(&files_lock);
  uint64_t drop[TA_KEEP_MAX];
  size_t nd = 0;
  if (kept_n[ri] == TA_KEEP_MAX) { /* full ring: the oldest is forgotten */
    kept_first[ri] = (kept_first[ri] + 1) % TA_KEEP_MAX;
    kept_n[ri]--;
  }
  kept[ri][(kept_first[ri] + kept_n[ri]++) % TA_KEEP_MAX] = n;
  while (kept_n[ri] > (size_t)k) {
    drop[nd++] = kept[ri][kept_first[ri]];
    kept_first[ri] = (kept_first[ri] + 1) % TA_KEEP_MAX;
    kept_n[ri]--;
  }
  ta_unlock(&files_lock);
  char path[4096];
  for (size_t i = 0; i < nd; i++) {
    file_name(path, sizeof path, ta_prim_pid(), drop[i], reasons[ri]);
    ta_prim_remove(path);
  }
}

/* ---- symbolizing ---- */
typedef struct {
  uintptr_t start, limit, offset;
  uint64_t id; /* pprof mapping id, 0 until used */
  char path[512]; /* copied: an object unloaded during the dump leaves no dangling name */
} seg_t;
#define TA_SEGS_MAX 1024

typedef struct {
  seg_t *segs;
  size_t n, cap;
  char exe[4096];
} segs_t;

static int add_object(struct dl_phdr_info *info, size_t sz, void *arg) {
  (void)sz;
  segs_t *s = arg;
  const char *path = info->dlpi_name && *info->dlpi_name ? info->dlpi_name : s->exe;
  for (int i = 0; i < info->dlpi_phnum && s->n < s->cap; i++) {
    const ElfW(Phdr) *ph = &info->dlpi_phdr[i];
    if (ph->p_type != PT_LOAD || !(ph->p_flags & PF_X)) continue;
    seg_t *g = &s->segs[s->n++];
    g->start = info->dlpi_addr + ph->p_vaddr;
    g->limit = g->start + ph->p_memsz;
    g->offset = ph->p_offset;
    g->id = 0;
    put(g->path, 0, sizeof g->path, path);
  }
  return 0;
}

static seg_t *seg_of(segs_t *s, uintptr_t pc) {
  for (size_t i = 0; i < s->n; i++)
    if (pc >= s->segs[i].start && pc < s->segs[i].limit) return &s->segs[i];
  return NULL;
}

/* (pc or interpreter frame key, line) -> location id, for the frames of one
 * dump: a frame seen again costs one probe here instead of naming it,
 * interning its strings and looking up its function and location. */
typedef struct {
  uint64_t pc, loc;
  int64_t line;
} pcloc_t;
typedef struct {
  pcloc_t *slot;
  size_t cap, count; /* cap a power of two, at most half full */
} pccache_t;

static size_t pages(size_t n);

static size_t pc_hash(const pccache_t *c, uint64_t pc, int64_t line) {
  uint64_t h = (pc + (uint64_t)line * 0xff51afd7ed558ccdull) * 0x9e3779b97f4a7c15ull;
  return (size_t)(h >> 32) & (c->cap - 1); /* the high bits: they depend on every bit of pc and line */
}

/* The slot of (pc, line): its entry, or the empty slot where it goes. */
static pcloc_t *pc_slot(pccache_t *c, uint64_t pc, int64_t line) {
  size_t j = pc_hash(c, pc, line);
  while (c->slot[j].loc && (c->slot[j].pc != pc || c->slot[j].line != line)) j = (j + 1) & (c->cap - 1);
  return &c->slot[j];
}

/* Sized by the frames seen, not by the frames of all traces (which can be
 * millions: a table that large costs a page fault per entry). false: no
 * memory (the old table stays). */
static bool pc_cache_grow(pccache_t *c) {
  pccache_t n = {NULL, c->cap ? c->cap * 2 : 4096, c->count};
  void *m;
  if (ta_prim_map(pages(n.cap * sizeof *n.slot), ta_prim_page_size(), &m) != 0) return false;
  n.slot = m;
  for (size_t i = 0; i < c->cap; i++)
    if (c->slot[i].loc) *pc_slot(&n, c->slot[i].pc, c->slot[i].line) = c->slot[i];
  if (c->slot) ta_prim_unmap(c->slot, pages(c->cap * sizeof *c->slot));
  *c = n;
  return true;
}

static uint64_t native_location(ta_pprof_t *pp, segs_t *segs, uint64_t pc) {
  seg_t *sg = seg_of(segs, (uintptr_t)pc);
  const char *file = sg ? sg->path : "";
  char name[4200];
  ta_prof_sym_t sym;
  /* past the nearest dynamic symbol's size, pc is in a function without
   * one (a static one): unknown, not that symbol's */
  if (!ta_prof_sym((uintptr_t)pc, &sym, name, sizeof name) || !name[0]) {
    size_t len = put(name, 0, sizeof name, "?? ");
    put(name, len, sizeof name, *file ? file : "[unknown object]");
  }
  uint64_t mapping = 0;
  if (sg) {
    if (!sg->id) sg->id = ta_pprof_mapping(pp, sg->start, sg->limit, sg->offset, sg->path);
    mapping = sg->id;
  }
  return ta_pprof_location(pp, pc, mapping, ta_pprof_function(pp, name, file), 0);
}

static uint64_t interp_location(ta_pprof_t *pp, uint64_t key, int32_t line) {
  const char *name, *file;
  char buf[64];
  if (!ta_prof_frame_name(key, &name, &file)) {
    static const char hex[] = "0123456789abcdef";
    size_t len = put(buf, 0, sizeof buf, "[interpreter frame 0x");
    uint64_t k = key & ~TA_PROF_INTERP;
    char d[17];
    int nd = 0;
    do d[nd++] = hex[k & 15], k >>= 4;
    while (k);
    for (; nd; len++) buf[len] = d[--nd];
    buf[len] = 0;
    put(buf, len, sizeof buf, "]");
    name = buf;
    file = "";
  }
  return ta_pprof_location(pp, 0, 0, ta_pprof_interp_function(pp, name, file ? file : ""), line);
}

static size_t pages(size_t n) {
  size_t ps = ta_prim_page_size();
  return (n + ps - 1) & ~(ps - 1);
}

static int64_t round_i64(double v) {
  return (int64_t)(v < 0 ? v - 0.5 : v + 0.5);
}

/* The dump proper: no lock held but the live set's, for the snapshot. */
static int dump(const char *path, int kind, const char *reason, char *written, size_t wsize) {
  int err = 0;
  ta_prof_row_t *rows = NULL;
  size_t rows_bytes = 0, ntr;
  for (;;) { /* the traces may grow between the count and the snapshot */
    size_t want = ta_prof_traces() + 64;
    rows_bytes = pages(want * sizeof *rows);
    void *m;
    if (ta_prim_map(rows_bytes, ta_prim_page_size(), &m) != 0) return ENOMEM;
    rows = m;
    ntr = ta_prof_live_snapshot(kind, rows, rows_bytes / sizeof *rows);
    if (ntr <= rows_bytes / sizeof *rows) break;
    ta_prim_unmap(rows, rows_bytes);
  }
  trimalloc_stats_t st;
  trimalloc_stats(&st, sizeof st); /* the exact counter, as near the snapshot as can be */

  segs_t *segs = NULL;
  pccache_t cache = {0};
  size_t segs_bytes = 0;
  ta_pprof_t *pp = ta_pprof_begin(ta_relaxed_load(&ta_prof_last_rate), ta_prim_clock_real_ns());
  if (!pp) {
    err = ENOMEM;
    goto out;
  }
  segs_bytes = pages(sizeof(segs_t) + TA_SEGS_MAX * sizeof(seg_t));
  void *m;
  if (ta_prim_map(segs_bytes, ta_prim_page_size(), &m) != 0) {
    err = ENOMEM;
    goto out;
  }
  segs = m;
  segs->segs = (seg_t *)(segs + 1);
  segs->cap = TA_SEGS_MAX;
  ta_prim_exe_path(segs->exe, sizeof segs->exe);
  dl_iterate_phdr(add_object, segs);
  if (!pc_cache_grow(&cache)) {
    err = ENOMEM;
    goto out;
  }
  uint64_t locs[2 * TA_PROF_MAX_FRAMES];
  for (size_t t = 0; t < ntr; t++) {
    ta_prof_row_t *r = &rows[t];
    int64_t v[4] = {round_i64(r->alloc_objects), round_i64(r->alloc_bytes), round_i64(r->inuse_objects),
                    round_i64(r->inuse_bytes)};
    if (!v[0] && !v[1] && !v[2] && !v[3]) continue;
    ta_prof_trace_t *tr = ta_prof_trace((uint32_t)t);
    for (uint32_t i = 0; i < tr->n; i++) {
      uint64_t pc = tr->pcs[i];
      int64_t line = pc & TA_PROF_INTERP ? tr->lines[i] : 0;
      pcloc_t *c = pc_slot(&cache, pc, line);
      if (c->loc) {
        locs[i] = c->loc;
        continue;
      }
      locs[i] = pc & TA_PROF_INTERP ? interp_location(pp, pc, (int32_t)line) : native_location(pp, segs, pc);
      if (!locs[i] || ((cache.count + 1) * 2 > cache.cap && !pc_cache_grow(&cache))) continue; /* no memory: not kept */
      *pc_slot(&cache, pc, line) = (pcloc_t){pc, locs[i], line};
      cache.count++;
    }
    ta_pprof_sample(pp, locs, tr->n, v, tr->tag);
  }
  char text[64];
  put_u64(text, put(text, 0, sizeof text, "exact_allocated="), sizeof text, st.allocated);
  ta_pprof_comment(pp, text);
  put(text, put(text, 0, sizeof text, "reason="), sizeof text, reason);
  ta_pprof_comment(pp, text);

  char name[4096];
  uint64_t n = 0;
  if (!path) {
    ta_lock(&files_lock);
    n = seq++;
    ta_unlock(&files_lock);
    file_name(name, sizeof name, ta_prim_pid(), n, reason);
    path = name;
  }
  int fd;
  err = ta_prim_create(path, &fd);
  if (err) goto out;
  err = ta_pprof_finish(pp, fd);
  pp = NULL;
  int cerr = ta_prim_close(fd);
  if (!err) err = cerr;
  if (err) {
    ta_prim_remove(path);
    goto out;
  }
  if (written && wsize) put(written, 0, wsize, path);
  if (path == name) keep(reason_index(reason), n);
out:
  if (pp) ta_pprof_abort(pp);
  if (cache.slot) ta_prim_unmap(cache.slot, pages(cache.cap * sizeof *cache.slot));
  if (segs) ta_prim_unmap(segs, segs_bytes);
  ta_prim_unmap(rows, rows_bytes);
  return err;
}

int ta_prof_dump(const char *path, int kind, const char *reason, char *written, size_t size) {
  return dump(path, kind, reason, written, size);
}

/* ---- the profiler thread: growth dumps ---- */
static ta_lock_t thread_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t thread_cv = PTHREAD_COND_INITIALIZER;
static int started, pending; /* under thread_lock; pending: growth dumps asked for, at most 16 */
static pthread_t thread_id;
_Atomic uint64_t ta_prof_growth_dumps;

static void *thread_main(void *arg) {
  (void)arg;
  ta_prim_thread_defaults(); /* not the starting thread's policy or CPUs */
  for (;;) {
    ta_lock(&thread_lock);
    while (!pending) pthread_cond_wait(&thread_cv, &thread_lock);
    pending--;
    ta_unlock(&thread_lock);
    /* its own allocations (the unwinder's, the loader's) are never sampled:
     * the dump calls nothing that allocates but what sets the guard */
    if (ta_prof_dump(NULL, TRIMALLOC_PROF_LIVE, "growth", NULL, 0) == 0) ta_relaxed_add(&ta_prof_growth_dumps, 1);
  }
  return NULL;
}

void ta_prof_dump_kick(void) {
  ta_lock(&thread_lock);
  if (pending < 16) pending++; /* one dump per mark passed; a burst is not a flood */
  if (!started && ta_prim_thread_start(thread_main, NULL, "trimalloc-prof", &thread_id) == 0) started = 1;
  pthread_cond_signal(&thread_cv);
  ta_unlock(&thread_lock);
}

void ta_prof_dump_fork_prepare(void) {
  ta_lock(&thread_lock);
  ta_lock(&files_lock);
}
void ta_prof_dump_fork_parent(void) {
  ta_unlock(&files_lock);
  ta_unlock(&thread_lock);
}
/* The child: no profiler thread, its own numbering and files. */
void ta_prof_dump_fork_child(void) {
  seq = 0;
  memset(kept_n, 0, sizeof kept_n);
  memset(kept_first, 0, sizeof kept_first);
  started = pending = 0;
  pthread_cond_init(&thread_cv, NULL);
  ta_prof_dump_fork_parent();
}

/* prof_at_exit: the live set, reason "exit", if sampling was ever on. */
__attribute__((destructor)) static void at_exit(void) {
  if (ta_opt(TA_OPT_PROF_AT_EXIT) && ta_relaxed_load(&ta_prof_last_rate))
    ta_prof_dump(NULL, TRIMALLOC_PROF_LIVE, "exit", NULL, 0);
}
