"""What every trim hook shares: argument checks, the rate-limited trim, listeners,
and the heap profiler's per-thread tag (set_tag, current_tag, Tagged).

The rate limit and the free-bytes threshold are decided in C
(ta_bind_trim_if_due, shared with the Ruby gem); this module checks the
arguments (the extension only converts them: these checks are the only ones,
and their messages name the value) and tells listeners (for example
trimalloc.prometheus) what happened.
"""
from __future__ import annotations

import math
import sys
import threading
from types import CoroutineType, GeneratorType

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see __init__.py)
if TYPE_CHECKING:
    from typing import Any, Callable, Generator, List, Literal, Optional, overload

    Listener = Callable[[str, Optional[int]], None]

from . import _trimalloc

# Called as listener(source, released) after a hook ran: source names the hook
# ("gc", "celery", "wsgi", "gunicorn", "aiohttp", "asgi", "trimming"), released
# is the bytes a trim released, or None when the trim was skipped (not due).
# The async hooks call it from the executor thread that trimmed. (Listener,
# Callable[[str, Optional[int]], None], is defined for type checkers above.)
_listeners: List[Listener] = []
_lock = threading.Lock()


def add_listener(fn: Listener) -> None:
    if not callable(fn):
        raise TypeError("listener must be callable, not %r" % (fn,))
    with _lock:
        if fn not in _listeners:
            _listeners.append(fn)


def remove_listener(fn: Listener) -> None:
    with _lock:
        if fn in _listeners:
            _listeners.remove(fn)


def check_interval(value: object, name: str = "min_interval") -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number of seconds, not %r" % (name, value))
    if not math.isfinite(value) or value < 0:
        raise ValueError("%s must be finite and >= 0, not %r" % (name, value))
    return float(value)


def check_share(value: object, name: str = "refault_share") -> float:
    """A share of CPU time: a number, finite and >= 0 (0: no refault budget)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("%s must be a number, not %r" % (name, value))
    if not math.isfinite(value) or value < 0:
        raise ValueError("%s must be finite and >= 0, not %r" % (name, value))
    return float(value)


if TYPE_CHECKING:  # with none=False (the default), an int, never None
    @overload
    def check_bytes(value: object, name: str, none: Literal[False] = ...) -> int: ...
    @overload
    def check_bytes(value: object, name: str, none: bool) -> Optional[int]: ...


def check_bytes(value: object, name: str, none: bool = False) -> Optional[int]:
    """A byte count: an int >= 0 that fits in 64 bits (or None, with none=True)."""
    if none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("%s must be an int (bytes)%s, not %r" % (name, " or None" if none else "", value))
    if value < 0:
        raise ValueError("%s must be >= 0, not %r" % (name, value))
    if value >> 64:
        raise ValueError("%s is too large: %r" % (name, value))
    return value


def check_count(value: object, name: str, none: bool = False) -> Optional[int]:
    """An int >= 1 (or None, with none=True)."""
    if none and value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError("%s must be an int%s, not %r" % (name, " or None" if none else "", value))
    if value < 1:
        raise ValueError("%s must be >= 1%s, not %r" % (name, " or None" if none else "", value))
    return value


def renamed(old: str, new: str, value: object, where: str, stacklevel: int = 3) -> object:
    """An option given under its old name: warn (DeprecationWarning), return the value."""
    import warnings
    warnings.warn("%s: %s is deprecated, use %s (the old name goes in the next release)"
                  % (where, old, new), DeprecationWarning, stacklevel=stacklevel)
    return value


def new_trimmer(every: Optional[int], min_free: Optional[int], min_interval: float,
                refault_share: float = _trimalloc.DEFAULTS["trimmer"]["refault_share"]) -> Any:
    """The shared policy (core/bind's ta_bind_trimmer_t, trimalloc._trimalloc.Trimmer),
    its settings checked here: every >= 1 or None, min_free >= 0 or None, not both None,
    refault_share a finite number >= 0 (0: no refault budget; core/bind/binding.h)."""
    every = check_count(every, "every", none=True)
    min_free = check_bytes(min_free, "min_free", none=True)
    interval = check_interval(min_interval)
    share = check_share(refault_share)
    if every is None and min_free is None:
        raise ValueError("every and min_free are both None: nothing would ever trim")
    return _trimalloc.Trimmer(every=every, min_free=min_free, min_interval=interval, refault_share=share)


def event(source: str, trimmer: Any) -> Optional[int]:
    """One event for `trimmer` (decided with the GIL, trimmed without it); tells listeners."""
    released = trimmer.event()
    notify(source, released)
    return released


def event_off_loop(source: str, trimmer: Any) -> Optional[Any]:
    """One event in async code (trimalloc.aiohttp, trimalloc.asgi): decided on
    the event loop (a few atomics), and a due trim run in the running loop's
    default executor, where it releases the GIL, so the loop goes on serving
    while the pages go back. Returns that trim's future, or None (not due, or
    run here because no loop runs or its executor is shut down)."""
    if not trimmer.decide():
        notify(source, None)
        return None
    # asyncio is loaded wherever a loop runs; importing it here would make
    # `import trimalloc` take 90 ms longer.
    asyncio = sys.modules.get("asyncio")
    try:
        loop = asyncio.get_running_loop() if asyncio is not None else None
        if loop is not None:
            return loop.run_in_executor(None, _run, source, trimmer)
    except RuntimeError:  # no running loop, or its executor is shut down
        pass
    _run(source, trimmer)
    return None


def _run(source: str, trimmer: Any) -> Optional[int]:
    released = trimmer.run()
    notify(source, released)
    return released


def trim_if_due(source: str, min_interval: float, min_free: int = 0) -> Optional[int]:
    """The rate-limited trim every hook uses; returns bytes released or None."""
    released = _trimalloc.trim_if_due(min_interval, min_free)
    notify(source, released)
    return released


def notify(source: str, released: Optional[int]) -> None:
    for fn in list(_listeners):
        fn(source, released)


# ---- the heap profiler's tag ----

# The core keeps one tag per thread (trimalloc_prof_set_tag) and cannot be
# asked for it: every setter in the package goes through set_tag, which keeps
# a copy here, so that profile.tag() and Tagged can put the previous one back.
# The copy is a one-item list per thread: one thread-local lookup per step,
# then list indexing (a thread-local attribute costs ~45 ns an access).
_tag = threading.local()
_set_tag = _trimalloc._prof_set_tag


def _cell() -> List[Optional[str]]:
    """This thread's [tag]."""
    try:
        return _tag.cell
    except AttributeError:
        cell: List[Optional[str]] = [None]
        _tag.cell = cell
        return cell


def set_tag(tag: Optional[str]) -> None:
    """This thread's tag (None: none); the caller checked that tag is a str or None."""
    _set_tag(tag)
    _cell()[0] = tag


def current_tag() -> Optional[str]:
    """This thread's tag, as last set through set_tag."""
    return _cell()[0]


# Whether the heap profiler samples now (truthy: the interval in bytes): the
# request and job hooks tag only then, so that with the profiler off (the
# default) a request costs no tag calls and its handler no Tagged wrapper.
# The core's own answer (one C call, an atomic load): it sees sampling
# however it was started or stopped (profile.start/stop, TRIMALLOC_PROF=1,
# `trimalloc run --profile`, the prof option set from C or another binding),
# which a flag kept by profile.start/stop would not; measured 20-25 ns a
# call against 17-18 ns for reading an attribute. A request that began while
# the profiler was off stays untagged if it is switched on before the
# request ends; one that began tagged has its tag put back whatever happens
# to the profiler meanwhile.
profiling = _trimalloc._prof_interval


def clear_tag() -> None:
    """Clears this thread's tag if set_tag set one (a job's or request's end:
    whatever its start set, even if the profiler was stopped since)."""
    try:
        cell = _tag.cell
    except AttributeError:  # once per thread (a raise each time would cost ~0.3 us)
        cell = _cell()
    if cell[0] is not None:  # set_tag(None) written out: one thread-local lookup, not two
        _set_tag(None)
        cell[0] = None


# To type checkers Tagged is a Generator, which an __await__ must return: it
# has a generator's methods (__next__, send, throw, close, __iter__), so
# collections.abc.Generator counts it as one at run time too.
if TYPE_CHECKING:
    _GeneratorBase = Generator[Any, Any, Any]
else:
    _GeneratorBase = object


class Tagged(_GeneratorBase):
    """await Tagged(awaitable, tag): awaits `awaitable` with the thread's tag
    set to `tag` during each of its steps (its start and every resumption),
    and the tag it found put back whenever it suspends or ends.

    Under asyncio many requests take turns on one thread; a tag set at a
    request's start would label the samples of whatever runs after its first
    await. Why a wrapper and not a ContextVar with a task factory: a context
    has no hook where a task resumes, so the C tag would still need setting on
    every step, by a factory each middleware would have to install on a loop
    the server owns (replacing any factory the application set). This wrapper
    sits between the middleware and the application's coroutine and needs
    nothing of the loop. Its cost (bench/results-2026-12-06-tagged.txt):
    0.10-0.25 us per resumption (two calls into the core, a thread-local
    lookup, a Python frame), next to an asyncio.sleep(0) round trip of 4.3 us.
    The tag a step leaves (a profile.tag() block entered, not yet left) is
    kept for the next step, so that tag() holds across awaits in the wrapped
    code. Work the awaitable hands to other tasks (asyncio.create_task,
    gather) runs under its own wrapper, or untagged."""

    __slots__ = ("_it", "_tag")

    def __init__(self, awaitable: Any, tag: Optional[str]) -> None:
        if tag is not None and not isinstance(tag, str):
            raise TypeError("tag must be a str or None, not %r" % (tag,))
        # a coroutine is stepped directly: its __await__ would add a call per step
        if type(awaitable) in (CoroutineType, GeneratorType):  # a generator: @types.coroutine
            it = awaitable
        elif callable(getattr(awaitable, "__await__", None)):
            it = awaitable.__await__()
        else:
            raise TypeError("awaitable must be a coroutine or awaitable, not %r" % (awaitable,))
        self._it = it if hasattr(it, "send") else _generator(it)
        self._tag = tag

    def __await__(self) -> Tagged:
        return self

    def __iter__(self) -> Tagged:
        return self

    # A resumption with None (what asyncio's tasks send) comes through
    # __next__: _step written out, because it is the per-resumption path (a
    # call less); other values (send), throw and close go through _step.
    def __next__(self) -> Any:
        try:
            cell = _tag.cell
        except AttributeError:
            cell = _cell()
        outer = cell[0]
        if self._tag is not outer:
            _set_tag(self._tag)
            cell[0] = self._tag
        try:
            return self._it.send(None)
        finally:
            self._tag = left = cell[0]
            if left is not outer:
                _set_tag(outer)
                cell[0] = outer

    def send(self, value: Any) -> Any:
        return self._step(self._it.send, value)

    def throw(self, *exc: Any) -> Any:
        return self._step(self._it.throw, *exc)

    def close(self) -> None:
        self._step(self._it.close)

    def _step(self, fn: Callable[..., Any], *args: Any) -> Any:
        cell = _cell()
        outer = cell[0]
        if self._tag is not outer:
            _set_tag(self._tag)
            cell[0] = self._tag
        try:
            return fn(*args)
        finally:
            self._tag = left = cell[0]
            if left is not outer:
                _set_tag(outer)
                cell[0] = outer


def _generator(it: Any) -> Generator[Any, Any, Any]:
    """An iterator without send (an __await__ may return one) as a generator."""
    return (yield from it)
