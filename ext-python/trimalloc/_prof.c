/* Python frames for trimalloc's heap profiler.
 *
 * The core calls ta_py_frames_hook inside a sample, on the allocating thread,
 * in the middle of malloc. So the hook runs only when this thread already
 * holds the GIL (it never takes it: scalene's deadlock), allocates nothing,
 * takes no lock, calls no Python code and runs no GC: it follows the frame
 * chain as the interpreter left it, reads each frame's code object and line,
 * and names a code object the first time it sees one (copying its strings by
 * hand into stack buffers, then into the core's metadata with
 * trimalloc_prof_name_frame). Keys are code objects' addresses; each code
 * object named is kept alive (Py_INCREF, never released), so its address
 * never comes back as another function's.
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

typedef int (*frames_fn)(uint64_t *keys, int32_t *lines, int max);
typedef int (*set_hook_fn)(frames_fn fn, const void *eval_fn);
typedef int (*name_frame_fn)(uint64_t key, const char *name, const char *file);

static struct {
  int ready; /* everything below resolved: the hook may run */
  int (*gil_check)(void);
  int (*initialized)(void);
  int (*finalizing)(void);
  PyThreadState *(*tstate)(void);
  int (*addr2line)(PyCodeObject *, int);
  name_frame_fn name_frame; /* NULL until the core is found */
  const char *status;
} py = {0, NULL, NULL, NULL, NULL, NULL, NULL, "not installed"};

/* The re-entry guard. A plain int, not a thread-local (a dlopen'ed module's
 * TLS may be allocated, with malloc, on first touch): it is only read and
 * written by a thread holding the GIL, which excludes every other. */
static int busy;

/* ---- the per-code cache: code objects seen, kept alive ----
 * Open addressing over code addresses, touched only with the GIL held.
 * Bounded: after CODE_MAX distinct code objects, the rest share one key
 * (OVERFLOW_KEY, named "[python: frame cache full]") rather than reuse an
 * address some other function might get. 32768 slots of 8 bytes = 256 KiB of
 * .bss, resident only as far as touched. */
#define CODE_SLOTS 32768u
#define CODE_MAX (CODE_SLOTS / 4 * 3)
#define OVERFLOW_KEY 1u
static PyCodeObject *seen[CODE_SLOTS];
static unsigned nseen;
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
    Py_UCS4 c = PyUnicode_READ(kind, data, i);
    char b[4];
    size_t k;
    if (c < 0x80) {
      b[0] = (char)c;
      k = 1;
    } else if (c < 0x800) {
      b[0] = (char)(0xC0 | (c >> 6));
      b[1] = (char)(0x80 | (c & 0x3F));
      k = 2;
    } else if (c >= 0xD800 && c <= 0xDFFF) {
      b[0] = '?';
      k = 1;
    } else if (c < 0x10000) {
      b[0] = (char)(0xE0 | (c >> 12));
      b[1] = (char)(0x80 | ((c >> 6) & 0x3F));
      b[2] = (char)(0x80 | (c & 0x3F));
      k = 3;
    } else {
      b[0] = (char)(0xF0 | (c >> 18));
      b[1] = (char)(0x80 | ((c >> 12) & 0x3F));
      b[2] = (char)(0x80 | ((c >> 6) & 0x3F));
      b[3] = (char)(0x80 | (c & 0x3F));
      k = 4;
    }
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

static unsigned slot_of(const void *p) {
  uint64_t h = (uint64_t)(uintptr_t)p * 0x9E3779B97F4A7C15ull;
  return (unsigned)(h >> 40) & (CODE_SLOTS - 1);
}

/* The key of a code object; the first time: kept alive and named. */
static uint64_t code_key(PyCodeObject *code) {
  unsigned i = slot_of(code);
  while (seen[i]) {
    if (seen[i] == code) return (uint64_t)(uintptr_t)code;
    i = (i + 1) & (CODE_SLOTS - 1);
  }
  if (nseen >= CODE_MAX) {
    if (!overflow_named && py.name_frame)
      overflow_named = py.name_frame(OVERFLOW_KEY, "[python: frame cache full]", "") == 0;
    return OVERFLOW_KEY;
  }
  Py_INCREF(code); /* never released: the address stays this function's */
  seen[i] = code;
  nseen++;
  if (py.name_frame) {
    char name[NAME_MAX_LEN], file[FILE_MAX_LEN];
    describe_code(code, name, sizeof name, file, sizeof file);
    py.name_frame((uint64_t)(uintptr_t)code, name, file); /* ENOMEM: shown by address */
  }
  return (uint64_t)(uintptr_t)code;
}

/* Frames the walkers stop at: a chain this long is not a real one. */
#define WALK_LIMIT 100000

/* One frame: its key and line into keys[n], lines[n]. */
static void put(PyCodeObject *code, int byte_offset, uint64_t *keys, int32_t *lines, int n) {
  keys[n] = code_key(code);
  lines[n] = py.addr2line(code, byte_offset);
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
  if (key == OVERFLOW_KEY && nseen >= CODE_MAX) {
    snprintf(name, namelen, "[python: frame cache full]");
    file[0] = 0;
    return 0;
  }
  for (unsigned i = slot_of((void *)(uintptr_t)key); seen[i]; i = (i + 1) & (CODE_SLOTS - 1)) {
    if ((uint64_t)(uintptr_t)seen[i] == key) {
      describe_code(seen[i], name, namelen, file, filelen);
      return 0;
    }
  }
  return -1;
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
    py.ready = 1;
  }
  if (ta_bind_backend() != TA_BACKEND_TRIMALLOC) {
    py.status = "not registered: trimalloc is not the process's allocator";
    return 0;
  }
  set_hook_fn set_hook = (set_hook_fn)dlsym(RTLD_DEFAULT, "trimalloc_prof_set_frames_hook");
  name_frame_fn name_frame = (name_frame_fn)dlsym(RTLD_DEFAULT, "trimalloc_prof_name_frame");
  const void *eval = dlsym(RTLD_DEFAULT, "_PyEval_EvalFrameDefault");
  if (!set_hook || !name_frame) {
    py.status = "not registered: the loaded trimalloc core has no profiler";
    return 0;
  }
  if (!eval) {
    py.status = "not registered: _PyEval_EvalFrameDefault is not exported by this interpreter";
    return 0;
  }
  py.name_frame = name_frame; /* before the hook can run */
  if (set_hook(ta_py_frames_hook, eval) != 0) {
    py.status = "not registered: trimalloc_prof_set_frames_hook refused the hook";
    return 0;
  }
  py.status = "registered";
  return 1;
}
