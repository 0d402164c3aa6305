/* The Python frames of the heap profiler (_prof.c), for _trimalloc.c. No
 * Python types cross this header: _prof.c is compiled outside the limited
 * API, _trimalloc.c inside it. */
#ifndef TRIMALLOC_PY_PROF_H
#define TRIMALLOC_PY_PROF_H

#include <stddef.h>
#include <stdint.h>

/* Registers the frames hook with the core (trimalloc_prof_set_frames_hook,
 * eval_fn = _PyEval_EvalFrameDefault) when the core is the process's
 * allocator and this interpreter is the minor version _prof.c was compiled
 * for. Call once, with the GIL, at import. Returns 1 registered, 0 not (see
 * ta_py_frames_status for why). */
int ta_py_frames_install(void);

/* Why the hook is or is not registered: one line, static storage. */
const char *ta_py_frames_status(void);

/* The hook itself (trimalloc_prof_frames_fn): this thread's Python frames,
 * leaf first, when this thread holds the GIL; else 0. */
int ta_py_frames_hook(uint64_t *keys, int32_t *lines, int max);

/* The name ("module.qualname") and file the hook gave a key, for tests:
 * 0, or -1 when the key is not one the hook returned. Needs the GIL. */
int ta_py_frames_describe(uint64_t key, char *name, size_t namelen, char *file, size_t filelen);

#endif
