/* trimalloc._trimalloc: the core's heap profiler (core/bind/bind_sampler.c:
 * start, stop, dump, tags) and the tests' view of the Python frames hook
 * (_prof.c). trimalloc/profile.py checks the arguments and calls these.
 * _prof_interval and _prof_reset_peak are core/bind's argument-free calls
 * (TA_BIND_CALLS, _backend.c). */
#include "_ext.h" /* first: Python.h sets the feature macros */

#include <errno.h>

#include "_prof.h"

/* trimalloc.Error saying why there is no profiler, when there is none. */
static int need_sampler(PyObject *m) {
  if (ta_bind_sampler_available()) return 0;
  PyErr_SetString(ta_py_state(m)->error, ta_bind_sampler_unavailable());
  return -1;
}

static PyObject *py_prof_available(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  if (ta_bind_sampler_available()) Py_RETURN_NONE;
  return PyUnicode_FromString(ta_bind_sampler_unavailable());
}

/* None, or OSError for a profiler call's error code. */
static PyObject *none_or_oserror(int rc) {
  if (!rc) Py_RETURN_NONE;
  errno = rc;
  return PyErr_SetFromErrno(PyExc_OSError);
}

/* _prof_start(interval): 0 keeps the current interval. */
static PyObject *py_prof_start(PyObject *m, PyObject *arg) {
  unsigned long long interval = PyLong_AsUnsignedLongLong(arg);
  if (interval == (unsigned long long)-1 && PyErr_Occurred()) return NULL;
  if (need_sampler(m) < 0) return NULL;
  int rc = ta_bind_sampler_start((size_t)interval);
  if (rc == EINVAL) {
    PyErr_Format(PyExc_ValueError, TA_BIND_MSG_INTERVAL ", not %R", arg);
    return NULL;
  }
  return none_or_oserror(rc);
}

static PyObject *py_prof_stop(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return none_or_oserror(ta_bind_sampler_stop());
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
  ta_bind_job_t j = {.kind = TA_JOB_DUMP, .path = path_b ? PyBytes_AsString(path_b) : NULL, .dump_kind = kind};
  ta_py_job(&j);
  PyObject *r = NULL;
  if (j.rc == 0) {
    r = PyUnicode_DecodeFSDefault(j.msg);
  } else if (j.rc == EINVAL && kind != TRIMALLOC_PROF_LIVE && kind != TRIMALLOC_PROF_PEAK) {
    PyErr_Format(PyExc_ValueError, "kind must be live or peak, not %d", kind);
  } else {
    errno = j.rc;
    if (path_b) PyErr_SetFromErrnoWithFilenameObject(PyExc_OSError, path_obj);
    else PyErr_SetFromErrno(PyExc_OSError);
  }
  Py_XDECREF(path_b);
  return r;
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
    Py_BEGIN_ALLOW_THREADS
    n = ta_bind_frames_on_thread(ta_py_frames_hook, 64);
    Py_END_ALLOW_THREADS
    if (n < 0) {
      errno = -n;
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
  int got;
  double ns = ta_bind_frames_cost(ta_py_frames_hook, n, 128, &got);
  return Py_BuildValue("(id)", got, ns);
}

static PyObject *py_prof_frames_status(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyUnicode_FromString(ta_py_frames_status());
}
PyMethodDef ta_py_sampler_methods[] = {
    {"_prof_available", py_prof_available, METH_NOARGS,
     "_prof_available() -> None when the heap profiler is there, else why not"},
    {"_prof_start", py_prof_start, METH_O, "_prof_start(interval): 0 keeps the current one"},
    {"_prof_stop", py_prof_stop, METH_NOARGS, "_prof_stop()"},
    {"_prof_dump", py_prof_dump, METH_VARARGS,
     "_prof_dump(path, kind) -> the path written (kind 0 live, 1 peak)"},
    {"_prof_set_tag", py_prof_set_tag, METH_O, "_prof_set_tag(tag): this thread's tag, None clears"},
    {"_prof_frames_now", py_prof_frames_now, METH_VARARGS,
     "_prof_frames_now(max=64) -> [(name, file, line)]: the profiler's Python frames here, leaf first"},
    {"_prof_frames_cost", py_prof_frames_cost, METH_O,
     "_prof_frames_cost(n) -> (frames, ns per call): the frames hook run n times here"},
    {"_prof_frames_status", py_prof_frames_status, METH_NOARGS,
     "_prof_frames_status() -> whether the Python frames hook is registered, and why not"},
    {NULL, NULL, 0, NULL},
};
