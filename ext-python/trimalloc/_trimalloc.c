/* trimalloc._trimalloc: the CPython binding over core/bind/binding.h.
 *
 * Converts types and maps errors, nothing more: every decision (which backend
 * answers, when a trim is due, how the launcher and the preload re-exec work)
 * lives in core/bind/ (bind_*.c), shared with the Ruby extension.
 *
 * This file: the module (its state, constants, init) and the conversions the
 * other files share. The functions live in the files named for what they hold:
 *   _backend.c   trims, stats, the policy's counters
 *   _trimmer.c   Trimmer, one hook's policy
 *   _launch.c    exec with the library preloaded, preload
 *   _sampler.c   the heap profiler (start, stop, dump, tags)
 *   _prof_read.c the profile readers (top, flame)
 *   _prof.c      the Python frames of the profiler's samples
 *   _pools.c     pymalloc's empty pools, given back by every trim (the walk:
 *                core/bind/bind_pymalloc.c)
 *
 * Multi-phase init (PEP 489); the exception type lives in the module state, so
 * re-imports and subinterpreters each get their own. Written against the
 * limited API of CPython 3.8. */
#include "_ext.h"
#include "_prof.h"

ta_py_state_t *ta_py_state(PyObject *module) {
  return (ta_py_state_t *)PyModule_GetState(module);
}

int ta_py_set_item(PyObject *d, const char *key, PyObject *value) {
  if (!value) return -1;
  int rc = PyDict_SetItemString(d, key, value);
  Py_DECREF(value);
  return rc;
}

PyObject *ta_py_field(const ta_bind_field_t *f) {
  switch (f->type) {
  case 'd': return PyFloat_FromDouble(f->v.d);
  case 'b': return PyBool_FromLong(f->v.u != 0);
  case 'i': return PyLong_FromLongLong(f->v.i);
  case 'n': Py_RETURN_NONE;
  default: return PyLong_FromUnsignedLongLong(f->v.u);
  }
}

PyObject *ta_py_fields_dict(const ta_bind_field_t *f, size_t n) {
  PyObject *d = PyDict_New();
  for (size_t i = 0; d && i < n; i++) {
    if (!f[i].present) continue; /* not measured by this backend: left out */
    if (ta_py_set_item(d, f[i].name, ta_py_field(&f[i])) < 0) Py_CLEAR(d);
  }
  return d;
}

void ta_py_job(ta_bind_job_t *j) {
  /* pymalloc's pools first, with the GIL: all of them for trimalloc.trim(),
   * a bounded walk for a hook's trim (bind_pymalloc.c) */
  ta_bind_pymalloc_job(1, j->kind == TA_JOB_TRIM ? 2 : j->kind == TA_JOB_RUN || j->kind == TA_JOB_RUN_AFTER);
  Py_BEGIN_ALLOW_THREADS
  ta_bind_job_run(j);
  Py_END_ALLOW_THREADS
  ta_bind_pymalloc_job(0, 0);
}

PyObject *ta_py_run_trim(ta_bind_trimmer_t *t) {
  ta_bind_job_t j = {.kind = TA_JOB_RUN, .trimmer = t, .released = -1};
  ta_py_job(&j);
  if (j.released < 0) Py_RETURN_NONE;
  return PyLong_FromLongLong(j.released);
}

/* DEFAULTS: {hook: {"every", "min_free", "min_interval", "refault_share"}}
 * (core/bind's table; None: off). */
static PyObject *make_defaults(void) {
  PyObject *d = PyDict_New();
  ta_bind_field_t f[TA_BIND_DEFAULTS_NFIELDS];
  for (const ta_bind_defaults_t *h = ta_bind_defaults; d && h->hook; h++)
    if (ta_py_set_item(d, h->hook, ta_py_fields_dict(f, ta_bind_defaults_fields(h, f))) < 0) Py_CLEAR(d);
  return d;
}

/* A tuple of the names[0 .. n). */
static PyObject *names_tuple(const char *const *names, size_t n) {
  PyObject *t = PyTuple_New((Py_ssize_t)n);
  for (size_t i = 0; t && i < n; i++) {
    PyObject *s = PyUnicode_FromString(names[i]);
    if (!s) Py_CLEAR(t);
    else PyTuple_SetItem(t, (Py_ssize_t)i, s); /* steals */
  }
  return t;
}

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

/* core/bind's facts (TA_BIND_FACTS) by kind. */
static PyObject *fields_dict(size_t (*fill)(ta_bind_field_t *)) {
  ta_bind_field_t f[TA_BIND_FACTS_MAXFIELDS];
  return ta_py_fields_dict(f, fill(f));
}
#define TA_PY_FACT_fields(v, n) fields_dict(v)
#define TA_PY_FACT_names(v, n) names_tuple(v, n)
#define TA_PY_FACT_u64(v, n) PyLong_FromUnsignedLongLong(v)
#define TA_PY_FACT_str(v, n) PyUnicode_FromString(v)
#define TA_PY_FACT(name, kind, v, n) \
  if (add_object(m, #name, TA_PY_FACT_##kind(v, n)) < 0) return -1;

static int add_object(PyObject *m, const char *name, PyObject *value) {
  if (!value) return -1;
  if (PyModule_AddObject(m, name, value) < 0) { /* steals only on success */
    Py_DECREF(value);
    return -1;
  }
  return 0;
}

static int module_exec(PyObject *m) {
  ta_py_state_t *st = ta_py_state(m);
  ta_bind_init();
  ta_py_frames_install(); /* no Python frames in profiles when it cannot: not an import error */
  ta_py_pools_install();  /* another CPython: trims leave pymalloc's pools alone */
  st->error = PyErr_NewExceptionWithDoc(
      "trimalloc.Error", "An operation of the allocator failed (not a wrong argument).",
      PyExc_RuntimeError, NULL);
  if (!st->error) return -1;
  Py_INCREF(st->error);
  if (add_object(m, "Error", st->error) < 0) return -1;
  if (add_object(m, "VERSION", PyUnicode_FromString(TRIMALLOC_VERSION)) < 0) return -1;
  if (add_object(m, "STATS_VERSION", PyLong_FromLong(TRIMALLOC_STATS_VERSION)) < 0) return -1;
  if (add_object(m, "FIELDS", make_fields()) < 0) return -1;
  if (add_object(m, "DEFAULTS", make_defaults()) < 0) return -1;
  TA_BIND_FACTS(TA_PY_FACT)
  PyMethodDef *tables[] = {ta_py_backend_methods, ta_py_launch_methods, ta_py_sampler_methods,
                           ta_py_prof_read_methods, ta_py_pools_methods};
  for (size_t i = 0; i < sizeof tables / sizeof *tables; i++)
    if (PyModule_AddFunctions(m, tables[i]) < 0) return -1;
  st->trimmer_type = PyType_FromSpec(&ta_py_trimmer_spec);
  if (!st->trimmer_type) return -1;
  Py_INCREF(st->trimmer_type);
  if (add_object(m, "Trimmer", st->trimmer_type) < 0) return -1;
  return 0;
}

static int module_traverse(PyObject *m, visitproc visit, void *arg) {
  ta_py_state_t *st = ta_py_state(m);
  if (st) {
    Py_VISIT(st->error);
    Py_VISIT(st->trimmer_type);
  }
  return 0;
}

static int module_clear(PyObject *m) {
  ta_py_state_t *st = ta_py_state(m);
  if (st) {
    Py_CLEAR(st->error);
    Py_CLEAR(st->trimmer_type);
  }
  return 0;
}

static void module_free(void *m) { module_clear((PyObject *)m); }

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, (void *)module_exec},
    {0, NULL},
};

static struct PyModuleDef moduledef = {
    PyModuleDef_HEAD_INIT,
    "trimalloc._trimalloc",
    "The trimalloc binding: trims, stats, launcher (see core/bind/binding.h).",
    sizeof(ta_py_state_t),
    NULL, /* the functions: added by module_exec, from each file's table */
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
