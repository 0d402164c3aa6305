"""Run at the start of every Python that `trimalloc run --profile DIR` starts
(this directory is put first in PYTHONPATH): imports trimalloc's extension,
which registers the Python frames of the heap profiler, so that a program
that never imports trimalloc still gets its Python functions in the
profiles. Then runs the sitecustomize this one hides (Debian ships one), as
if this one were not there. Never fails the program: a Python without
trimalloc, or another version, just profiles without Python frames."""
from __future__ import annotations

import os
import sys

try:
    from trimalloc import _trimalloc  # noqa: F401 (registering the hook is the import)
except Exception:  # pragma: no cover - another interpreter, or a broken install
    pass


def _chain() -> None:
    here = os.path.dirname(os.path.abspath(__file__))
    me = sys.modules.pop("sitecustomize", None)
    import importlib.util

    for d in sys.path:
        if os.path.abspath(d or ".") == here:
            continue
        f = os.path.join(d or ".", "sitecustomize.py")
        if os.path.isfile(f):
            spec = importlib.util.spec_from_file_location("sitecustomize", f)
            if spec is None or spec.loader is None:
                break
            mod = importlib.util.module_from_spec(spec)
            sys.modules["sitecustomize"] = mod
            try:
                spec.loader.exec_module(mod)
            except Exception:  # as site.py does with a failing sitecustomize: go on
                sys.modules["sitecustomize"] = me  # type: ignore[assignment]
            return
    if me is not None:
        sys.modules["sitecustomize"] = me


_chain()
del _chain
