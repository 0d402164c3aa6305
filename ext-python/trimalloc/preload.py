"""`import trimalloc.preload` as the first line of a program runs it on trimalloc.

If trimalloc is not yet the process allocator, the process re-executes itself
(/proc/self/exe with sys.orig_argv, the interpreter's own record of its
command line: same pid, same argv) with the bundled library prepended to
LD_PRELOAD. A guard in the environment (TRIMALLOC_PRELOAD_GUARD) makes this
happen at most once. It is refused, with one RuntimeWarning, and the program
goes on on glibc, where a re-exec would not run the same program once:

- in a process forked from one running the same program (a gunicorn worker
  importing the application module, a multiprocessing child): re-executing
  would start a second server. Put the line in gunicorn.conf.py (the master
  loads it), or in the module that creates the Celery app;
- when the command line was rewritten (setproctitle);
- for `python -c` and a program read from standard input (a multiprocessing
  child started by spawn or forkserver is one: `python -c ...`, whatever
  sys.argv it is given).

Import it before anything else: what ran before the re-exec runs again.
The logic is core/bind/bind_launch.c's ta_bind_preload_req, shared with the
Ruby gem.
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import List, Optional

from . import DEFAULT_PYTHONMALLOC, _trimalloc, library_path

HINT = ("put `import trimalloc.preload` first in gunicorn.conf.py (gunicorn), in the module "
        "that creates the Celery app (Celery), or start the program with `trimalloc run --`")


def _warn(msg: str) -> None:
    warnings.warn("trimalloc.preload: %s; continuing on %s" % (msg, _trimalloc.backend()),
                  RuntimeWarning, stacklevel=4)  # the line that imports this module


def _started_with(args: List[str]) -> Optional[str]:
    """"-c" or "-" when the interpreter's own command line (its options, then
    what it runs) says it runs a command string or standard input, else None."""
    i = 0
    while i < len(args):
        a = args[i]
        if a == "-":
            return "-"
        if not a.startswith("-") or a == "--":
            return None  # a script
        if a.startswith("--"):
            i += 2 if a == "--check-hash-based-pycs" else 1
            continue
        for k, ch in enumerate(a[1:], 2):
            if ch == "c":
                return "-c"
            if ch == "m":
                return None
            if ch in "WX":  # the option's value: the rest of this argument, or the next one
                i += 0 if a[k:] else 1
                break
        i += 1
    return None


def _script() -> str:
    """What the program runs, for the refusal of -c and standard input. A
    multiprocessing child started by spawn or forkserver (uvicorn's --workers)
    runs `python -c ...` but is given its parent's sys.argv: the interpreter's
    own command line says what it is."""
    orig = getattr(sys, "orig_argv", None)  # Python 3.10+
    if orig is None:
        try:
            with open("/proc/self/cmdline", "rb") as f:
                orig = [a.decode("utf-8", "surrogateescape") for a in f.read().split(b"\0")[:-1]]
        except OSError:
            orig = []
    return _started_with(orig[1:]) or (sys.argv[0] if sys.argv else "")


def _preload() -> str:
    try:
        lib = library_path()
    except FileNotFoundError as e:
        _warn("cannot re-execute with %s preloaded (%s)" % (e.filename, e.strerror))
        return "failed"
    sys.stdout.flush()
    sys.stderr.flush()
    argv = getattr(sys, "orig_argv", None)  # Python 3.10+; before, the C runtime's argv
    script = _script()
    try:
        code, reason = _trimalloc.preload(lib, DEFAULT_PYTHONMALLOC, argv, script)
    except OSError as e:  # returns only when not re-executing
        _warn("cannot re-execute with %s preloaded (%s)" % (lib, e))
        return "failed"
    codes = _trimalloc.PRELOAD  # core/bind's result codes, by name
    if code == codes["active"]:
        return "active"
    if code == codes["guard"]:
        _warn("%s (library: %s)" % (reason, lib))
        return "not active"
    if code == codes["no_library"]:
        _warn("cannot re-execute with %s preloaded (%s)" % (lib, reason))
        return "failed"
    _warn("%s; %s" % (reason, HINT))
    refusals = {codes["forked"]: "forked", codes["rewritten"]: "rewritten", codes["not_a_file"]: "not a file"}
    return refusals.get(code, "refused")


# After the re-exec the extension gave the process its name back (from this
# variable, core/bind/bind_launch.c) and removed it from the C environment;
# os.environ is a copy taken at start.
os.environ.pop("TRIMALLOC_PRELOAD_COMM", None)
status = _preload()
