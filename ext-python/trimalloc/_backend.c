/* trimalloc._trimalloc: which allocator answers, trimming it, its stats, and
 * the trim policy's process-wide counters (core/bind/bind_backend.c,
 * bind_policy.c). */
#include "_ext.h"

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

static PyObject *py_trim(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  uint64_t released;
  Py_BEGIN_ALLOW_THREADS
  released = ta_bind_trim();
  Py_END_ALLOW_THREADS
  return PyLong_FromUnsignedLongLong(released);
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

static PyObject *py_free_bytes(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyLong_FromUnsignedLongLong(ta_bind_free_bytes());
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

static PyObject *py_rss(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyLong_FromUnsignedLongLong(ta_bind_rss());
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

static PyObject *py_free_source(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyUnicode_FromString(ta_bind_free_source_name(ta_bind_free_source()));
}

static PyObject *py_purger_state(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  return PyUnicode_FromString(ta_bind_purger_state());
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
PyMethodDef ta_py_backend_methods[] = {
    {"active", py_active, METH_NOARGS, "active() -> bool: is the process's malloc trimalloc's?"},
    {"backend", py_backend, METH_NOARGS, "backend() -> 'trimalloc' or 'glibc'"},
    {"loaded_path", py_loaded_path, METH_NOARGS,
     "loaded_path() -> path of the loaded core, or None when it is not active"},
    {"core_version", py_core_version, METH_NOARGS,
     "core_version() -> the loaded core's version, or None when it is not active"},
    {"trim", py_trim, METH_NOARGS, "trim() -> bytes returned to the OS now"},
    {"trim_if_due", (PyCFunction)(void (*)(void))py_trim_if_due, METH_VARARGS | METH_KEYWORDS,
     "trim_if_due(min_interval, min_free=DEFAULTS['trimmer']['min_free']) -> bytes released, or None "
     "when skipped"},
    {"free_bytes", py_free_bytes, METH_NOARGS,
     "free_bytes() -> bytes free but still resident in the allocator"},
    {"_advance_clock", py_advance_clock, METH_O,
     "_advance_clock(seconds): for tests, moves the rate limit's clock forward"},
    {"_advance_cpu", py_advance_cpu, METH_O,
     "_advance_cpu(seconds): for tests, moves the refault budget's CPU clock forward"},
    {"_test_refault", py_test_refault, METH_VARARGS,
     "_test_refault(fault_ns, free_bytes): for tests, sets the fault cost (0: measured) and pins "
     "the free-bytes figure (-1: the backend's)"},
    {"rss", py_rss, METH_NOARGS, "rss() -> the process's resident set size in bytes"},
    {"stats", py_stats, METH_NOARGS, "stats() -> dict of the fields this backend measures"},
    {"policy_stats", py_policy_stats, METH_NOARGS,
     "policy_stats() -> {pending, busy, deferred, coalesced, free_reads, refault_skips, idle_trims, "
     "fault_ns}: the trim policy's counters and the fault cost its refault budget uses"},
    {"free_source", py_free_source, METH_NOARGS,
     "free_source() -> where free_bytes() comes from: dirty, resident, mallinfo2, mallinfo, unknown"},
    {"purger_state", py_purger_state, METH_NOARGS,
     "purger_state() -> the core's background purger in this process, in words"},
    {"_test_gate", py_test_gate, METH_O, "_test_gate(on): for tests (see binding.h)"},
    {"_test_gate_open", py_test_gate_open, METH_NOARGS, "_test_gate_open(): for tests"},
    {"_test_gate_state", py_test_gate_state, METH_NOARGS, "_test_gate_state() -> int: for tests"},
    {NULL, NULL, 0, NULL},
};
