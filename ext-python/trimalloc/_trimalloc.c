/* trimalloc._trimalloc: the CPython binding over core/bind/binding.h.
 *
 * Converts types and maps errors, nothing more: every decision (which backend
 * answers, when a trim is due, how the launcher and the preload re-exec work)
 * lives in core/bind/ (bind_*.c), shared with the Ruby extension.
 *
 * Multi-phase init (PEP 489); the exception type lives in the module state, so
 * re-imports and subinterpreters each get their own. Written against the
 * limited API of CPython 3.8. */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <string.h>
#include <time.h>

#include "_prof.h"
#include "binding.h"

/* Number of stats fields, from the core's one field list. */
#define TA_COUNT_FIELD(type, name, unit, doc) +1
enum { TA_NFIELDS = 0 TRIMALLOC_STATS_FIELDS(TA_COUNT_FIELD) };
#undef TA_COUNT_FIELD

typedef struct {
  PyObject *error;        /* trimalloc.Error */
  PyObject *trimmer_type; /* trimalloc._trimalloc.Trimmer */
} module_state;

static module_state *get_state(PyObject *module) {
  return (module_state *)PyModule_GetState(module);
}

/* A float argument that must be finite and >= 0; the message names the value. */
static int parse_interval(PyObject *obj, const char *what, double *out) {
  if (PyBool_Check(obj) || !(PyFloat_Check(obj) || PyLong_Check(obj))) {
    PyErr_Format(PyExc_TypeError, "%s must be a number of seconds, not %R", what, obj);
    return -1;
  }
  double v = PyFloat_AsDouble(obj);
  if (v == -1.0 && PyErr_Occurred()) return -1;
  if (!isfinite(v) || v < 0) {
    PyErr_Format(PyExc_ValueError, "%s must be finite and >= 0, not %R", what, obj);
    return -1;
  }
  *out = v;
  return 0;
}

/* A byte count: an int >= 0 that fits in 64 bits. */
static int parse_bytes(PyObject *obj, const char *what, uint64_t *out) {
  if (PyBool_Check(obj) || !PyLong_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "%s must be an int (bytes), not %R", what, obj);
    return -1;
  }
  PyObject *zero = PyLong_FromLong(0);
  if (!zero) return -1;
  int neg = PyObject_RichCompareBool(obj, zero, Py_LT);
  Py_DECREF(zero);
  if (neg < 0) return -1;
  if (neg) {
    PyErr_Format(PyExc_ValueError, "%s must be >= 0, not %R", what, obj);
    return -1;
  }
  unsigned long long v = PyLong_AsUnsignedLongLong(obj);
  if (v == (unsigned long long)-1 && PyErr_Occurred()) {
    PyErr_Clear();
    PyErr_Format(PyExc_ValueError, "%s is too large: %R", what, obj);
    return -1;
  }
  *out = (uint64_t)v;
  return 0;
}

static PyObject *py_active(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyBool_FromLong(ta_bind_backend() == TA_BACKEND_TRIMALLOC);
}

static PyObject *py_backend(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyUnicode_FromString(ta_bind_backend_name());
}

static PyObject *py_loaded_path(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  const char *p = ta_bind_loaded_path();
  if (!p) Py_RETURN_NONE;
  return PyUnicode_DecodeFSDefault(p);
}

static PyObject *py_core_version(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  const char *v = ta_bind_core_version();
  if (!v) Py_RETURN_NONE;
  return PyUnicode_FromString(v);
}

static PyObject *py_purger_state(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyUnicode_FromString(ta_bind_purger_state());
}

static PyObject *py_trim(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  uint64_t released;
  Py_BEGIN_ALLOW_THREADS
  released = ta_bind_trim();
  Py_END_ALLOW_THREADS
  return PyLong_FromUnsignedLongLong(released);
}

static PyObject *py_trim_if_due(PyObject *m, PyObject *args, PyObject *kwargs) {
  (void)m;
  static char *kwlist[] = {"min_interval", "min_free", NULL};
  PyObject *interval_obj, *free_obj = NULL;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|O:trim_if_due", kwlist, &interval_obj,
                                   &free_obj))
    return NULL;
  double interval;
  uint64_t min_free = 0;
  if (parse_interval(interval_obj, "min_interval", &interval) < 0) return NULL;
  if (free_obj && parse_bytes(free_obj, "min_free", &min_free) < 0) return NULL;
  /* decided with the GIL (a clock read), trimmed without it */
  int64_t released = -1;
  if (ta_bind_due(interval, min_free, NULL)) {
    Py_BEGIN_ALLOW_THREADS
    released = ta_bind_run_trim(NULL);
    Py_END_ALLOW_THREADS
  }
  if (released < 0) Py_RETURN_NONE;
  return PyLong_FromLongLong(released);
}

static PyObject *py_free_bytes(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyLong_FromUnsignedLongLong(ta_bind_free_bytes());
}

static PyObject *py_advance_clock(PyObject *m, PyObject *arg) {
  (void)m;
  double seconds;
  if (parse_interval(arg, "seconds", &seconds) < 0) return NULL;
  ta_bind_clock_advance(seconds);
  Py_RETURN_NONE;
}

static PyObject *py_rss(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyLong_FromUnsignedLongLong(ta_bind_rss());
}

static int set_item(PyObject *d, const char *key, PyObject *value) {
  if (!value) return -1;
  int rc = PyDict_SetItemString(d, key, value);
  Py_DECREF(value);
  return rc;
}

static PyObject *py_stats(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  ta_bind_field_t fields[TA_NFIELDS];
  if (ta_bind_stats(fields) != 0) {
    PyErr_SetString(get_state(m)->error, "the allocator could not report its stats");
    return NULL;
  }
  PyObject *d = PyDict_New();
  if (!d) return NULL;
  for (size_t i = 0; i < TA_NFIELDS; i++) {
    const ta_bind_field_t *f = &fields[i];
    if (!f->present) continue; /* not measured by this backend: left out */
    PyObject *v = f->type == 'd' ? PyFloat_FromDouble(f->v.d)
                                 : PyLong_FromUnsignedLongLong(f->v.u);
    if (set_item(d, f->name, v) < 0) goto fail;
  }
  if (set_item(d, "backend", PyUnicode_FromString(ta_bind_backend_name())) < 0) goto fail;
  return d;
fail:
  Py_DECREF(d);
  return NULL;
}

/* argv from a list or tuple of str/bytes; *out is NULL-terminated, and the
 * bytes objects holding the strings are kept alive in *keep. */
static int to_argv(PyObject *seq, PyObject **keep, char ***out) {
  if (!PyList_Check(seq) && !PyTuple_Check(seq)) {
    PyErr_Format(PyExc_TypeError, "argv must be a list of str, not %R", seq);
    return -1;
  }
  Py_ssize_t n = PySequence_Size(seq);
  if (n < 0) return -1;
  if (n == 0) {
    PyErr_SetString(PyExc_ValueError, "argv must not be empty: [] names no command");
    return -1;
  }
  PyObject *list = PyList_New(n);
  char **argv = PyMem_Malloc(((size_t)n + 1) * sizeof *argv);
  if (!list || !argv) goto fail;
  memset(argv, 0, ((size_t)n + 1) * sizeof *argv);
  for (Py_ssize_t i = 0; i < n; i++) {
    PyObject *item = PySequence_GetItem(seq, i), *bytes = NULL;
    if (!item) goto fail;
    if (!PyUnicode_Check(item) && !PyBytes_Check(item)) {
      PyErr_Format(PyExc_TypeError, "argv[%zd] must be str, not %R", i, item);
      Py_DECREF(item);
      goto fail;
    }
    int ok = PyUnicode_FSConverter(item, &bytes);
    Py_DECREF(item);
    if (!ok) goto fail;
    PyList_SetItem(list, i, bytes); /* steals */
    argv[i] = PyBytes_AsString(bytes);
    if (!argv[i]) goto fail;
  }
  *keep = list;
  *out = argv;
  return 0;
fail:
  Py_XDECREF(list);
  PyMem_Free(argv);
  if (!PyErr_Occurred()) PyErr_NoMemory();
  return -1;
}

/* exec(lib, argv, pythonmalloc=False, first=None): ta_bind_exec_in. */
static PyObject *py_exec(PyObject *m, PyObject *args, PyObject *kwargs) {
  (void)m;
  static char *kwlist[] = {"lib", "argv", "pythonmalloc", "first", NULL};
  PyObject *lib = NULL, *seq, *keep = NULL, *first = Py_None, *first_b = NULL;
  int pythonmalloc = 0;
  char **argv = NULL;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&O|pO:exec", kwlist, PyUnicode_FSConverter,
                                   &lib, &seq, &pythonmalloc, &first))
    return NULL;
  if (first != Py_None && !PyUnicode_FSConverter(first, &first_b)) {
    Py_DECREF(lib);
    return NULL;
  }
  if (to_argv(seq, &keep, &argv) < 0) {
    Py_DECREF(lib);
    Py_XDECREF(first_b);
    return NULL;
  }
  /* returns only on failure */
  ta_bind_exec_in(PyBytes_AsString(lib), argv, pythonmalloc, first_b ? PyBytes_AsString(first_b) : NULL);
  int e = errno;
  PyObject *name = PyList_GetItem(keep, 0);
  errno = e;
  PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, name);
  Py_DECREF(lib);
  Py_XDECREF(first_b);
  Py_DECREF(keep);
  PyMem_Free(argv);
  return NULL;
}

/* search_path(first=None) -> the directories the launcher searches. */
static PyObject *py_search_path(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *first = Py_None, *first_b = NULL;
  if (!PyArg_ParseTuple(args, "|O:search_path", &first)) return NULL;
  if (first != Py_None && !PyUnicode_FSConverter(first, &first_b)) return NULL;
  char *p = ta_bind_search_path(first_b ? PyBytes_AsString(first_b) : NULL);
  Py_XDECREF(first_b);
  if (!p) return PyErr_NoMemory();
  PyObject *r = PyUnicode_DecodeFSDefault(p);
  free(p);
  return r;
}

/* profile_env(dir, cmd): `run --profile DIR` (ta_bind_profile_env): makes
 * DIR, sets TRIMALLOC_PROF=1 and TRIMALLOC_PROF_PREFIX=DIR/<basename of cmd>
 * in this process's environment. Raises OSError naming DIR. */
static PyObject *py_profile_env(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *dir = NULL, *cmd = NULL;
  if (!PyArg_ParseTuple(args, "O&O&:profile_env", PyUnicode_FSConverter, &dir, PyUnicode_FSConverter,
                        &cmd))
    return NULL;
  PyObject *r = NULL;
  if (ta_bind_profile_env(PyBytes_AsString(dir), PyBytes_AsString(cmd)) != 0) {
    if (errno == EINVAL)
      PyErr_Format(PyExc_ValueError, "profile_env: the directory and the command must not be empty, "
                   "got %R and %R", PyTuple_GetItem(args, 0), PyTuple_GetItem(args, 1));
    else
      PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, PyTuple_GetItem(args, 0));
  } else {
    r = Py_None;
    Py_INCREF(r);
  }
  Py_DECREF(dir);
  Py_DECREF(cmd);
  return r;
}

/* which(cmd, path) -> the file the launcher would run, or None. */
static PyObject *py_which(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *cmd = NULL, *path = NULL;
  if (!PyArg_ParseTuple(args, "O&O&:which", PyUnicode_FSConverter, &cmd, PyUnicode_FSConverter, &path))
    return NULL;
  char *f = ta_bind_which(PyBytes_AsString(cmd), PyBytes_AsString(path));
  int e = errno;
  Py_DECREF(cmd);
  Py_DECREF(path);
  if (f) {
    PyObject *r = PyUnicode_DecodeFSDefault(f);
    free(f);
    return r;
  }
  if (e == ENOMEM) return PyErr_NoMemory();
  Py_RETURN_NONE;
}

/* preload(lib, pythonmalloc=False, argv=None, script=None, title_changed=False)
 * -> (code, reason): the shared preload (ta_bind_preload_req); re-executes,
 * or says why not. Raises OSError when the re-exec itself failed. */
static PyObject *py_preload(PyObject *m, PyObject *args, PyObject *kwargs) {
  (void)m;
  static char *kwlist[] = {"lib", "pythonmalloc", "argv", "script", "title_changed", NULL};
  PyObject *lib = NULL, *seq = Py_None, *script = Py_None, *keep = NULL, *script_b = NULL;
  int pythonmalloc = 0, title_changed = 0;
  char **argv = NULL;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O&|pOOp:preload", kwlist, PyUnicode_FSConverter,
                                   &lib, &pythonmalloc, &seq, &script, &title_changed))
    return NULL;
  PyObject *result = NULL;
  if (seq != Py_None && to_argv(seq, &keep, &argv) < 0) goto done;
  if (script != Py_None && !PyUnicode_FSConverter(script, &script_b)) goto done;
  ta_bind_preload_req_t req = {PyBytes_AsString(lib), pythonmalloc, argv,
                               script_b ? PyBytes_AsString(script_b) : NULL, title_changed, NULL};
  int rc = ta_bind_preload_req(&req);
  if (rc == TA_PRELOAD_FAILED) {
    PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, lib);
    goto done;
  }
  result = Py_BuildValue("(is)", rc, ta_bind_preload_reason(rc));
done:
  Py_XDECREF(lib);
  Py_XDECREF(keep);
  Py_XDECREF(script_b);
  PyMem_Free(argv);
  return result;
}

static PyObject *py_forked_child(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyBool_FromLong(ta_bind_forked_child());
}

static PyObject *py_policy_stats(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  ta_bind_policy_stats_t p;
  ta_bind_policy_stats(&p);
  return Py_BuildValue("{sOsOsKsKsK}", "pending", p.pending ? Py_True : Py_False, "busy",
                       p.busy ? Py_True : Py_False, "deferred", (unsigned long long)p.deferred,
                       "coalesced",
                       (unsigned long long)p.coalesced, "free_reads",
                       (unsigned long long)p.free_reads);
}

static PyObject *py_free_source(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  static const char *names[] = {"unknown", "dirty", "resident", "mallinfo2", "mallinfo"};
  int s = ta_bind_free_source();
  return PyUnicode_FromString(names[s >= 0 && s <= 4 ? s : 0]);
}

static PyObject *py_test_gate(PyObject *m, PyObject *arg) {
  (void)m;
  int on = PyObject_IsTrue(arg);
  if (on < 0) return NULL;
  ta_bind_test_gate(on);
  Py_RETURN_NONE;
}

static PyObject *py_test_gate_open(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  ta_bind_test_gate_open();
  Py_RETURN_NONE;
}

static PyObject *py_test_gate_state(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyLong_FromLong(ta_bind_test_gate_state());
}

/* ---- the heap profiler (bind_sampler.c); trimalloc/profile.py checks the
 * arguments and calls these ---- */

/* trimalloc.Error saying why there is no profiler, when there is none. */
static int need_sampler(PyObject *m) {
  if (ta_bind_sampler_available()) return 0;
  PyErr_SetString(get_state(m)->error, ta_bind_sampler_unavailable());
  return -1;
}

static PyObject *py_prof_available(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  if (ta_bind_sampler_available()) Py_RETURN_NONE;
  return PyUnicode_FromString(ta_bind_sampler_unavailable());
}

/* _prof_start(interval): 0 keeps the current interval. */
static PyObject *py_prof_start(PyObject *m, PyObject *arg) {
  unsigned long long interval = PyLong_AsUnsignedLongLong(arg);
  if (interval == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
  if (need_sampler(m) < 0) return NULL;
  int rc = ta_bind_sampler_start((size_t)interval);
  if (rc == EINVAL) {
    PyErr_Format(PyExc_ValueError, "interval must be 1 .. 1 GiB (bytes), not %R", arg);
    return NULL;
  }
  if (rc) {
    errno = rc;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  Py_RETURN_NONE;
}

static PyObject *py_prof_stop(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  int rc = ta_bind_sampler_stop();
  if (rc) {
    errno = rc;
    return PyErr_SetFromErrno(PyExc_OSError);
  }
  Py_RETURN_NONE;
}

static PyObject *py_prof_interval(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyLong_FromSize_t(ta_bind_sampler_interval());
}

/* _prof_dump(path or None, kind) -> the path written. Encodes and writes
 * without the GIL (it may take milliseconds). */
static PyObject *py_prof_dump(PyObject *m, PyObject *args) {
  PyObject *path_obj, *path_b = NULL;
  int kind;
  if (!PyArg_ParseTuple(args, "Oi:_prof_dump", &path_obj, &kind)) return NULL;
  if (path_obj != Py_None && !PyUnicode_FSConverter(path_obj, &path_b)) return NULL;
  if (need_sampler(m) < 0) {
    Py_XDECREF(path_b);
    return NULL;
  }
  char written[4096];
  const char *path = path_b ? PyBytes_AsString(path_b) : NULL;
  int rc;
  Py_BEGIN_ALLOW_THREADS
  rc = ta_bind_sampler_dump(path, kind, written, sizeof written);
  Py_END_ALLOW_THREADS
  PyObject *r = NULL;
  if (rc == 0) {
    r = PyUnicode_DecodeFSDefault(written);
  } else if (rc == EINVAL && kind != TRIMALLOC_PROF_LIVE && kind != TRIMALLOC_PROF_PEAK) {
    PyErr_Format(PyExc_ValueError, "kind must be live or peak, not %d", kind);
  } else {
    errno = rc;
    if (path_b) PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
    else PyErr_SetFromErrno(PyExc_OSError);
  }
  Py_XDECREF(path_b);
  return r;
}

static PyObject *py_prof_reset_peak(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  ta_bind_sampler_reset_peak();
  Py_RETURN_NONE;
}

/* _prof_set_tag(str or None): this thread's tag (the core copies it, at most
 * 63 bytes). A no-op when there is no profiler. */
static PyObject *py_prof_set_tag(PyObject *m, PyObject *arg) {
  (void)m;
  if (arg == Py_None) {
    ta_bind_sampler_set_tag(NULL);
    Py_RETURN_NONE;
  }
  if (!PyUnicode_Check(arg)) {
    PyErr_Format(PyExc_TypeError, "tag must be a str or None, not %R", arg);
    return NULL;
  }
  PyObject *b = PyUnicode_AsUTF8String(arg);
  if (!b) return NULL;
  ta_bind_sampler_set_tag(PyBytes_AsString(b));
  Py_DECREF(b);
  Py_RETURN_NONE;
}

/* _prof_frames_now(max=64, released=0) -> [(name, file, line), ...], leaf
 * first: what the profiler's frames hook reports on this thread now (the
 * caller of this function first). released=1: called with the GIL released;
 * released=2: called on a new native thread, returns how many frames it got.
 * For tests of the hook without a sample. */
static void *hook_thread(void *arg) {
  int *n = arg;
  uint64_t keys[64];
  int32_t lines[64];
  *n = ta_py_frames_hook(keys, lines, 64);
  return NULL;
}

static PyObject *py_prof_frames_now(PyObject *m, PyObject *args) {
  (void)m;
  int max = 64, released = 0;
  if (!PyArg_ParseTuple(args, "|ii:_prof_frames_now", &max, &released)) return NULL;
  if (max < 1 || max > 1024) {
    PyErr_Format(PyExc_ValueError, "max must be 1..1024, not %d", max);
    return NULL;
  }
  uint64_t keys[1024];
  int32_t lines[1024];
  int n = 0;
  if (released == 1) { /* this thread, with the GIL released (as in a blocking C call) */
    Py_BEGIN_ALLOW_THREADS
    n = ta_py_frames_hook(keys, lines, max);
    Py_END_ALLOW_THREADS
  } else if (released == 2) { /* a thread Python never saw */
    pthread_t th;
    int err;
    Py_BEGIN_ALLOW_THREADS
    err = pthread_create(&th, NULL, hook_thread, &n);
    if (err == 0) pthread_join(th, NULL);
    Py_END_ALLOW_THREADS
    if (err) {
      errno = err;
      return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(n); /* its keys are not this thread's to describe */
  } else {
    n = ta_py_frames_hook(keys, lines, max);
  }
  PyObject *list = PyList_New(0);
  for (int i = 0; list && i < n; i++) {
    char name[256], file[512];
    if (ta_py_frames_describe(keys[i], name, sizeof name, file, sizeof file) != 0)
      snprintf(name, sizeof name, "[unknown key 0x%llx]", (unsigned long long)keys[i]), file[0] = 0;
    PyObject *t = Py_BuildValue("(ssi)", name, file, (int)lines[i]);
    if (!t || PyList_Append(list, t) < 0) Py_CLEAR(list);
    Py_XDECREF(t);
  }
  return list;
}

/* _prof_frames_cost(n) -> (frames, ns per call): the hook run n times on
 * this thread (the cost a sample pays for its Python frames, at this depth). */
static PyObject *py_prof_frames_cost(PyObject *m, PyObject *arg) {
  (void)m;
  long n = PyLong_AsLong(arg);
  if (n == -1 && PyErr_Occurred()) return NULL;
  if (n < 1) {
    PyErr_Format(PyExc_ValueError, "n must be >= 1, not %R", arg);
    return NULL;
  }
  uint64_t keys[128];
  int32_t lines[128];
  int got = 0;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  for (long i = 0; i < n; i++) got = ta_py_frames_hook(keys, lines, 128);
  clock_gettime(CLOCK_MONOTONIC, &b);
  double ns = ((double)(b.tv_sec - a.tv_sec) * 1e9 + (double)(b.tv_nsec - a.tv_nsec)) / (double)n;
  return Py_BuildValue("(id)", got, ns);
}

static PyObject *py_prof_frames_status(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyUnicode_FromString(ta_py_frames_status());
}

/* ---- Trimmer: one hook's policy (ta_bind_trimmer_t) ---- */
typedef struct {
  PyObject_HEAD
  ta_bind_trimmer_t t;
} trimmer_object;

/* None -> -1, else a byte count >= 0 (clamped to INT64_MAX). */
static int parse_bytes_or_none(PyObject *obj, const char *what, int64_t *out) {
  if (obj == Py_None) {
    *out = -1;
    return 0;
  }
  uint64_t v;
  if (PyBool_Check(obj) || !PyLong_Check(obj)) {
    PyErr_Format(PyExc_TypeError, "%s must be an int (bytes) or None, not %R", what, obj);
    return -1;
  }
  if (parse_bytes(obj, what, &v) < 0) return -1;
  *out = v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
  return 0;
}

static PyObject *trimmer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"every", "min_free", "min_interval", NULL};
  PyObject *every_obj = Py_None, *free_obj = NULL, *interval_obj = NULL;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OOO:Trimmer", kwlist, &every_obj, &free_obj,
                                   &interval_obj))
    return NULL;
  uint64_t every = 0;
  int64_t min_free = 0;
  double interval = 1.0;
  if (every_obj != Py_None) {
    if (PyBool_Check(every_obj) || !PyLong_Check(every_obj)) {
      PyErr_Format(PyExc_TypeError, "every must be an int or None, not %R", every_obj);
      return NULL;
    }
    long long e = PyLong_AsLongLong(every_obj);
    if (e == -1 && PyErr_Occurred()) return NULL;
    if (e < 1) {
      PyErr_Format(PyExc_ValueError, "every must be >= 1 or None, not %R", every_obj);
      return NULL;
    }
    every = (uint64_t)e;
  }
  if (free_obj && parse_bytes_or_none(free_obj, "min_free", &min_free) < 0) return NULL;
  if (interval_obj && parse_interval(interval_obj, "min_interval", &interval) < 0) return NULL;
  trimmer_object *self = (trimmer_object *)PyType_GenericAlloc(type, 0);
  if (!self) return NULL;
  if (ta_bind_trimmer_init(&self->t, every, min_free, interval) != 0) {
    Py_DECREF(self);
    PyErr_SetString(PyExc_ValueError, "every and min_free are both None: nothing would ever trim");
    return NULL;
  }
  return (PyObject *)self;
}

static void trimmer_dealloc(PyObject *self) {
  PyTypeObject *tp = Py_TYPE(self);
  freefunc f = (freefunc)PyType_GetSlot(tp, Py_tp_free);
  f(self);
  Py_DECREF(tp);
}

/* event() -> bytes released, or None. Decided with the GIL (a few atomics,
 * at most one clock read); only a trim releases it. */
static PyObject *trimmer_event(PyObject *self, PyObject *unused) {
  (void)unused;
  ta_bind_trimmer_t *t = &((trimmer_object *)self)->t;
  int64_t released = -1;
  if (ta_bind_trimmer_decide(t, NULL)) {
    Py_BEGIN_ALLOW_THREADS
    released = ta_bind_trimmer_run(t, NULL);
    Py_END_ALLOW_THREADS
  }
  if (released < 0) Py_RETURN_NONE;
  return PyLong_FromLongLong(released);
}

/* decide() -> bool: counts one event and says whether a trim is due now
 * (a few atomics, at most one clock read; a skip for min_interval schedules
 * the deferred trim). For a caller that trims elsewhere: an event loop
 * decides on the loop and calls run() in an executor thread. */
static PyObject *trimmer_decide(PyObject *self, PyObject *unused) {
  (void)unused;
  return PyBool_FromLong(ta_bind_trimmer_decide(&((trimmer_object *)self)->t, NULL));
}

/* run() -> bytes released, or None when coalesced into a running trim: the
 * trim decide() asked for, counted in this trimmer, without the GIL. */
static PyObject *trimmer_run(PyObject *self, PyObject *unused) {
  (void)unused;
  ta_bind_trimmer_t *t = &((trimmer_object *)self)->t;
  int64_t released;
  Py_BEGIN_ALLOW_THREADS
  released = ta_bind_trimmer_run(t, NULL);
  Py_END_ALLOW_THREADS
  if (released < 0) Py_RETURN_NONE;
  return PyLong_FromLongLong(released);
}

static PyObject *trimmer_stats(PyObject *self, PyObject *unused) {
  (void)unused;
  ta_bind_trimmer_t *t = &((trimmer_object *)self)->t;
  return Py_BuildValue("{sKsKsKsKsK}", "events", (unsigned long long)atomic_load(&t->events),
                       "trims", (unsigned long long)atomic_load(&t->trims), "skipped",
                       (unsigned long long)atomic_load(&t->skipped), "coalesced",
                       (unsigned long long)atomic_load(&t->coalesced), "trimmed_bytes",
                       (unsigned long long)atomic_load(&t->trimmed_bytes));
}

static PyObject *trimmer_get_every(PyObject *self, void *unused) {
  (void)unused;
  ta_bind_trimmer_t *t = &((trimmer_object *)self)->t;
  if (!t->every) Py_RETURN_NONE;
  return PyLong_FromUnsignedLongLong(t->every);
}

static PyObject *trimmer_get_min_free(PyObject *self, void *unused) {
  (void)unused;
  ta_bind_trimmer_t *t = &((trimmer_object *)self)->t;
  if (t->min_free < 0) Py_RETURN_NONE;
  return PyLong_FromLongLong(t->min_free);
}

static PyObject *trimmer_get_min_interval(PyObject *self, void *unused) {
  (void)unused;
  return PyFloat_FromDouble(((trimmer_object *)self)->t.min_interval);
}

static PyMethodDef trimmer_methods[] = {
    {"event", trimmer_event, METH_NOARGS,
     "event() -> bytes released, or None: one GC, job or request ended"},
    {"decide", trimmer_decide, METH_NOARGS,
     "decide() -> bool: count one event; whether a trim is due now (then call run())"},
    {"run", trimmer_run, METH_NOARGS,
     "run() -> bytes released, or None (coalesced): the trim decide() asked for, without the GIL"},
    {"stats", trimmer_stats, METH_NOARGS,
     "stats() -> {events, trims, skipped, coalesced, trimmed_bytes}"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef trimmer_getset[] = {
    {"every", trimmer_get_every, NULL, "trim every this many events (None: off)", NULL},
    {"min_free", trimmer_get_min_free, NULL, "trim when this many bytes are free (None: off)", NULL},
    {"min_interval", trimmer_get_min_interval, NULL, "seconds between trims, at least", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot trimmer_slots[] = {
    {Py_tp_new, (void *)trimmer_new},
    {Py_tp_dealloc, (void *)trimmer_dealloc},
    {Py_tp_methods, trimmer_methods},
    {Py_tp_getset, trimmer_getset},
    {Py_tp_doc, (void *)"Trimmer(every=None, min_free=0, min_interval=1.0): one hook's trim policy "
                        "(core/bind, the same as the Ruby gem's Trimalloc::Trimmer)."},
    {0, NULL},
};

static PyType_Spec trimmer_spec = {
    "trimalloc._trimalloc.Trimmer",
    sizeof(trimmer_object),
    0,
    Py_TPFLAGS_DEFAULT,
    trimmer_slots,
};

/* (name, type, unit, doc) for every field of the core's list, in order. */
static PyObject *make_fields(void) {
  PyObject *t = PyTuple_New(TA_NFIELDS);
  if (!t) return NULL;
  Py_ssize_t i = 0;
#define TA_FIELD_TUPLE(type, name, unit, doc)                                                  \
  {                                                                                            \
    PyObject *f = Py_BuildValue("(ssss)", #name, #type[0] == 'd' ? "float" : "int", unit, doc); \
    if (!f) goto fail;                                                                         \
    PyTuple_SetItem(t, i++, f);                                                                \
  }
  TRIMALLOC_STATS_FIELDS(TA_FIELD_TUPLE)
#undef TA_FIELD_TUPLE
  return t;
fail:
  Py_DECREF(t);
  return NULL;
}

static int add_object(PyObject *m, const char *name, PyObject *value) {
  if (!value) return -1;
  if (PyModule_AddObject(m, name, value) < 0) { /* steals only on success */
    Py_DECREF(value);
    return -1;
  }
  return 0;
}

static int module_exec(PyObject *m) {
  module_state *st = get_state(m);
  ta_bind_init();
  ta_py_frames_install(); /* no Python frames in profiles when it cannot: not an import error */
  st->error = PyErr_NewExceptionWithDoc(
      "trimalloc.Error", "An operation of the allocator failed (not a wrong argument).",
      PyExc_RuntimeError, NULL);
  if (!st->error) return -1;
  Py_INCREF(st->error);
  if (add_object(m, "Error", st->error) < 0) return -1;
  if (add_object(m, "VERSION", PyUnicode_FromString(TRIMALLOC_VERSION)) < 0) return -1;
  if (add_object(m, "STATS_VERSION", PyLong_FromLong(TRIMALLOC_STATS_VERSION)) < 0) return -1;
  if (add_object(m, "FIELDS", make_fields()) < 0) return -1;
  if (add_object(m, "GUARD_ENV", PyUnicode_FromString(TA_BIND_GUARD_ENV)) < 0) return -1;
  st->trimmer_type = PyType_FromSpec(&trimmer_spec);
  if (!st->trimmer_type) return -1;
  Py_INCREF(st->trimmer_type);
  if (add_object(m, "Trimmer", st->trimmer_type) < 0) return -1;
  return 0;
}

static int module_traverse(PyObject *m, visitproc visit, void *arg) {
  module_state *st = get_state(m);
  if (st) {
    Py_VISIT(st->error);
    Py_VISIT(st->trimmer_type);
  }
  return 0;
}

static int module_clear(PyObject *m) {
  module_state *st = get_state(m);
  if (st) {
    Py_CLEAR(st->error);
    Py_CLEAR(st->trimmer_type);
  }
  return 0;
}

static void module_free(void *m) { module_clear((PyObject *)m); }

/* ---- profile readers (core/bind/bind_prof*.c) ---- */

/* A reader's failure: ValueError for the file's contents or a bad argument
 * (errno EINVAL), OSError (FileNotFoundError, ...) when a file cannot be read
 * or written; the message names the file. */
static PyObject *prof_error(const char *err) {
  int e = errno;
  if (e == EINVAL || e == 0) {
    PyErr_SetString(PyExc_ValueError, err);
  } else if (e == ENOMEM) {
    PyErr_NoMemory();
  } else {
    PyObject *args = Py_BuildValue("(is)", e, err);
    if (args) {
      PyErr_SetObject(PyExc_OSError, args);
      Py_DECREF(args);
    }
  }
  return NULL;
}

/* by: a str or None (*keep holds its UTF-8 bytes: the caller releases
 * it); n: an int >= 0 (0: all). */
static int prof_args(PyObject *by, const char **by_s, PyObject **keep, PyObject *n_obj, size_t *n) {
  *by_s = NULL;
  *keep = NULL;
  if (by != Py_None) {
    if (!PyUnicode_Check(by)) {
      PyErr_Format(PyExc_TypeError, "the sample type must be a str, not %R", by);
      return -1;
    }
    if (!(*keep = PyUnicode_AsUTF8String(by)) || !(*by_s = PyBytes_AsString(*keep))) return -1;
  }
  if (!n_obj) {
    *n = 0;
    return 0;
  }
  if (PyBool_Check(n_obj) || !PyLong_Check(n_obj)) {
    PyErr_Format(PyExc_TypeError, "n must be an int, not %R", n_obj);
    return -1;
  }
  long long v = PyLong_AsLongLong(n_obj);
  if (v == -1 && PyErr_Occurred()) return -1;
  if (v < 0) {
    PyErr_Format(PyExc_ValueError, "n must be >= 0 (0: all), not %R", n_obj);
    return -1;
  }
  *n = (size_t)v;
  return 0;
}

static PyObject *str_or_none(const char *s) {
  if (!s) Py_RETURN_NONE;
  return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

typedef struct {
  PyObject *list;
  int failed;
} top_rows_t;

static void top_row(void *arg, const ta_bind_prof_row_t *r) {
  top_rows_t *t = arg;
  if (t->failed) return;
  PyObject *d = PyDict_New(), *frames = PyList_New((Py_ssize_t)r->nframes);
  if (!d || !frames) goto fail;
  for (size_t i = 0; i < r->nframes; i++) {
    PyObject *f = str_or_none(r->frames[i]);
    if (!f) goto fail;
    PyList_SetItem(frames, (Py_ssize_t)i, f); /* steals */
  }
  if (set_item(d, "inuse_space", PyLong_FromLongLong(r->inuse_space)) ||
      set_item(d, "inuse_objects", PyLong_FromLongLong(r->inuse_objects)) ||
      set_item(d, "alloc_space", PyLong_FromLongLong(r->alloc_space)) ||
      set_item(d, "alloc_objects", PyLong_FromLongLong(r->alloc_objects)) || PyDict_SetItemString(d, "frames", frames) ||
      set_item(d, "tag", str_or_none(r->tag)) || PyList_Append(t->list, d))
    goto fail;
  Py_DECREF(frames);
  Py_DECREF(d);
  return;
fail:
  Py_XDECREF(frames);
  Py_XDECREF(d);
  t->failed = 1;
}

/* _prof_top(path, by=None, n=10) -> [{inuse_space, inuse_objects, alloc_space,
 * alloc_objects, frames (leaf first), tag}], the call paths with the most `by`. */
static PyObject *py_prof_top(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *path = NULL, *by = Py_None, *n_obj = NULL;
  if (!PyArg_ParseTuple(args, "O&|OO:_prof_top", PyUnicode_FSConverter, &path, &by, &n_obj)) return NULL;
  const char *by_s;
  size_t n;
  PyObject *keep = NULL;
  top_rows_t t = {PyList_New(0), 0};
  if (!t.list || prof_args(by, &by_s, &keep, n_obj, &n)) {
    Py_XDECREF(t.list);
    Py_XDECREF(keep);
    Py_DECREF(path);
    return NULL;
  }
  if (!n_obj) n = 10;
  char err[1024];
  int rc = ta_bind_prof_top(PyBytes_AsString(path), by_s, n, top_row, &t, err, sizeof err);
  int e = errno;
  Py_DECREF(path);
  Py_XDECREF(keep);
  if (rc || t.failed) {
    Py_DECREF(t.list);
    if (t.failed) return NULL; /* the Python error set while building a row */
    errno = e;
    return prof_error(err);
  }
  return t.list;
}

/* _prof_top_text(path, by=None, n=10) -> the `trimalloc top` table (str). */
static PyObject *py_prof_top_text(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *path = NULL, *by = Py_None, *n_obj = NULL;
  if (!PyArg_ParseTuple(args, "O&|OO:_prof_top_text", PyUnicode_FSConverter, &path, &by, &n_obj)) return NULL;
  const char *by_s;
  size_t n;
  PyObject *keep = NULL;
  if (prof_args(by, &by_s, &keep, n_obj, &n)) {
    Py_XDECREF(keep);
    Py_DECREF(path);
    return NULL;
  }
  if (!n_obj) n = 10;
  char err[1024], *out = NULL;
  int rc, e;
  Py_BEGIN_ALLOW_THREADS;
  rc = ta_bind_prof_top_str(PyBytes_AsString(path), by_s, n, &out, err, sizeof err);
  e = errno;
  Py_END_ALLOW_THREADS;
  Py_DECREF(path);
  Py_XDECREF(keep);
  if (rc) {
    errno = e;
    return prof_error(err);
  }
  PyObject *r = PyUnicode_DecodeUTF8(out, (Py_ssize_t)strlen(out), "replace");
  free(out);
  return r;
}

/* _prof_flame(path, out, type=None, collapsed=False): writes the SVG flame
 * graph (or collapsed stacks) of sample type `type` to out ("-": stdout). */
static PyObject *py_prof_flame(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *path = NULL, *out = NULL, *type = Py_None;
  int collapsed = 0;
  if (!PyArg_ParseTuple(args, "O&O&|Op:_prof_flame", PyUnicode_FSConverter, &path, PyUnicode_FSConverter, &out,
                        &type, &collapsed))
    return NULL;
  const char *type_s;
  size_t unused;
  PyObject *result = NULL, *keep = NULL;
  if (prof_args(type, &type_s, &keep, NULL, &unused) == 0) {
    char err[1024];
    int rc, e;
    Py_BEGIN_ALLOW_THREADS;
    rc = ta_bind_prof_flame(PyBytes_AsString(path), type_s, collapsed, PyBytes_AsString(out), err, sizeof err);
    e = errno;
    Py_END_ALLOW_THREADS;
    if (rc) {
      errno = e;
      prof_error(err);
    } else {
      result = Py_None;
      Py_INCREF(result);
    }
  }
  Py_XDECREF(keep);
  Py_DECREF(path);
  Py_DECREF(out);
  return result;
}

static PyMethodDef methods[] = {
    {"active", py_active, METH_NOARGS, "active() -> bool: is the process's malloc trimalloc's?"},
    {"backend", py_backend, METH_NOARGS, "backend() -> 'trimalloc' or 'glibc'"},
    {"loaded_path", py_loaded_path, METH_NOARGS,
     "loaded_path() -> path of the loaded core, or None when it is not active"},
    {"core_version", py_core_version, METH_NOARGS,
     "core_version() -> the loaded core's version, or None when it is not active"},
    {"purger_state", py_purger_state, METH_NOARGS,
     "purger_state() -> the background purger in this process, in words (from the core)"},
    {"trim", py_trim, METH_NOARGS, "trim() -> bytes returned to the OS now"},
    {"trim_if_due", (PyCFunction)(void (*)(void))py_trim_if_due, METH_VARARGS | METH_KEYWORDS,
     "trim_if_due(min_interval, min_free=0) -> bytes released, or None when skipped"},
    {"free_bytes", py_free_bytes, METH_NOARGS,
     "free_bytes() -> bytes free but still resident in the allocator"},
    {"_advance_clock", py_advance_clock, METH_O,
     "_advance_clock(seconds): for tests, moves the rate limit's clock forward"},
    {"rss", py_rss, METH_NOARGS, "rss() -> the process's resident set size in bytes"},
    {"stats", py_stats, METH_NOARGS, "stats() -> dict of the fields this backend measures"},
    {"exec", (PyCFunction)(void (*)(void))py_exec, METH_VARARGS | METH_KEYWORDS,
     "exec(lib, argv, pythonmalloc=False, first=None): exec argv with lib preloaded, searched "
     "in first, then PATH; raises OSError"},
    {"search_path", py_search_path, METH_VARARGS,
     "search_path(first=None) -> the directories exec searches, ':'-separated"},
    {"profile_env", py_profile_env, METH_VARARGS,
     "profile_env(dir, cmd): makes dir, sets TRIMALLOC_PROF=1 and TRIMALLOC_PROF_PREFIX=dir/<basename "
     "of cmd> (`trimalloc run --profile`); raises OSError"},
    {"which", py_which, METH_VARARGS,
     "which(cmd, path) -> the file exec would run for cmd with search path path, or None"},
    {"preload", (PyCFunction)(void (*)(void))py_preload, METH_VARARGS | METH_KEYWORDS,
     "preload(lib, pythonmalloc=False, argv=None, script=None, title_changed=False) -> "
     "(code, reason): re-execs argv with lib preloaded, or says why not (0: already active); "
     "raises OSError when the re-exec fails"},
    {"forked_child", py_forked_child, METH_NOARGS,
     "forked_child() -> is this process a fork of one running the same program?"},
    {"policy_stats", py_policy_stats, METH_NOARGS,
     "policy_stats() -> {deferred, coalesced, free_reads}: the trim policy's counters"},
    {"free_source", py_free_source, METH_NOARGS,
     "free_source() -> where free_bytes() comes from: dirty, resident, mallinfo2, mallinfo, unknown"},
    {"_prof_available", py_prof_available, METH_NOARGS,
     "_prof_available() -> None when the heap profiler is there, else why not"},
    {"_prof_start", py_prof_start, METH_O, "_prof_start(interval): 0 keeps the current one"},
    {"_prof_stop", py_prof_stop, METH_NOARGS, "_prof_stop()"},
    {"_prof_interval", py_prof_interval, METH_NOARGS, "_prof_interval() -> bytes, 0 while off"},
    {"_prof_dump", py_prof_dump, METH_VARARGS,
     "_prof_dump(path, kind) -> the path written (kind 0 live, 1 peak)"},
    {"_prof_reset_peak", py_prof_reset_peak, METH_NOARGS, "_prof_reset_peak()"},
    {"_prof_set_tag", py_prof_set_tag, METH_O, "_prof_set_tag(tag): this thread's tag, None clears"},
    {"_prof_frames_now", py_prof_frames_now, METH_VARARGS,
     "_prof_frames_now(max=64) -> [(name, file, line)]: the profiler's Python frames here, leaf first"},
    {"_prof_frames_cost", py_prof_frames_cost, METH_O,
     "_prof_frames_cost(n) -> (frames, ns per call): the frames hook run n times here"},
    {"_prof_frames_status", py_prof_frames_status, METH_NOARGS,
     "_prof_frames_status() -> whether the Python frames hook is registered, and why not"},
    {"_prof_top", py_prof_top, METH_VARARGS,
     "_prof_top(path, by=None, n=10) -> list of dicts (inuse_space, inuse_objects, alloc_space, "
     "alloc_objects, frames leaf first, tag): the profile's call paths with the most `by`; n 0: all"},
    {"_prof_top_text", py_prof_top_text, METH_VARARGS,
     "_prof_top_text(path, by=None, n=10) -> str: the `trimalloc top` table"},
    {"_prof_flame", py_prof_flame, METH_VARARGS,
     "_prof_flame(path, out, type=None, collapsed=False): writes an SVG flame graph (or collapsed "
     "stacks) of the profile to out ('-': stdout)"},
    {"_test_gate", py_test_gate, METH_O, "_test_gate(on): for tests (see binding.h)"},
    {"_test_gate_open", py_test_gate_open, METH_NOARGS, "_test_gate_open(): for tests"},
    {"_test_gate_state", py_test_gate_state, METH_NOARGS, "_test_gate_state() -> int: for tests"},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, (void *)module_exec},
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "trimalloc._trimalloc",
    "The trimalloc binding: trims, stats, launcher (see core/bind/binding.h).",
    sizeof(module_state),
    methods,
    slots,
    module_traverse,
    module_clear,
    module_free,
};

/* Exported explicitly: we build with -fvisibility=hidden, and before 3.9
 * PyMODINIT_FUNC did not carry a visibility attribute. */
__attribute__((visibility("default"))) PyMODINIT_FUNC PyInit__trimalloc(void) {
  return PyModuleDef_Init(&moduledef);
}
