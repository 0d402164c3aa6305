/* trimalloc._trimalloc: which allocator answers, trimming it, its stats, and
 * the trim policy's process-wide counters (core/bind/bind_backend.c,
 * bind_policy.c). */
#include "_ext.h"

static PyObject *str_or_none(const char *s) {
  if (!s) Py_RETURN_NONE;
  return PyUnicode_FromString(s);
}

static PyObject *path_or_none(const char *s) {
  if (!s) Py_RETURN_NONE;
  return PyUnicode_DecodeFSDefault(s);
}

static PyObject *none(void) { Py_RETURN_NONE; }

/* core/bind's argument-free calls (TA_BIND_CALLS, binding.h): a wrapper each,
 * converting the result by its kind. */
#define TA_PY_bool(e) PyBool_FromLong(e)
#define TA_PY_name(e) PyUnicode_FromString(e)
#define TA_PY_str(e) str_or_none(e)
#define TA_PY_path(e) path_or_none(e)
#define TA_PY_u64(e) PyLong_FromUnsignedLongLong(e)
#define TA_PY_int(e) PyLong_FromLong(e)
#define TA_PY_none(e) ((e), none())
#define TA_PY_CALL(name, kind, expr, where, doc)                       \
  static PyObject *call_##name(PyObject *m, PyObject *unused) {       \
    (void)m, (void)unused;                                             \
    return TA_PY_##kind(expr);                                         \
  }
TA_BIND_CALLS(TA_PY_CALL)
#define TA_PY_NAME_api(name) #name
#define TA_PY_NAME_internal(name) #name
#define TA_PY_NAME_test(name) "_" #name
#define TA_PY_NAME_profile(name) "_prof_" #name
#define TA_PY_DEF(name, kind, expr, where, doc) {TA_PY_NAME_##where(name), call_##name, METH_NOARGS, doc},

static PyObject *py_trim(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  ta_bind_job_t j = {.kind = TA_JOB_TRIM};
  ta_py_job(&j);
  return PyLong_FromUnsignedLongLong((uint64_t)j.released);
}

/* trim_if_due(min_interval, min_free=DEFAULTS['trimmer']['min_free']): the callers (trimalloc._hooks)
 * check the arguments; this converts them. */
static PyObject *py_trim_if_due(PyObject *m, PyObject *args, PyObject *kwargs) {
  (void)m;
  static char *kwlist[] = {"min_interval", "min_free", NULL};
  double interval;
  PyObject *free_obj = NULL;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "d|O:trim_if_due", kwlist, &interval, &free_obj))
    return NULL;
  uint64_t min_free = free_obj ? PyLong_AsUnsignedLongLong(free_obj)
                               : (uint64_t)ta_bind_defaults_for("trimmer")->min_free;
  if (PyErr_Occurred()) return NULL;
  /* decided with the GIL (a clock read), trimmed without it */
  if (!ta_bind_due(interval, min_free, NULL)) Py_RETURN_NONE;
  return ta_py_run_trim(NULL);
}

/* args, a tuple of n numbers, as doubles into a[] (TA_BIND_TEST_CALLS). */
static int numbers(PyObject *args, Py_ssize_t n, double *a, const char *name) {
  if (PyTuple_Size(args) != n) {
    PyErr_Format(PyExc_TypeError, "_%s() takes %zd arguments (%zd given)", name, n, PyTuple_Size(args));
    return -1;
  }
  for (Py_ssize_t i = 0; i < n; i++)
    if ((a[i] = PyFloat_AsDouble(PyTuple_GetItem(args, i))) == -1.0 && PyErr_Occurred()) return -1;
  return 0;
}

#define TA_PY_TEST(name, n, expr, doc)                                 \
  static PyObject *test_##name(PyObject *m, PyObject *args) {          \
    (void)m;                                                           \
    double a[TA_BIND_TEST_MAXARGS];                                    \
    if (numbers(args, n, a, #name) < 0) return NULL;                   \
    expr;                                                              \
    Py_RETURN_NONE;                                                    \
  }
TA_BIND_TEST_CALLS(TA_PY_TEST)
#define TA_PY_TEST_DEF(name, n, expr, doc) {"_" #name, test_##name, METH_VARARGS, "_" #name doc},

static PyObject *py_stats(PyObject *m, PyObject *unused) {
  (void)unused;
  ta_bind_field_t fields[TA_NFIELDS];
  if (ta_bind_stats(fields) != 0) {
    PyErr_SetString(ta_py_state(m)->error, "the allocator could not report its stats");
    return NULL;
  }
  PyObject *d = ta_py_fields_dict(fields, TA_NFIELDS);
  if (d && ta_py_set_item(d, "backend", PyUnicode_FromString(ta_bind_backend_name())) < 0) Py_CLEAR(d);
  return d;
}

static PyObject *py_policy_stats(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  ta_bind_field_t f[TA_BIND_POLICY_NFIELDS];
  return ta_py_fields_dict(f, ta_bind_policy_fields(f));
}

PyMethodDef ta_py_backend_methods[] = {
    TA_BIND_CALLS(TA_PY_DEF)
    {"trim", py_trim, METH_NOARGS, "trim() -> bytes returned to the OS now"},
    {"trim_if_due", (PyCFunction)(void (*)(void))py_trim_if_due, METH_VARARGS | METH_KEYWORDS,
     "trim_if_due(min_interval, min_free=DEFAULTS['trimmer']['min_free']) -> bytes released, or None "
     "when skipped"},
    TA_BIND_TEST_CALLS(TA_PY_TEST_DEF)
    {"stats", py_stats, METH_NOARGS, "stats() -> dict of the fields this backend measures"},
    {"policy_stats", py_policy_stats, METH_NOARGS,
     "policy_stats() -> {pending, busy, deferred, coalesced, free_reads, refault_skips, idle_trims, "
     "fault_ns}: the trim policy's counters and the fault cost its refault budget uses"},
    {NULL, NULL, 0, NULL},
};
