/* trimalloc._trimalloc: the profile readers (core/bind/bind_prof*.c,
 * bind_flame.c): the top call paths, the `trimalloc top` table, flame graphs.
 * trimalloc/profile.py and the CLI call these, and check the arguments:
 * this converts them (n < 0 has no size_t). */
#include "_ext.h" /* first: Python.h sets the feature macros */

#include <errno.h>
#include <string.h>

/* A reader's failure: ValueError for the file's contents or a bad argument
 * (errno EINVAL), OSError (FileNotFoundError, ...) when a file cannot be read
 * or written; the message names the file. */
static PyObject *prof_error(int e, const char *err) {
  if (ta_bind_error_kind(e) == TA_ERR_ARGUMENT) {
    PyErr_SetString(PyExc_ValueError, err);
  } else if (ta_bind_error_kind(e) == TA_ERR_MEMORY) {
    PyErr_NoMemory();
  } else {
    /* the instance, as PyErr_SetFromErrno makes it: OSError(errno, ...) is
     * a FileNotFoundError for ENOENT, but an error set as (OSError, args)
     * stays an OSError for `except FileNotFoundError` until it is
     * normalized (Python 3.8-3.10: the handler missed it) */
    PyObject *exc = PyObject_CallFunction(PyExc_OSError, "is", e, err);
    if (exc) {
      PyErr_SetObject((PyObject *)Py_TYPE(exc), exc);
      Py_DECREF(exc);
    }
  }
  return NULL;
}

static PyObject *str_or_none(const char *s) {
  if (!s) Py_RETURN_NONE;
  return PyUnicode_DecodeUTF8(s, (Py_ssize_t)strlen(s), "replace");
}

/* (path, by=None, n=10) of _prof_top and _prof_top_text, converted: the
 * callers (trimalloc.profile, the CLI) check them; by: a str or None (a
 * type the reader does not know: its ValueError), n >= 0 (0: all). 0, or -1
 * with an exception set and nothing held. */
static int top_args(PyObject *args, const char *fmt, PyObject **path, const char **by, size_t *n) {
  Py_ssize_t rows = 10;
  *by = NULL;
  if (!PyArg_ParseTuple(args, fmt, PyUnicode_FSConverter, path, by, &rows)) return -1;
  if (rows < 0) {
    Py_DECREF(*path);
    PyErr_Format(PyExc_ValueError, TA_BIND_MSG_ROWS ", not %zd", rows);
    return -1;
  }
  *n = (size_t)rows;
  return 0;
}

typedef struct {
  PyObject *list;
  int failed;
} top_rows_t;

static void top_row(void *arg, const ta_bind_prof_row_t *r) {
  top_rows_t *t = arg;
  if (t->failed) return;
  ta_bind_field_t f[TA_BIND_PROF_ROW_NFIELDS];
  PyObject *d = ta_py_fields_dict(f, ta_bind_prof_row_fields(r, f)), *frames = PyList_New((Py_ssize_t)r->nframes);
  if (!d || !frames) goto fail;
  for (size_t i = 0; i < r->nframes; i++) {
    PyObject *f = str_or_none(r->frames[i]);
    if (!f) goto fail;
    PyList_SetItem(frames, (Py_ssize_t)i, f); /* steals */
  }
  if (PyDict_SetItemString(d, "frames", frames) || ta_py_set_item(d, "tag", str_or_none(r->tag)) ||
      PyList_Append(t->list, d))
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
  PyObject *path;
  const char *by_s;
  size_t n;
  if (top_args(args, "O&|zn:_prof_top", &path, &by_s, &n)) return NULL;
  top_rows_t t = {PyList_New(0), 0};
  if (!t.list) {
    Py_DECREF(path);
    return NULL;
  }
  char err[1024];
  int rc = ta_bind_prof_top(PyBytes_AsString(path), by_s, n, top_row, &t, err, sizeof err);
  int e = errno;
  Py_DECREF(path);
  if (rc || t.failed) {
    Py_DECREF(t.list);
    if (t.failed) return NULL; /* the Python error set while building a row */
    return prof_error(e, err);
  }
  return t.list;
}

/* _prof_top_text(path, by=None, n=10) -> the `trimalloc top` table (str). */
static PyObject *py_prof_top_text(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *path;
  const char *by_s;
  size_t n;
  if (top_args(args, "O&|zn:_prof_top_text", &path, &by_s, &n)) return NULL;
  ta_bind_job_t j = {.kind = TA_JOB_TOP_TEXT, .path = PyBytes_AsString(path), .type = by_s, .n = n};
  ta_py_job(&j);
  Py_DECREF(path);
  if (j.rc) return prof_error(j.err, j.msg);
  PyObject *r = PyUnicode_DecodeUTF8(j.text, (Py_ssize_t)strlen(j.text), "replace");
  free(j.text);
  return r;
}

/* _prof_flame(path, out, type=None, collapsed=False): writes the SVG flame
 * graph (or collapsed stacks) of sample type `type` to out ("-": stdout). */
static PyObject *py_prof_flame(PyObject *m, PyObject *args) {
  (void)m;
  PyObject *path = NULL, *out = NULL;
  const char *type = NULL; /* a str or None: the callers check it */
  int collapsed = 0;
  if (!PyArg_ParseTuple(args, "O&O&|zp:_prof_flame", PyUnicode_FSConverter, &path, PyUnicode_FSConverter, &out,
                        &type, &collapsed))
    return NULL;
  ta_bind_job_t j = {.kind = TA_JOB_FLAME, .path = PyBytes_AsString(path), .type = type, .out = PyBytes_AsString(out),
                     .collapsed = collapsed};
  ta_py_job(&j);
  Py_DECREF(path);
  Py_DECREF(out);
  if (j.rc) return prof_error(j.err, j.msg);
  Py_RETURN_NONE;
}
PyMethodDef ta_py_prof_read_methods[] = {
    {"_prof_top", py_prof_top, METH_VARARGS,
     "_prof_top(path, by=None, n=10) -> list of dicts (inuse_space, inuse_objects, alloc_space, "
     "alloc_objects, frames leaf first, tag): the profile's call paths with the most `by`; n 0: all"},
    {"_prof_top_text", py_prof_top_text, METH_VARARGS,
     "_prof_top_text(path, by=None, n=10) -> str: the `trimalloc top` table"},
    {"_prof_flame", py_prof_flame, METH_VARARGS,
     "_prof_flame(path, out, type=None, collapsed=False): writes an SVG flame graph (or collapsed "
     "stacks) of the profile to out ('-': stdout)"},
    {NULL, NULL, 0, NULL},
};
