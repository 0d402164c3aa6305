/* The heap profiler's stacks: native frames (libgcc's unwinder, or a
 * frame-pointer walk checked against the thread's stack bounds), the
 * bindings' interpreter frames merged in, call paths interned once (with
 * the thread's tag) as traces, and the names the bindings give interpreter
 * frames. Everything here runs on the allocating thread inside a sample with
 * the profiler's guard set, and allocates only from prof_meta.c.
 *
 * Why libgcc by default on glibc: Debian 12's libc, python3.11 and libruby
 * are built without frame pointers, so a frame-pointer walk from malloc loses
 * or invents callers there (test_prof checks a caller through libc's qsort);
 * GCC 12's _Unwind_Backtrace finds each object's unwind tables with glibc
 * 2.35's _dl_find_object, which takes no lock and does not allocate after
 * its first call (ta_prof_warm makes that call when sampling starts); the
 * FDE lookup it calls for each frame is prof_fde.c's, which reads the tables
 * from the objects' files rather than through their mappings. On
 * musl the unwinder would find them with dl_iterate_phdr, which takes the
 * loader's lock: frame pointers there. prof_unwind selects either. */
#include "internal.h"

#include <errno.h>
#include <fcntl.h>
#include <unistd.h>
#include <unwind.h>

#ifdef __GLIBC__
extern void *__libc_stack_end;
#endif

/* The section of every function between the program's call and the
 * unwinder (TA_PROF_PATH): its frames are skipped. */
extern const char __start_ta_prof_text[] __attribute__((visibility("hidden")));
extern const char __stop_ta_prof_text[] __attribute__((visibility("hidden")));
static inline bool own_frame(uintptr_t pc) {
  return pc >= (uintptr_t)__start_ta_prof_text && pc < (uintptr_t)__stop_ta_prof_text;
}

/* ---- the interpreter-frame hook ---- */
static _Atomic(trimalloc_prof_frames_fn) frames_hook;
static _Atomic uintptr_t eval_lo, eval_hi; /* the eval function's code: [lo, hi) */

TRIMALLOC_API int trimalloc_prof_set_frames_hook(trimalloc_prof_frames_fn fn, const void *eval_fn) {
  if (!fn) {
    atomic_store(&frames_hook, NULL);
    return 0;
  }
  if (!eval_fn) return EINVAL;
  /* Its extent from its dynamic symbol (prof_sym.c, either libc); without
   * one, one byte: no return address is there, so the walk never stops at
   * it and the interpreter's frames follow all the native ones. */
  uintptr_t lo = (uintptr_t)eval_fn, hi = lo + 1;
  ta_prof_sym_t sym;
  if (ta_prof_sym((uintptr_t)eval_fn, &sym, NULL, 0) && sym.size) {
    lo = sym.start;
    hi = sym.start + sym.size;
  }
  atomic_store(&eval_lo, lo);
  atomic_store(&eval_hi, hi);
  atomic_store(&frames_hook, fn);
  return 0;
}

/* ---- native frames ---- */
#if TA_PROF_HAVE_LIBGCC
int ta_prof_unwind_step(struct _Unwind_Context *ctx, void *arg) {
  ta_prof_walk_t *w = arg;
  int before = 0;
  uintptr_t pc = (uintptr_t)_Unwind_GetIPInfo(ctx, &before);
  if (!pc) return _URC_END_OF_STACK;
  if (w->skipping && own_frame(pc)) return _URC_NO_REASON;
  w->skipping = false;
  pc = before ? pc : pc - 1; /* a return address: the call is the byte before */
  if (pc >= w->eval_lo && pc < w->eval_hi) { /* the interpreter's frames replace the rest */
    w->at_eval = true;
    return _URC_END_OF_STACK;
  }
  w->pcs[w->n++] = pc;
  return w->n < w->max ? _URC_NO_REASON : _URC_END_OF_STACK;
}
#endif

/* The calling thread's stack: [lo, hi), read once per thread. The main
 * thread's frames are all below __libc_stack_end (its size is not known:
 * 8 MiB below). Another thread's, on glibc: the mapping that holds its
 * stack pointer, from /proc/self/maps (open, read, close: no allocation,
 * no lock of the program's). Not glibc's pthread_getattr_np: it holds the
 * thread's lock while it calls realloc, so a sample in that realloc would
 * wait on the lock its own thread holds (a Ruby thread's start did:
 * test/ruby/profile_test.rb hung). musl's reads the thread's fields. */
static __thread uintptr_t stack_lo, stack_hi __attribute__((tls_model("initial-exec")));

#ifdef __GLIBC__
static int hexval(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}
/* The line at p, "start-end perms ...": false if it is not one. */
static bool maps_line(const char *p, const char *end, uintptr_t *lo, uintptr_t *hi) {
  uintptr_t v[2] = {0, 0};
  for (int k = 0; k < 2; k++) {
    int d, n = 0;
    for (; p < end && (d = hexval(*p)) >= 0; p++, n++) v[k] = v[k] << 4 | (uintptr_t)d;
    if (!n || p == end || *p++ != (k ? ' ' : '-')) return false;
  }
  *lo = v[0];
  *hi = v[1];
  return true;
}
static bool maps_bounds(uintptr_t sp) {
  int fd = open("/proc/self/maps", O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char buf[4096];
  size_t have = 0, pos = 0;
  bool found = false, skip = false; /* skip: the rest of a line longer than buf */
  for (;;) {
    char *nl = memchr(buf + pos, '\n', have - pos);
    if (!nl) {
      if (skip || pos == 0) { /* a line longer than buf: drop what is here, find its end */
        skip = skip || have == sizeof buf;
        if (skip) have = pos = 0;
      }
      memmove(buf, buf + pos, have - pos);
      have -= pos;
      pos = 0;
      ssize_t n = read(fd, buf + have, sizeof buf - have);
      if (n <= 0) break;
      have += (size_t)n;
      continue;
    }
    uintptr_t lo, hi;
    if (!skip && maps_line(buf + pos, nl, &lo, &hi) && lo <= sp && sp < hi) {
      stack_lo = lo;
      stack_hi = hi;
      found = true;
      break;
    }
    skip = false;
    pos = (size_t)(nl + 1 - buf);
  }
  close(fd);
  return found;
}
#endif

static void stack_bounds(void) {
  if (stack_hi) return;
#ifdef __GLIBC__
  if (ta_prim_tid() == ta_prim_pid()) {
    stack_hi = (uintptr_t)__libc_stack_end;
    stack_lo = stack_hi > ((uintptr_t)8 << 20) ? stack_hi - ((uintptr_t)8 << 20) : 0;
    return;
  }
  if (!maps_bounds((uintptr_t)__builtin_frame_address(0))) stack_hi = 1, stack_lo = 0; /* unknown: no walk */
#else
  pthread_attr_t at;
  void *base;
  size_t size;
  if (pthread_getattr_np(pthread_self(), &at) == 0) {
    if (pthread_attr_getstack(&at, &base, &size) == 0) {
      stack_lo = (uintptr_t)base;
      stack_hi = (uintptr_t)base + size;
    }
    pthread_attr_destroy(&at);
  }
  if (!stack_hi) stack_hi = 1, stack_lo = 0; /* unknown: no walk */
#endif
}

void ta_prof_stack_bounds(uintptr_t *lo, uintptr_t *hi) {
  stack_bounds();
  *lo = stack_lo;
  *hi = stack_hi;
}

/* Each frame record is {caller's frame pointer, return address} on both
 * x86-64 and aarch64. A record must lie above the last one, inside the
 * stack, aligned: anything else ends the walk (a caller built without frame
 * pointers ends it early or, if its register held a stack address that
 * passes these tests, gives a wrong caller: why libgcc is the default). */
__attribute__((optimize("no-omit-frame-pointer"))) TA_PROF_PATH void ta_prof_unwind_fp(ta_prof_walk_t *w) {
  stack_bounds();
  uintptr_t *fp = __builtin_frame_address(0);
  while (w->n < w->max) {
    uintptr_t f = (uintptr_t)fp;
    if (f < stack_lo || f + 2 * sizeof(uintptr_t) > stack_hi || (f & (sizeof(uintptr_t) - 1))) break;
    uintptr_t next = fp[0], ret = fp[1];
    if (!ret) break;
    if (!(w->skipping && own_frame(ret))) {
      w->skipping = false;
      if (ret - 1 >= w->eval_lo && ret - 1 < w->eval_hi) {
        w->at_eval = true;
        break;
      }
      w->pcs[w->n++] = ret - 1;
    }
    if (next <= f) break;
    fp = (uintptr_t *)next;
  }
}

/* A walk: the eval function's extent when a frames hook is set, so that the
 * unwinder stops there (the interpreter's frames replace the rest: deep
 * interpreter stacks cost nothing to unwind). */
void ta_prof_walk_init(ta_prof_walk_t *w, uint64_t *pcs, size_t max) {
  *w = (ta_prof_walk_t){pcs, 0, max, true, false, 0, 0};
  if (atomic_load_explicit(&frames_hook, memory_order_acquire)) {
    w->eval_lo = atomic_load_explicit(&eval_lo, memory_order_relaxed);
    w->eval_hi = atomic_load_explicit(&eval_hi, memory_order_relaxed);
  }
}

bool ta_prof_use_libgcc(void) {
  long long u = ta_opt(TA_OPT_PROF_UNWIND);
  return TA_PROF_HAVE_LIBGCC && (u == 0 || u == TA_PROF_UNWIND_LIBGCC || u == TA_PROF_UNWIND_LIBGCC_ONLY);
}

/* The interpreter's frames in place of the native frames from the first one
 * inside its eval function on (all native frames kept when none is). */
size_t ta_prof_merge(ta_prof_walk_t *w, int32_t *lines, size_t max) {
  uint64_t *pcs = w->pcs;
  size_t n = w->n, keep = n; /* the walk stopped below the eval function, if it met it */
  memset(lines, 0, n * sizeof *lines);
  trimalloc_prof_frames_fn hook = atomic_load_explicit(&frames_hook, memory_order_acquire);
  if (!hook || max <= n) return n;
  uint64_t keys[TA_PROF_MAX_FRAMES];
  int32_t ln[TA_PROF_MAX_FRAMES];
  size_t room = max - keep < TA_PROF_MAX_FRAMES ? max - keep : TA_PROF_MAX_FRAMES;
  int m = hook(keys, ln, (int)room);
  if (m <= 0) return n;
  if ((size_t)m > room) m = (int)room;
  size_t out = keep;
  for (int i = 0; i < m; i++) {
    if (!keys[i]) continue;
    pcs[out] = (keys[i] & ~TA_PROF_INTERP) | TA_PROF_INTERP;
    lines[out++] = ln[i];
  }
  return out;
}

/* The unwinder's first call loads and sets up what it needs (it may
 * allocate): made here, outside malloc, when sampling starts. */
void ta_prof_warm(void) {
  uint64_t pcs[8];
  ta_prof_walk_t w;
  ta_prof_walk_init(&w, pcs, 8);
#if TA_PROF_HAVE_LIBGCC
  if (ta_prof_use_libgcc()) {
    _Unwind_Backtrace((_Unwind_Trace_Fn)ta_prof_unwind_step, &w);
    ta_prof_walk_init(&w, pcs, 8);
    ta_prof_unwind_cfa(&w); /* the thread's stack bounds (which may allocate) */
    return;
  }
#endif
  ta_prof_unwind_fp(&w);
}

/* ---- interned strings (tags, frame names) and traces ----
 * Open addressing, linear probing; tables double at half full, in mappings
 * of their own, from one 4 KiB page: an entry's slot is anywhere in its
 * table, so every page of a table is resident after a few entries (the
 * first sizes were 16 and 24 KiB for the 50-70 traces and 35-41 names of
 * bench/'s Ruby and Python runs at 512 KiB). Traces are numbered in order;
 * ids index pages of pointers. */
static ta_lock_t stack_lock = PTHREAD_MUTEX_INITIALIZER; /* traces and tags */
#define TA_TRACE_PAGE 4096
#define TA_TRACE_PAGES 4096 /* 16 M traces */
static ta_prof_trace_t **trace_pages[TA_TRACE_PAGES];
static _Atomic uint32_t ntraces;
static uint32_t *trace_hash; /* trace id + 1, 0 empty */
static size_t trace_cap;     /* entries, a power of two */

static uint64_t mix(uint64_t h, uint64_t v) {
  h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
  return h * 0xff51afd7ed558ccdull;
}
static uint64_t hash_str(const char *s) {
  uint64_t h = 1469598103934665603ull;
  for (; *s; s++) h = (h ^ (uint8_t)*s) * 1099511628211ull;
  return h;
}

static char *copy_str(const char *s, size_t max) {
  size_t n = strnlen(s, max);
  char *c = ta_prof_meta_alloc(n + 1);
  for (size_t i = 0; c && i < n; i++) c[i] = s[i]; /* not memcpy: qemu-aarch64 with 64 KiB pages faulted in
                                                    * libc's memcpy reading the thread's tag (TLS) */
  return c;
}

/* Tags: a small table of strings (under stack_lock). */
static const char **tag_tab;
static size_t tag_cap, tag_n;
static const char *tag_intern(const char *tag) {
  if (!tag || !*tag) return NULL;
  if (tag_n * 2 >= tag_cap) {
    size_t cap = tag_cap ? tag_cap * 2 : 512, bytes = cap * sizeof(char *);
    const char **t = ta_prof_meta_map(bytes);
    if (!t) return NULL;
    for (size_t i = 0; i < tag_cap; i++)
      if (tag_tab[i])
        for (size_t j = hash_str(tag_tab[i]) & (cap - 1);; j = (j + 1) & (cap - 1))
          if (!t[j]) {
            t[j] = tag_tab[i];
            break;
          }
    ta_prof_meta_unmap(tag_tab, tag_cap * sizeof(char *));
    tag_tab = t;
    tag_cap = cap;
  }
  size_t j = hash_str(tag) & (tag_cap - 1);
  for (; tag_tab[j]; j = (j + 1) & (tag_cap - 1))
    if (!strcmp(tag_tab[j], tag)) return tag_tab[j];
  const char *c = copy_str(tag, 63);
  if (!c) return NULL;
  tag_tab[j] = c;
  tag_n++;
  return c;
}

ta_prof_trace_t *ta_prof_trace(uint32_t id) {
  return trace_pages[id / TA_TRACE_PAGE][id % TA_TRACE_PAGE];
}

uint32_t ta_prof_traces(void) {
  return atomic_load_explicit(&ntraces, memory_order_acquire);
}

static bool same(const ta_prof_trace_t *t, uint64_t h, const uint64_t *pcs, const int32_t *lines, size_t n,
                 const char *tag) {
  return t->hash == h && t->n == n && t->tag == tag && !memcmp(t->pcs, pcs, n * sizeof *pcs) &&
         !memcmp(t->lines, lines, n * sizeof *lines);
}

static bool trace_grow(void) { /* stack_lock held */
  size_t cap = trace_cap ? trace_cap * 2 : 1024;
  uint32_t *t = ta_prof_meta_map(cap * sizeof(uint32_t));
  if (!t) return false;
  for (size_t i = 0; i < trace_cap; i++)
    if (trace_hash[i]) {
      size_t j = ta_prof_trace(trace_hash[i] - 1)->hash & (cap - 1);
      while (t[j]) j = (j + 1) & (cap - 1);
      t[j] = trace_hash[i];
    }
  ta_prof_meta_unmap(trace_hash, trace_cap * sizeof(uint32_t));
  trace_hash = t;
  trace_cap = cap;
  return true;
}

uint32_t ta_prof_intern(const uint64_t *pcs, const int32_t *lines, size_t n, const char *tag_in) {
  ta_lock(&stack_lock);
  const char *tag = tag_intern(tag_in);
  uint64_t h = mix((uint64_t)(uintptr_t)tag, n);
  for (size_t i = 0; i < n; i++) h = mix(h, pcs[i] ^ ((uint64_t)(uint32_t)lines[i] << 20));
  uint32_t id = UINT32_MAX, count = ta_relaxed_load(&ntraces);
  if ((size_t)(count + 1) * 2 > trace_cap && !trace_grow()) goto out;
  size_t j = h & (trace_cap - 1);
  for (; trace_hash[j]; j = (j + 1) & (trace_cap - 1))
    if (same(ta_prof_trace(trace_hash[j] - 1), h, pcs, lines, n, tag)) {
      id = trace_hash[j] - 1;
      goto out;
    }
  if (count >= (size_t)TA_TRACE_PAGE * TA_TRACE_PAGES) goto out;
  if (!trace_pages[count / TA_TRACE_PAGE]) {
    trace_pages[count / TA_TRACE_PAGE] = ta_prof_meta_alloc(TA_TRACE_PAGE * sizeof(ta_prof_trace_t *));
    if (!trace_pages[count / TA_TRACE_PAGE]) goto out;
  }
  ta_prof_trace_t *t = ta_prof_meta_alloc(sizeof *t + n * (sizeof *pcs + sizeof *lines));
  if (!t) goto out;
  t->tag = tag;
  t->hash = h;
  t->n = (uint32_t)n;
  memcpy(t->pcs, pcs, n * sizeof *pcs);
  t->lines = (int32_t *)(t->pcs + n);
  memcpy(t->lines, lines, n * sizeof *lines);
  trace_pages[count / TA_TRACE_PAGE][count % TA_TRACE_PAGE] = t;
  trace_hash[j] = count + 1;
  id = count;
  atomic_store_explicit(&ntraces, count + 1, memory_order_release);
out:
  ta_unlock(&stack_lock);
  return id;
}

/* ---- interpreter frame names (under names_lock, a leaf but for prof_meta) ---- */
typedef struct {
  uint64_t key;
  const char *name, *file;
} name_t;
static ta_lock_t names_lock = PTHREAD_MUTEX_INITIALIZER;
static name_t *names;
static size_t names_cap, names_n;

static size_t name_slot(name_t *tab, size_t cap, uint64_t key) {
  size_t j = mix(0, key) & (cap - 1);
  while (tab[j].key && tab[j].key != key) j = (j + 1) & (cap - 1);
  return j;
}

TRIMALLOC_API int trimalloc_prof_name_frame(uint64_t key, const char *name, const char *file) {
  if (!key || !name) return EINVAL;
  key &= ~TA_PROF_INTERP;
  int r = 0;
  ta_lock(&names_lock);
  if ((names_n + 1) * 2 > names_cap) {
    size_t cap = names_cap ? names_cap * 2 : 128; /* 24-byte entries: 3 KiB */
    name_t *t = ta_prof_meta_map(cap * sizeof(name_t));
    if (!t) {
      r = ENOMEM;
      goto out;
    }
    for (size_t i = 0; i < names_cap; i++)
      if (names[i].key) t[name_slot(t, cap, names[i].key)] = names[i];
    ta_prof_meta_unmap(names, names_cap * sizeof(name_t));
    names = t;
    names_cap = cap;
  }
  size_t j = name_slot(names, names_cap, key);
  if (names[j].key) goto out; /* the first name stays */
  const char *n = copy_str(name, 1024), *f = file ? copy_str(file, 4096) : NULL;
  if (!n || (file && !f)) {
    r = ENOMEM;
    goto out;
  }
  names[j].name = n;
  names[j].file = f;
  names[j].key = key;
  names_n++;
out:
  ta_unlock(&names_lock);
  return r;
}

bool ta_prof_frame_name(uint64_t key, const char **name, const char **file) {
  key &= ~TA_PROF_INTERP;
  bool found = false;
  ta_lock(&names_lock);
  if (names_cap) {
    size_t j = name_slot(names, names_cap, key);
    if (names[j].key) {
      *name = names[j].name;
      *file = names[j].file;
      found = true;
    }
  }
  ta_unlock(&names_lock);
  return found;
}

void ta_prof_stack_fork_prepare(void) {
  ta_lock(&stack_lock);
  ta_lock(&names_lock);
}
void ta_prof_stack_fork_parent(void) {
  ta_unlock(&names_lock);
  ta_unlock(&stack_lock);
}
