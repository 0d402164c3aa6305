"""trimalloc: a memory allocator that gives memory back.

    import trimalloc
    trimalloc.backend()      # "trimalloc" when the process runs on it, else "glibc"
    trimalloc.trim()         # bytes returned to the OS now
    trimalloc.stats()        # the allocator's numbers (keys from the core's field list)
    print(trimalloc.report())
    trimalloc.gc.enable()    # trim after full garbage collections

Everything works on either backend: when trimalloc is not the process allocator
(no LD_PRELOAD), trims and stats drive glibc (malloc_trim, mallinfo2).
Run a program on trimalloc with `trimalloc run -- CMD...`, or put
`import trimalloc.preload` first in it.
"""
from __future__ import annotations

import atexit
import errno
import os

# typing is for the annotations only (strings, never evaluated: `from __future__
# import annotations`), so it is imported for type checkers alone, which take
# any TYPE_CHECKING as true: `import trimalloc` imports no module that the
# hooks do not use (it is imported at the start of every process that
# `trimalloc run --profile` starts, and by the CLI; test_extension checks).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Dict, Union

from . import _trimalloc
from ._report import Report, report
from ._trimming import trimming
from . import gc  # noqa: E402  (trimalloc.gc, the gc.callbacks hook)

__all__ = [
    "Error",
    "Report",
    "DEFAULT_PYTHONMALLOC",
    "active",
    "backend",
    "library_path",
    "report",
    "stats",
    "trim",
    "trimming",
]  # not "gc": `from trimalloc import *` must not shadow the standard gc module

__version__ = _trimalloc.VERSION  # TRIMALLOC_VERSION, compiled in from core/trimalloc.h

Error = _trimalloc.Error

# Trims give back pymalloc's empty pools (_pools.c, bind_pymalloc.c) with the
# GIL, from any thread; at exit they stop first, so that none asks a
# finalizing interpreter for it.
atexit.register(_trimalloc._pymalloc_pools_off)

# Whether `trimalloc run` (and `import trimalloc.preload`) also set
# PYTHONMALLOC=malloc, so that small objects live in trimalloc's pages instead
# of pymalloc's arenas. Off: pymalloc stays, and every trim gives back its
# empty pools and the pages of its sparse ones (bind_pymalloc.c), which was what the
# arenas had kept. A Celery worker (bench/, 300 tasks; README, "Why pymalloc by
# default") spends 0.84x the CPU it spends with PYTHONMALLOC=malloc (1.12x
# glibc's against 1.34x) for the same mean RSS, and idles 15 MiB higher (0.63x
# glibc's against 0.55x). `--pythonmalloc` / `--no-pythonmalloc` override it
# per run.
DEFAULT_PYTHONMALLOC = False

_LIBRARY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "libtrimalloc.so")


def active() -> bool:
    """True when the process's malloc is trimalloc's (not merely loaded)."""
    return _trimalloc.active()


def backend() -> str:
    """"trimalloc" when trimalloc is the process allocator, else "glibc"."""
    return _trimalloc.backend()


def library_path() -> str:
    """The path of the libtrimalloc.so bundled with this package (for LD_PRELOAD).

    Raises FileNotFoundError, naming the path, when the file is missing (a
    package installed without its native part): a path that does not exist
    would only fail later, in the dynamic loader of another process."""
    if not os.path.isfile(_LIBRARY):
        raise FileNotFoundError(errno.ENOENT, "the bundled libtrimalloc.so is missing (reinstall trimalloc)",
                                _LIBRARY)
    return _LIBRARY


def trim() -> int:
    """Return every free page to the OS now; returns the bytes released.

    On glibc: malloc_trim(0), the bytes being the drop in RSS across the call."""
    return _trimalloc.trim()


def stats() -> Dict[str, Union[int, float, str]]:
    """The allocator's numbers, keyed by the core's field list, plus "backend".

    Fields the backend cannot measure are left out (glibc has no "resident")."""
    return _trimalloc.stats()
