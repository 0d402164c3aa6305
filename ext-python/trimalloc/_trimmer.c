/* trimalloc._trimalloc.Trimmer: one hook's trim policy (core/bind's
 * ta_bind_trimmer_t) as a Python object, the same as the Ruby gem's
 * Trimalloc::Trimmer. Every integration (gc aside) holds one. */
#include "_ext.h" /* first: Python.h sets the feature macros */

#include <stdatomic.h>

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
  if (ta_py_bytes(obj, what, &v) < 0) return -1;
  *out = v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
  return 0;
}

static PyObject *trimmer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"every", "min_free", "min_interval", NULL};
  PyObject *every_obj = NULL, *free_obj = NULL, *interval_obj = NULL;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OOO:Trimmer", kwlist, &every_obj, &free_obj,
                                   &interval_obj))
    return NULL;
  const ta_bind_defaults_t *dflt = ta_bind_defaults_for("trimmer");
  uint64_t every = dflt->every;
  int64_t min_free = dflt->min_free;
  double interval = dflt->min_interval;
  if (every_obj == Py_None) every = 0;
  if (every_obj && every_obj != Py_None) {
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
  if (interval_obj && ta_py_interval(interval_obj, "min_interval", &interval) < 0) return NULL;
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
  ta_bind_field_t f[TA_BIND_TRIMMER_NFIELDS];
  return ta_py_fields_dict(f, ta_bind_trimmer_fields(&((trimmer_object *)self)->t, f));
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
    {Py_tp_doc, (void *)"Trimmer(every, min_free, min_interval): one hook's trim policy (core/bind, "
                        "the same as the Ruby gem's Trimalloc::Trimmer); defaults: DEFAULTS['trimmer']."},
    {0, NULL},
};

PyType_Spec ta_py_trimmer_spec = {
    "trimalloc._trimalloc.Trimmer",
    sizeof(trimmer_object),
    0,
    Py_TPFLAGS_DEFAULT,
    trimmer_slots,
};

