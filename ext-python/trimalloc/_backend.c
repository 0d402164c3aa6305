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

/* fn(arg as a float); None. */
static PyObject *with_seconds(PyObject *arg, void (*fn)(double)) {
  double seconds = PyFloat_AsDouble(arg);
  if (seconds == -1.0 && PyErr_Occurred()) return NULL;
  fn(seconds);
  Py_RETURN_NONE;
}

static PyObject *py_advance_clock(PyObject *m, PyObject *arg) {
  (void)m;
  return with_seconds(arg, ta_bind_clock_advance);
}

static PyObject *py_advance_cpu(PyObject *m, PyObject *arg) {
  (void)m;
  return with_seconds(arg, ta_bind_cpu_advance);
}

/* _test_refault(fault_ns, free_bytes): 0 / -1 give back the measured ones. */
static PyObject *py_test_refault(PyObject *m, PyObject *args) {
  (void)m;
  double fault_ns;
  long long free_bytes;
  if (!PyArg_ParseTuple(args, "dL:_test_refault", &fault_ns, &free_bytes)) return NULL;
  ta_bind_test_fault_ns(fault_ns);
  ta_bind_test_free_bytes(free_bytes);
  Py_RETURN_NONE;
}

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

static PyObject *py_test_gate(PyObject *m, PyObject *arg) {
  (void)m;
  int on = PyObject_IsTrue(arg);
  if (on < 0) return NULL;
  ta_bind_test_gate(on);
  Py_RETURN_NONE;
}

PyMethodDef ta_py_backend_methods[] = {
    TA_BIND_CALLS(TA_PY_DEF)
    {"trim", py_trim, METH_NOARGS, "trim() -> bytes returned to the OS now"},
    {"trim_if_due", (PyCFunction)(void (*)(void))py_trim_if_due, METH_VARARGS | METH_KEYWORDS,
     "trim_if_due(min_interval, min_free=DEFAULTS['trimmer']['min_free']) -> bytes released, or None "
     "when skipped"},
    {"_advance_clock", py_advance_clock, METH_O,
     "_advance_clock(seconds): for tests, moves the rate limit's clock forward"},
    {"_advance_cpu", py_advance_cpu, METH_O,
     "_advance_cpu(seconds): for tests, moves the refault budget's CPU clock forward"},
    {"_test_refault", py_test_refault, METH_VARARGS,
     "_test_refault(fault_ns, free_bytes): for tests, sets the fault cost (0: measured) and pins "
     "the free-bytes figure (-1: the backend's)"},
    {"stats", py_stats, METH_NOARGS, "stats() -> dict of the fields this backend measures"},
    {"policy_stats", py_policy_stats, METH_NOARGS,
     "policy_stats() -> {pending, busy, deferred, coalesced, free_reads, refault_skips, idle_trims, "
     "fault_ns}: the trim policy's counters and the fault cost its refault budget uses"},
    {"_test_gate", py_test_gate, METH_O, "_test_gate(on): for tests (see binding.h)"},
    {NULL, NULL, 0, NULL},
};
