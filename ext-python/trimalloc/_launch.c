/* trimalloc._trimalloc: the launcher and the preload re-exec
 * (core/bind/bind_launch.c): exec with the library preloaded, the search
 * path, `run --profile`, preload. */
#include "_ext.h" /* first: Python.h sets the feature macros */

#include <errno.h>
#include <string.h>

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

/* A malloc'ed path as a str (freed); NULL: MemoryError. */
static PyObject *take_path(char *p) {
  if (!p) return PyErr_NoMemory();
  PyObject *r = PyUnicode_DecodeFSDefault(p);
  free(p);
  return r;
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
  return take_path(p);
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
      PyErr_Format(PyExc_ValueError, "profile_env: " TA_BIND_MSG_PROFILE_ENV ", got %R and %R",
                   PyTuple_GetItem(args, 0), PyTuple_GetItem(args, 1));
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
  if (f || e == ENOMEM) return take_path(f);
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

PyMethodDef ta_py_launch_methods[] = {
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
    {NULL, NULL, 0, NULL},
};
