/* trimalloc._trimalloc.Trimmer: one hook's trim policy (core/bind's
 * ta_bind_trimmer_t) as a Python object, the same as the Ruby gem's
 * Trimalloc::Trimmer. Every integration (gc aside) holds one. */
#include "_ext.h" /* first: Python.h sets the feature macros */

typedef struct {
  PyObject_HEAD
  ta_bind_trimmer_t t;
} trimmer_object;

/* Trimmer(every, min_free, min_interval, refault_share), each defaulting to
 * DEFAULTS['trimmer']'s (core/bind/bind_facts.c). trimalloc._hooks.new_trimmer checks the
 * settings, with messages naming the value; this converts them (every None:
 * 0, off; min_free None: -1, off, else clamped to INT64_MAX). */
static PyObject *trimmer_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
  static char *kwlist[] = {"every", "min_free", "min_interval", "refault_share", NULL};
  const ta_bind_defaults_t *dflt = ta_bind_defaults_for("trimmer");
  PyObject *every_obj = NULL, *free_obj = NULL, *share_obj = NULL;
  double interval = dflt->min_interval, share = dflt->refault_share;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|OOdO:Trimmer", kwlist, &every_obj, &free_obj, &interval,
                                   &share_obj))
    return NULL;
  if (share_obj) share = PyFloat_AsDouble(share_obj);
  uint64_t every = dflt->every, v;
  int64_t min_free = dflt->min_free;
  if (every_obj) every = every_obj == Py_None ? 0 : PyLong_AsUnsignedLongLong(every_obj);
  if (free_obj && free_obj != Py_None) {
    v = PyLong_AsUnsignedLongLong(free_obj);
    min_free = v > (uint64_t)INT64_MAX ? INT64_MAX : (int64_t)v;
  } else if (free_obj) {
    min_free = -1;
  }
  if (PyErr_Occurred()) return NULL;
  trimmer_object *self = (trimmer_object *)PyType_GenericAlloc(type, 0);
  if (!self) return NULL;
  if (ta_bind_trimmer_init(&self->t, every, min_free, interval) != 0) {
    Py_DECREF(self);
    PyErr_Format(PyExc_ValueError, TA_BIND_MSG_TRIMMER ": every=%R and min_free=%R (both off), or a "
                 "negative min_interval", every_obj ? every_obj : Py_None, free_obj ? free_obj : Py_None);
    return NULL;
  }
  if (ta_bind_trimmer_set_share(&self->t, share) != 0) {
    Py_DECREF(self);
    PyErr_Format(PyExc_ValueError, TA_BIND_MSG_TRIMMER ": refault_share=%R (negative or not finite)",
                 share_obj);
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
  if (!ta_bind_trimmer_decide(t, NULL)) Py_RETURN_NONE;
  return ta_py_run_trim(t);
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
  return ta_py_run_trim(&((trimmer_object *)self)->t);
}

static PyObject *trimmer_stats(PyObject *self, PyObject *unused) {
  (void)unused;
  ta_bind_field_t f[TA_BIND_TRIMMER_NFIELDS];
  return ta_py_fields_dict(f, ta_bind_trimmer_fields(&((trimmer_object *)self)->t, f));
}

/* every, min_free, min_interval, refault_share (closure: its index in
 * ta_bind_trimmer_settings' fields; None: off). */
static PyObject *trimmer_get(PyObject *self, void *index) {
  ta_bind_field_t f[TA_BIND_DEFAULTS_NFIELDS];
  ta_bind_trimmer_settings(&((trimmer_object *)self)->t, f);
  return ta_py_field(&f[(intptr_t)index]);
}

static PyMethodDef trimmer_methods[] = {
    {"event", trimmer_event, METH_NOARGS,
     "event() -> bytes released, or None: one GC, job or request ended"},
    {"decide", trimmer_decide, METH_NOARGS,
     "decide() -> bool: count one event; whether a trim is due now (then call run())"},
    {"run", trimmer_run, METH_NOARGS,
     "run() -> bytes released, or None (coalesced): the trim decide() asked for, without the GIL"},
    {"stats", trimmer_stats, METH_NOARGS,
     "stats() -> {events, trims, skipped, coalesced, trimmed_bytes, refault_skips}"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef trimmer_getset[] = {
    {"every", trimmer_get, NULL, "trim every this many events (None: off)", (void *)0},
    {"min_free", trimmer_get, NULL, "trim when this many bytes are free (None: off)", (void *)1},
    {"min_interval", trimmer_get, NULL, "seconds between trims, at least", (void *)2},
    {"refault_share", trimmer_get, NULL,
     "share of the CPU time the refaults of trims may cost (0: no refault budget)", (void *)3},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot trimmer_slots[] = {
    {Py_tp_new, (void *)trimmer_new},
    {Py_tp_dealloc, (void *)trimmer_dealloc},
    {Py_tp_methods, trimmer_methods},
    {Py_tp_getset, trimmer_getset},
    {Py_tp_doc, (void *)"Trimmer(every, min_free, min_interval, refault_share): one hook's trim policy (core/bind, "
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

