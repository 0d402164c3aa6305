"""`import trimalloc.preload` as the first line of a program runs it on trimalloc.

If trimalloc is not yet the process allocator, the process re-executes itself
(/proc/self/exe with the same command line, so the same pid and argv) with the
bundled library prepended to LD_PRELOAD. A guard in the environment
(TRIMALLOC_PRELOAD_GUARD) makes this happen at most once: if the re-executed
process still does not run on trimalloc, or the re-exec is impossible, this
warns once (RuntimeWarning) and the program goes on, on glibc.

Import it before anything else: what ran before the re-exec runs again.
The logic is core/bind/binding.c's ta_bind_preload, shared with the Ruby gem.
"""
import sys
import warnings

from . import DEFAULT_PYTHONMALLOC, _trimalloc, library_path


def _preload():
    # type: () -> str
    lib = library_path()
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        rc = _trimalloc.preload(lib, DEFAULT_PYTHONMALLOC)  # returns only when not re-executing
    except OSError as e:
        warnings.warn(
            "trimalloc.preload: cannot re-execute with %s preloaded (%s); "
            "continuing on %s" % (lib, e, _trimalloc.backend()),
            RuntimeWarning,
            stacklevel=2,
        )
        return "failed"
    if rc == 1:
        warnings.warn(
            "trimalloc.preload: re-executed with %s preloaded, but malloc is still not "
            "trimalloc's (is LD_PRELOAD cleared or overridden?); continuing on glibc" % lib,
            RuntimeWarning,
            stacklevel=2,
        )
        return "not active"
    return "active"


status = _preload()
