/* Python frames for trimalloc's heap profiler.
 *
 * The core calls ta_py_frames_hook inside a sample, on the allocating thread,
 * in the middle of malloc. So the hook runs only when this thread already
 * holds the GIL (it never takes it: scalene's deadlock), allocates nothing,
 * takes no lock, calls no Python code and runs no GC: it follows the frame
 * chain as the interpreter left it, reads each frame's code object and line,
 * and names a code object the first time it sees one (copying its strings by
 * hand into stack buffers, then into the core's metadata with
 * ta_bind_frames_name). Keys are code objects' addresses, held in core/bind's
 * key table (ta_bind_keys_t, shared with the Ruby walker); each code object
 * named is kept alive (Py_INCREF, never released), so its address never
 * comes back as another function's. Registering the hook and timing it are
 * core/bind's too (bind_frames.c): what stays here is what reads Python.
 *
 * Why this file leaves the limited API that the rest of the extension keeps:
 * the frame chain is not in it (3.11+ keeps it in internal structs). The
 * module is still one abi3 .so; the walker is switched on only when the
 * running interpreter is the minor version this file was compiled for (the
 * structs it reads differ between minor versions), and every function outside
 * the stable ABI is found with dlsym, so the module imports on any 3.8+ and
 * on another minor version profiles with native frames only. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1
#endif
#undef Py_LIMITED_API
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if PY_VERSION_HEX >= 0x030B0000
#define Py_BUILD_CORE 1
#include "internal/pycore_frame.h"
#else
#include <frameobject.h>
#endif

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030D0000
#define FRAME_CODE(f) ((f)->f_code) /* 3.13 has _PyFrame_GetCode */
#else
#define FRAME_CODE(f) _PyFrame_GetCode(f)
#endif

#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "_prof.h"
#include "binding.h"

/* The walkers below know 3.8 to 3.13 with the GIL. */
#if PY_VERSION_HEX >= 0x030E0000 || defined(Py_GIL_DISABLED)
#define TA_PY_WALKER 0
#else
#define TA_PY_WALKER 1
#endif

static struct {
  int ready; /* everything below resolved: the hook may run */
  int (*gil_check)(void);
  int (*initialized)(void);
  int (*finalizing)(void);
  PyThreadState *(*tstate)(void);
  int (*addr2line)(PyCodeObject *, int);
  const char *status;
} py = {0, NULL, NULL, NULL, NULL, NULL, "not installed"};

/* The re-entry guard. A plain int, not a thread-local (a dlopen'ed module's
 * TLS may be allocated, with malloc, on first touch): it is only read and
 * written by a thread holding the GIL, which excludes every other. */
static int busy;

/* ---- the per-code cache: code objects seen, kept alive ----
 * core/bind's key table, touched only with the GIL held. Bounded: after
 * CODE_MAX distinct code objects, the rest share one key (OVERFLOW_KEY,
 * named "[python: frame cache full]") rather than reuse an address some
 * other function might get. Mapped at install, resident only as far as
 * touched. */
#define CODE_MAX 24576u
#define OVERFLOW_KEY 1u
static ta_bind_keys_t seen;
static int overflow_named;

#define NAME_MAX_LEN 256
#define FILE_MAX_LEN 512

/* UTF-8 of a str into out (NUL-terminated, cut at a character boundary),
 * without allocating: compact ASCII is copied; anything else is encoded by
 * hand from its code points (a lone surrogate becomes '?'). */
static size_t utf8_copy(PyObject *s, char *out, size_t cap) {
  size_t n = 0;
  out[0] = 0;
  if (!s || !PyUnicode_Check(s)) return 0;
#if PY_VERSION_HEX < 0x030C0000
  if (!PyUnicode_IS_READY(s)) return 0; /* a legacy string: never a code object's */
#endif
  Py_ssize_t len = PyUnicode_GET_LENGTH(s);
  if (PyUnicode_IS_COMPACT_ASCII(s)) {
    n = (size_t)len < cap - 1 ? (size_t)len : cap - 1;
    memcpy(out, PyUnicode_DATA(s), n);
    out[n] = 0;
    return n;
  }
  int kind = PyUnicode_KIND(s);
  const void *data = PyUnicode_DATA(s);
  for (Py_ssize_t i = 0; i < len; i++) {
    char b[4];
    size_t k = ta_bind_utf8_put(PyUnicode_READ(kind, data, i), b);
    if (n + k >= cap) break;
    memcpy(out + n, b, k);
    n += k;
  }
  out[n] = 0;
  return n;
}

/* The module a source file holds, from its path alone (no import system, no
 * Python call): the part after site-packages/, dist-packages/ or
 * lib/python3.X/, else the file's own name; ".py" and "/__init__" dropped,
 * '/' made '.'. "<frozen importlib._bootstrap>" -> "importlib._bootstrap";
 * any other "<...>" (-c, exec) -> "" (no module). */
static void module_of(const char *file, char *out, size_t cap) {
  out[0] = 0;
  size_t len = strlen(file);
  const char *rel = NULL;
  size_t rlen = 0;
  if (file[0] == '<') {
    if (strncmp(file, "<frozen ", 8) == 0 && len > 9 && file[len - 1] == '>') {
      rel = file + 8;
      rlen = len - 9;
    } else {
      return;
    }
  } else {
    static const char *const roots[] = {"/site-packages/", "/dist-packages/"};
    for (size_t i = 0; i < 2 && !rel; i++) {
      const char *p = NULL, *q = file;
      while ((q = strstr(q, roots[i])) != NULL) p = q++; /* the last one */
      if (p) rel = p + strlen(roots[i]);
    }
    if (!rel) { /* the standard library: .../lib/python3.11/json/encoder.py */
      const char *p = NULL, *q = file;
      while ((q = strstr(q, "/lib/python")) != NULL) p = q++;
      if (p) {
        const char *s = strchr(p + 11, '/');
        if (s) rel = s + 1;
      }
    }
    if (!rel) {
      const char *slash = strrchr(file, '/');
      rel = slash ? slash + 1 : file;
    }
    rlen = strlen(rel);
    if (rlen > 3 && memcmp(rel + rlen - 3, ".py", 3) == 0) rlen -= 3;
    if (rlen >= 9 && memcmp(rel + rlen - 9, "/__init__", 9) == 0) rlen -= 9;
  }
  if (rlen >= cap) rlen = cap - 1;
  for (size_t i = 0; i < rlen; i++) out[i] = rel[i] == '/' ? '.' : rel[i];
  out[rlen] = 0;
}

/* "module.qualname" and the file of a code object. */
static void describe_code(PyCodeObject *code, char *name, size_t namelen, char *file, size_t filelen) {
  char qual[NAME_MAX_LEN], mod[NAME_MAX_LEN];
#if PY_VERSION_HEX >= 0x030B0000
  utf8_copy(code->co_qualname, qual, sizeof qual);
#else
  utf8_copy(code->co_name, qual, sizeof qual);
#endif
  utf8_copy(code->co_filename, file, filelen);
  module_of(file, mod, sizeof mod);
  if (mod[0]) snprintf(name, namelen, "%s.%s", mod, qual[0] ? qual : "?");
  else snprintf(name, namelen, "%s", qual[0] ? qual : "?");
}

/* The key of a code object; the first time: kept alive and named. */
static uint64_t code_key(PyCodeObject *code) {
  uint64_t key = (uint64_t)(uintptr_t)code;
  int r = ta_bind_keys_add(&seen, key);
  if (r == TA_BIND_KEY_HELD) return key;
  if (r == TA_BIND_KEY_FULL) {
    if (!overflow_named) overflow_named = ta_bind_frames_name(OVERFLOW_KEY, "[python: frame cache full]", "") == 0;
    return OVERFLOW_KEY;
  }
  Py_INCREF(code); /* never released: the address stays this function's */
  char name[NAME_MAX_LEN], file[FILE_MAX_LEN];
  describe_code(code, name, sizeof name, file, sizeof file);
  ta_bind_frames_name(key, name, file); /* ENOMEM: shown by address */
  return key;
}

/* Frames the walkers stop at: a chain this long is not a real one. */
#define WALK_LIMIT 100000

/* ---- lines: (code object, offset) -> line, cached ----
 * PyCode_Addr2Line decodes the code object's line table from its start on
 * every call: 2.7 K instructions a frame on bench/py_tasks.py under 3.11,
 * 20 K of a sample's 65 K (callgrind, bench/results-2026-12-06-prof-sample-
 * cost.txt). A direct-mapped cache in front of it, touched only with the GIL
 * held (like `seen`). Only a kept code object's lines are cached: its
 * address is never another code object's, and its line table never changes;
 * a frame under OVERFLOW_KEY is looked up every time. 16 KiB, zero pages
 * until touched. */
#define LINE_CACHE 1024u
static struct {
  uint64_t key; /* a code object's key, 0 empty */
  int32_t off, line;
} line_cache[LINE_CACHE];

static int32_t line_of(PyCodeObject *code, uint64_t key, int byte_offset) {
  if (key == OVERFLOW_KEY) return py.addr2line(code, byte_offset);
  uint64_t h = (key ^ ((uint64_t)(uint32_t)byte_offset << 32)) * 0x9e3779b97f4a7c15ull;
  size_t i = (size_t)(h >> 54) & (LINE_CACHE - 1);
  if (line_cache[i].key == key && line_cache[i].off == byte_offset) return line_cache[i].line;
  int32_t line = py.addr2line(code, byte_offset);
  line_cache[i].key = key;
  line_cache[i].off = byte_offset;
  line_cache[i].line = line;
  return line;
}

/* One frame: its key and line into keys[n], lines[n]. */
static void put(PyCodeObject *code, int byte_offset, uint64_t *keys, int32_t *lines, int n) {
  keys[n] = code_key(code);
  lines[n] = line_of(code, keys[n], byte_offset);
}

static int walk(PyThreadState *ts, uint64_t *keys, int32_t *lines, int max) {
  int n = 0;
#if !TA_PY_WALKER
  (void)ts, (void)keys, (void)lines, (void)max;
#elif PY_VERSION_HEX >= 0x030B0000
#if PY_VERSION_HEX >= 0x030D0000
  _PyInterpreterFrame *f = ts->current_frame;
#else
  _PyInterpreterFrame *f = ts->cframe ? ts->cframe->current_frame : NULL;
#endif
  for (int steps = 0; f && n < max && steps < WALK_LIMIT; f = f->previous, steps++) {
#if PY_VERSION_HEX >= 0x030C0000
    if (f->owner == FRAME_OWNED_BY_CSTACK) continue; /* the eval loop's entry shim */
#endif
#if PY_VERSION_HEX >= 0x030D0000
    if (!f->f_executable || !PyCode_Check(f->f_executable)) continue;
#endif
    if (_PyFrame_IsIncomplete(f)) continue; /* not started: no line yet */
    PyCodeObject *code = FRAME_CODE(f);
    put(code, _PyInterpreterFrame_LASTI(f) * (int)sizeof(_Py_CODEUNIT), keys, lines, n++);
  }
#else
  PyFrameObject *f = ts->frame;
  for (int steps = 0; f && n < max && steps < WALK_LIMIT; f = f->f_back, steps++) {
    if (!f->f_code) continue;
#if PY_VERSION_HEX >= 0x030A0000
    int off = f->f_lasti < 0 ? -1 : f->f_lasti * (int)sizeof(_Py_CODEUNIT); /* 3.10: units */
#else
    int off = f->f_lasti; /* 3.8, 3.9: bytes */
#endif
    put(f->f_code, off, keys, lines, n++);
  }
#endif
  return n;
}

int ta_py_frames_hook(uint64_t *keys, int32_t *lines, int max) {
  if (!py.ready || max <= 0) return 0;
  if (!py.initialized() || py.finalizing()) return 0;
  /* Does this thread hold the GIL? PyGILState_Check compares pointers
   * only; it says 1 when it cannot tell (no GIL-state machinery yet, or
   * subinterpreters), so the thread state the interpreter says is running
   * must also be this thread's. */
  if (!py.gil_check()) return 0;
  PyThreadState *ts = py.tstate();
  if (!ts || ts->thread_id != PyThread_get_thread_ident()) return 0;
  if (busy) return 0;
  busy = 1;
  int n = walk(ts, keys, lines, max);
  busy = 0;
  return n;
}

int ta_py_frames_describe(uint64_t key, char *name, size_t namelen, char *file, size_t filelen) {
  if (key == OVERFLOW_KEY && seen.n >= seen.max) {
    snprintf(name, namelen, "[python: frame cache full]");
    file[0] = 0;
    return 0;
  }
  if (!ta_bind_keys_has(&seen, key)) return -1;
  describe_code((PyCodeObject *)(uintptr_t)key, name, namelen, file, filelen);
  return 0;
}

const char *ta_py_frames_status(void) { return py.status; }

/* The running interpreter's major.minor is this file's. */
static int same_minor(void) {
  int major = 0, minor = 0;
  if (sscanf(Py_GetVersion(), "%d.%d", &major, &minor) != 2) return 0;
  return major == PY_MAJOR_VERSION && minor == PY_MINOR_VERSION;
}

int ta_py_frames_install(void) {
  static char why[160];
  if (!TA_PY_WALKER) {
    snprintf(why, sizeof why, "no Python frames: built for Python %d.%d, which the walker does not know",
             PY_MAJOR_VERSION, PY_MINOR_VERSION);
    py.status = why;
    return 0;
  }
  if (!same_minor()) {
    const char *v = Py_GetVersion();
    snprintf(why, sizeof why, "no Python frames: built for Python %d.%d, running %.*s (rebuild the "
             "extension for this Python)", PY_MAJOR_VERSION, PY_MINOR_VERSION, (int)strcspn(v, " "), v);
    py.status = why;
    return 0;
  }
  if (!py.ready) {
    py.gil_check = (int (*)(void))dlsym(RTLD_DEFAULT, "PyGILState_Check");
    py.initialized = (int (*)(void))dlsym(RTLD_DEFAULT, "Py_IsInitialized");
    py.finalizing = (int (*)(void))dlsym(RTLD_DEFAULT, "Py_IsFinalizing"); /* 3.13 */
    if (!py.finalizing) py.finalizing = (int (*)(void))dlsym(RTLD_DEFAULT, "_Py_IsFinalizing");
    py.tstate = (PyThreadState * (*)(void)) dlsym(RTLD_DEFAULT, "PyThreadState_GetUnchecked");
    if (!py.tstate) py.tstate = (PyThreadState * (*)(void)) dlsym(RTLD_DEFAULT, "_PyThreadState_UncheckedGet");
    py.addr2line = (int (*)(PyCodeObject *, int))dlsym(RTLD_DEFAULT, "PyCode_Addr2Line");
    if (!py.gil_check || !py.initialized || !py.finalizing || !py.tstate || !py.addr2line) {
      py.status = "no Python frames: this interpreter does not export what the walker needs";
      return 0;
    }
    py.ready = ta_bind_keys_init(&seen, CODE_MAX) == 0;
    if (!py.ready) {
      py.status = "no Python frames: no memory for the table of code objects";
      return 0;
    }
  }
  py.status = ta_bind_frames_register(ta_py_frames_hook, "_PyEval_EvalFrameDefault", 1);
  return strcmp(py.status, TA_BIND_FRAMES_REGISTERED) == 0;
}
