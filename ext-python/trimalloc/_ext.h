/* What the files of trimalloc._trimalloc share: the module state, argument
 * conversions, and each file's function table (added to the module by
 * _trimalloc.c). Written against the limited API of CPython 3.8; _prof.c,
 * which leaves it, does not include this header. */
#ifndef TRIMALLOC_PY_EXT_H
#define TRIMALLOC_PY_EXT_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include "binding.h"

/* Number of stats fields, from the core's one field list. */
#define TA_COUNT_FIELD(type, name, unit, doc) +1
enum { TA_NFIELDS = 0 TRIMALLOC_STATS_FIELDS(TA_COUNT_FIELD) };
#undef TA_COUNT_FIELD

typedef struct {
  PyObject *error;        /* trimalloc.Error */
  PyObject *trimmer_type; /* trimalloc._trimalloc.Trimmer */
} ta_py_state_t;

/* The state of the module (the functions' `self`). */
ta_py_state_t *ta_py_state(PyObject *module);

/* d[key] = value, stealing value (NULL: fails). 0 or -1. */
int ta_py_set_item(PyObject *d, const char *key, PyObject *value);

/* A field's value: float, bool, int, or None ('n'); a new reference. */
PyObject *ta_py_field(const ta_bind_field_t *f);

/* {name: value} for the present fields of f[0..n-1] ('b' as a bool); a new
 * reference, or NULL with an exception set. */
PyObject *ta_py_fields_dict(const ta_bind_field_t *f, size_t n);

/* Runs core/bind's job without the GIL (ta_bind_job_run). */
void ta_py_job(ta_bind_job_t *j);

/* The trim a decision asked for, without the GIL: t's (ta_bind_trimmer_run)
 * or, t NULL, the policy's (ta_bind_run_trim). The bytes released, or None
 * when it was coalesced into a running trim. */
PyObject *ta_py_run_trim(ta_bind_trimmer_t *t);

extern PyMethodDef ta_py_backend_methods[];   /* _backend.c: trims, stats, the policy's counters */
extern PyMethodDef ta_py_launch_methods[];    /* _launch.c: exec, preload, search path */
extern PyMethodDef ta_py_sampler_methods[];   /* _sampler.c: the heap profiler */
extern PyMethodDef ta_py_prof_read_methods[]; /* _prof_read.c: top, flame */
extern PyMethodDef ta_py_pools_methods[];     /* _pools.c: pymalloc's empty pools (bind_pymalloc.c) */
extern PyType_Spec ta_py_trimmer_spec;        /* _trimmer.c: Trimmer */

/* _pools.c: every trim gives back pymalloc's empty and sparse pools
 * (ta_bind_pymalloc_install) from now on; 1 when installed (a CPython it knows), else 0. With the GIL. */
int ta_py_pools_install(void);

#endif
