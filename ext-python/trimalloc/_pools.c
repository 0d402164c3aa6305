/* pymalloc's empty and sparse pools, given back by every trim: the walk is
 * core/bind/bind_pymalloc.c's (its comment says how). This file only wires
 * the interpreter in: its version, its arena allocator and thread state
 * functions (outside the limited API: found with dlsym), its GIL for the
 * policy's thread, and the two functions of the module. */
#include "_ext.h"

#include <dlfcn.h>

/* On core/bind's policy thread, which holds no GIL: PyGILState_Ensure takes
 * it (that thread is no interpreter's: it gets a thread state of the main
 * interpreter), once the interpreter is initialized. */
static int gil_take(void) {
  return Py_IsInitialized() ? (int)PyGILState_Ensure() : -1;
}

static void gil_drop(int state) {
  PyGILState_Release((PyGILState_STATE)state);
}

int ta_py_pools_install(void) {
  ta_bind_pymalloc_host_t h = {.version = Py_GetVersion(), .lock = gil_take, .unlock = gil_drop};
  typedef void (*allocator_fn)(ta_bind_arena_allocator_t *);
  h.get_allocator = (allocator_fn)dlsym(RTLD_DEFAULT, "PyObject_GetArenaAllocator");
  h.set_allocator = (allocator_fn)dlsym(RTLD_DEFAULT, "PyObject_SetArenaAllocator");
  h.tstate = (void *(*)(void))dlsym(RTLD_DEFAULT, "PyThreadState_GetUnchecked"); /* 3.13 */
  if (!h.tstate) h.tstate = (void *(*)(void))dlsym(RTLD_DEFAULT, "_PyThreadState_UncheckedGet");
  h.tstate_interp = (void *(*)(void *))dlsym(RTLD_DEFAULT, "PyThreadState_GetInterpreter"); /* 3.9+ */
  return ta_bind_pymalloc_install(&h);
}

static PyObject *py_pools_off(PyObject *m, PyObject *unused) {
  (void)m, (void)unused;
  ta_bind_pymalloc_off();
  Py_RETURN_NONE;
}

/* _pymalloc_pools(weigh_all=True) -> {on, arenas, arena_bytes, free_bytes, trims,
 * pools_released, sparse_pools_trimmed, released_bytes} */
static PyObject *py_pools(PyObject *m, PyObject *args) {
  (void)m;
  int weigh_all = 1;
  if (!PyArg_ParseTuple(args, "|p:_pymalloc_pools", &weigh_all)) return NULL;
  ta_bind_field_t f[TA_BIND_PYMALLOC_NFIELDS];
  return ta_py_fields_dict(f, ta_bind_pymalloc_fields(weigh_all, f));
}

PyMethodDef ta_py_pools_methods[] = {
    {"_pymalloc_pools", py_pools, METH_VARARGS,
     "_pymalloc_pools(weigh_all=True) -> {on, arenas, arena_bytes, free_bytes, trims, pools_released, "
     "sparse_pools_trimmed, released_bytes}: the arenas trims walk for pymalloc's empty and sparse pools; "
     "free_bytes weighs every sparse pool that changed, or (weigh_all False) at most 512 of them"},
    {"_pymalloc_pools_off", py_pools_off, METH_NOARGS, "_pymalloc_pools_off(): trims leave pymalloc alone"},
    {NULL, NULL, 0, NULL},
};
