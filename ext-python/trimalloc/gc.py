"""trimalloc.gc: trim after the garbage collector's full collections.

    import trimalloc
    trimalloc.gc.enable()            # after generation-2 collections, at most once a second

The hook is a gc.callbacks entry: on the "stop" phase of a collection of one
of the named generations it runs the rate-limited trim (ta_bind_trim_if_due).
The objects a collection frees are freed by then, so the trim can return their
pages. On glibc this is malloc_trim(0) after full collections.
"""
from __future__ import annotations

import gc as _gc
import threading
from collections.abc import Iterable

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see __init__.py)
if TYPE_CHECKING:
    from typing import Any, Dict, Tuple

from . import _hooks, _trimalloc

# core/bind's default for GC hooks (core/bind/bind_facts.c; as Trimalloc::GC's)
DEFAULT_MIN_INTERVAL: float = _trimalloc.DEFAULTS["gc"]["min_interval"]

_lock = threading.Lock()
_state: Dict[str, Any] = {
    "enabled": False,
    "min_interval": DEFAULT_MIN_INTERVAL,
    "generations": (2,),
    "collections": 0,
    "trims": 0,
    "trimmed_bytes": 0,
}


def _callback(phase: str, info: Dict[str, Any]) -> None:
    if phase != "stop" or info.get("generation") not in _state["generations"]:
        return
    _state["collections"] += 1
    released = _hooks.trim_if_due("gc", _state["min_interval"])
    if released is not None:
        _state["trims"] += 1
        _state["trimmed_bytes"] += released


def _check_generations(generations: object) -> Tuple[int, ...]:
    if isinstance(generations, (str, bytes)) or not isinstance(generations, Iterable):
        raise TypeError("generations must be a tuple of ints in 0..2, not %r" % (generations,))
    gens = tuple(generations)
    for g in gens:
        if isinstance(g, bool) or not isinstance(g, int):
            raise TypeError("generations must hold ints, not %r" % (g,))
        if not 0 <= g <= 2:
            raise ValueError("generation must be 0, 1 or 2, not %r" % (g,))
    if not gens:
        raise ValueError("generations must name at least one generation, not %r" % (generations,))
    return gens


def enable(min_interval: float = DEFAULT_MIN_INTERVAL, generations: Iterable[int] = (2,)) -> None:
    """Trim after collections of `generations`, at most once per `min_interval` s.

    Calling it again changes the settings; the hook is installed once."""
    interval = _hooks.check_interval(min_interval)
    gens = _check_generations(generations)
    with _lock:
        _state["min_interval"] = interval
        _state["generations"] = gens
        if _callback not in _gc.callbacks:
            _gc.callbacks.append(_callback)
        _state["enabled"] = True


def disable() -> None:
    """Remove the hook (no error when it is not installed)."""
    with _lock:
        while _callback in _gc.callbacks:
            _gc.callbacks.remove(_callback)
        _state["enabled"] = False


def enabled() -> bool:
    return _callback in _gc.callbacks


def stats() -> Dict[str, Any]:
    """What the hook did: collections seen, trims run, bytes they released."""
    d = dict(_state)
    d["enabled"] = enabled()
    return d
