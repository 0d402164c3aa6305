/* What the Python and Ruby frame walkers share (DESIGN.md 10): registering
 * the walker as the core's frames hook, naming keys, the table of the keys
 * handed to the core, and the walker's cost. The walkers themselves read
 * their interpreter's frames and stay in each extension (_prof.c,
 * frames.c). See binding.h ("bind_frames.c"). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE /* RTLD_DEFAULT */
#endif
#include "bind_internal.h"

#include <dlfcn.h>
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

typedef int (*set_hook_fn)(ta_bind_frames_fn fn, const void *eval_fn);
typedef int (*name_fn)(uint64_t key, const char *name, const char *file);

/* Found once, by the first registration; read inside malloc by the hook
 * (ta_bind_frames_name), so never looked up there. */
static _Atomic(name_fn) name_frame;

int ta_bind_frames_set_hook(ta_bind_frames_fn fn, const void *eval_fn) {
  if (!ta_bind_sampler_available()) return ENOSYS;
  set_hook_fn set_hook = (set_hook_fn)dlsym(RTLD_DEFAULT, "trimalloc_prof_set_frames_hook");
  name_fn name = (name_fn)dlsym(RTLD_DEFAULT, "trimalloc_prof_name_frame");
  if (!set_hook || !name) return ENOSYS;
  atomic_store(&name_frame, name); /* before the hook can run */
  return set_hook(fn, eval_fn);
}

int ta_bind_frames_name(uint64_t key, const char *name, const char *file) {
  name_fn f = atomic_load_explicit(&name_frame, memory_order_relaxed);
  return f ? f(key, name, file) : ENOSYS;
}

const char *ta_bind_frames_register(ta_bind_frames_fn fn, const char *eval_symbol, int eval_needed) {
  static char why[160];
  if (ta_bind_backend() != TA_BACKEND_TRIMALLOC) return "not registered: trimalloc is not the process's allocator";
  const void *eval = dlsym(RTLD_DEFAULT, eval_symbol);
  if (!eval && eval_needed) {
    snprintf(why, sizeof why, "not registered: %s is not exported by this interpreter", eval_symbol);
    return why;
  }
  int rc = ta_bind_frames_set_hook(fn, eval);
  if (rc == ENOSYS) return "not registered: the loaded trimalloc core has no profiler";
  if (rc) return "not registered: trimalloc_prof_set_frames_hook refused the hook";
  return TA_BIND_FRAMES_REGISTERED;
}

struct on_thread {
  ta_bind_frames_fn fn;
  int max, n;
};

static void *walk_on_thread(void *p) {
  struct on_thread *t = p;
  uint64_t keys[1024];
  int32_t lines[1024];
  t->n = t->fn(keys, lines, t->max);
  return NULL;
}

int ta_bind_frames_on_thread(ta_bind_frames_fn fn, int max) {
  struct on_thread t = {fn, max > 1024 ? 1024 : max, 0};
  pthread_t th;
  int err = pthread_create(&th, NULL, walk_on_thread, &t);
  if (err) return -err;
  pthread_join(th, NULL);
  return t.n;
}

/* ---- the key table ---- */

static void *map(size_t bytes) {
  void *p = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  return p == MAP_FAILED ? NULL : p;
}

/* The slots are mapped for max keys at half load, but used as a table of
 * cap slots at its start (cap = mask + 1), doubled when half full: a slot's
 * page is touched when a key hashes to it, so a table used at full size
 * from the start had a page resident for nearly every key (the 40 frames of
 * bench/'s Ruby run: 148 KiB; 300 keys: 1.2 MiB of Ruby's 2 MiB of slots). Doubling clears the used
 * part and re-inserts keys[0 .. n) (every key is there): O(n) once per
 * doubling, O(1) a key on average; it runs inside malloc, touches only
 * these mappings and allocates nothing. */
#define TA_BIND_KEYS_SLOTS0 1024u /* one 4 KiB page of slots: 512 keys */

int ta_bind_keys_init(ta_bind_keys_t *k, size_t max) {
  size_t slots = 2;
  while (slots < 2 * max) slots *= 2; /* at most half full */
  size_t cap = slots < TA_BIND_KEYS_SLOTS0 ? slots : TA_BIND_KEYS_SLOTS0;
  *k = (ta_bind_keys_t){map(max * sizeof *k->keys), map(slots * sizeof *k->slots), 0, max, cap - 1, slots};
  if (k->keys && k->slots) return 0;
  int err = errno;
  if (k->keys) munmap(k->keys, max * sizeof *k->keys);
  if (k->slots) munmap(k->slots, slots * sizeof *k->slots);
  *k = (ta_bind_keys_t){NULL, NULL, 0, 0, 0, 0};
  return err;
}

static size_t slot_of(const ta_bind_keys_t *k, uint64_t key) {
  return (size_t)((key * 0x9E3779B97F4A7C15ull) >> 40) & k->mask;
}

/* The slot holding key, or the empty one where it would go. */
static size_t probe(const ta_bind_keys_t *k, uint64_t key) {
  size_t s = slot_of(k, key);
  while (k->slots[s] && k->keys[k->slots[s] - 1] != key) s = (s + 1) & k->mask;
  return s;
}

static void grow(ta_bind_keys_t *k) {
  memset(k->slots, 0, (k->mask + 1) * sizeof *k->slots); /* the new half was never touched */
  k->mask = 2 * k->mask + 1;
  for (size_t i = 0; i < k->n; i++) k->slots[probe(k, k->keys[i])] = (uint32_t)(i + 1);
}

int ta_bind_keys_has(const ta_bind_keys_t *k, uint64_t key) {
  return k->slots && k->slots[probe(k, key)] != 0;
}

int ta_bind_keys_add(ta_bind_keys_t *k, uint64_t key) {
  if (!k->slots) return TA_BIND_KEY_FULL;
  size_t s = probe(k, key);
  if (k->slots[s]) return TA_BIND_KEY_HELD;
  if (k->n >= k->max) return TA_BIND_KEY_FULL;
  if (2 * (k->n + 1) > k->mask + 1 && k->mask + 1 < k->slots_max) {
    grow(k);
    s = probe(k, key);
  }
  k->keys[k->n] = key;
  k->slots[s] = (uint32_t)++k->n;
  return TA_BIND_KEY_ADDED;
}

/* ---- a walker's keys and counters ---- */

int ta_bind_walker_keep(ta_bind_walker_t *w, uint64_t key) {
  int r = w->test_full && !ta_bind_keys_has(&w->table, key) ? TA_BIND_KEY_FULL : ta_bind_keys_add(&w->table, key);
  w->dropped += r == TA_BIND_KEY_FULL;
  return r != TA_BIND_KEY_FULL;
}

int ta_bind_walker_next(const ta_bind_walker_t *w, uint64_t *key) {
  if (w->named >= w->table.n) return 0;
  *key = w->table.keys[w->named];
  return 1;
}

void ta_bind_walker_name(ta_bind_walker_t *w, const char *name, const char *file) {
  w->unnamed += ta_bind_frames_name(w->table.keys[w->named], name, file) != 0;
  w->named++;
}

size_t ta_bind_walker_fields(ta_bind_walker_t *w, ta_bind_field_t *out) {
  size_t n = 0;
  out[n++] = (ta_bind_field_t){"frames", 'u', 1, {.u = w->table.n}};
  out[n++] = (ta_bind_field_t){"named", 'u', 1, {.u = w->named}};
  out[n++] = (ta_bind_field_t){"dropped", 'u', 1, {.u = w->dropped}};
  out[n++] = (ta_bind_field_t){"unnamed", 'u', 1, {.u = w->unnamed}};
  out[n++] = (ta_bind_field_t){"samples", 'u', 1, {.u = w->samples}};
  out[n++] = (ta_bind_field_t){"skipped", 'u', 1, {.u = atomic_load(&w->skipped)}};
  out[n++] = (ta_bind_field_t){"hooked", 'b', 1, {.u = (uint64_t)w->hooked}};
  return n;
}

/* ---- measuring a walker, UTF-8 ---- */

double ta_bind_frames_cost(ta_bind_frames_fn fn, long n, int max, int *got) {
  uint64_t keys[1024];
  int32_t lines[1024];
  if (max > 1024) max = 1024;
  *got = 0;
  if (n < 1) return 0;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) *got = fn(keys, lines, max);
  clock_gettime(CLOCK_MONOTONIC, &b);
  return ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / (double)n;
}

size_t ta_bind_utf8_put(uint32_t c, char out[4]) {
  if (c < 0x80) {
    out[0] = (char)c;
    return 1;
  }
  if (c < 0x800) {
    out[0] = (char)(0xC0 | (c >> 6));
    out[1] = (char)(0x80 | (c & 0x3F));
    return 2;
  }
  if ((c >= 0xD800 && c <= 0xDFFF) || c > 0x10FFFF) {
    out[0] = '?';
    return 1;
  }
  if (c < 0x10000) {
    out[0] = (char)(0xE0 | (c >> 12));
    out[1] = (char)(0x80 | ((c >> 6) & 0x3F));
    out[2] = (char)(0x80 | (c & 0x3F));
    return 3;
  }
  out[0] = (char)(0xF0 | (c >> 18));
  out[1] = (char)(0x80 | ((c >> 12) & 0x3F));
  out[2] = (char)(0x80 | ((c >> 6) & 0x3F));
  out[3] = (char)(0x80 | (c & 0x3F));
  return 4;
}
