"""The heap profiler: which Python code holds the memory.

trimalloc samples allocations (on average one every `interval` bytes, each
sample weighted so that the totals are unbiased) with the native call stack
and, when the allocating thread holds the GIL, the Python functions above it.
A dump is a gzipped pprof profile (`trimalloc top FILE`, `trimalloc flame
FILE -o out.svg`, `go tool pprof`, speedscope); `top()` gives the biggest
call paths as data.

    from trimalloc import profile
    profile.start()                    # or: trimalloc run --profile DIR -- CMD
    ...
    for row in profile.top(5):
        print(row["inuse_space"], row["frames"][:3])
    profile.dump("/tmp/app.pb.gz")

Needs trimalloc as the process's allocator (`trimalloc run`); start, dump
and top raise trimalloc.Error (a RuntimeError) saying so otherwise, while
set_tag and tag() do nothing, so that job and request hooks may call them
anywhere.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Any, Coroutine, Dict, Iterator, List, Optional, Tuple

from . import _hooks, _trimalloc

__all__ = ["start", "stop", "interval", "dump", "top", "reset_peak", "set_tag", "tag", "tagged"]

# core/bind's (bind_facts.c): dump's kinds, the sample types, the interval's bound
_KINDS: Dict[str, int] = _trimalloc.PROF_KINDS
_ORDERS: Tuple[str, ...] = _trimalloc.SAMPLE_TYPES
_MAX_INTERVAL: int = _trimalloc.PROF_MAX_INTERVAL


def _need() -> None:
    why = _trimalloc._prof_available()
    if why is not None:
        raise _trimalloc.Error(why)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def start(interval: Optional[int] = None) -> None:
    """Starts sampling: on average one sample every `interval` bytes
    allocated (None: keep the current interval, TRIMALLOC_PROF_INTERVAL or
    512 KiB). Smaller is more precise and costs more; 1 samples everything."""
    if interval is None:
        value = 0
    elif not _is_int(interval):
        raise TypeError("interval must be an int (bytes) or None, not %r" % (interval,))
    elif not 1 <= interval <= _MAX_INTERVAL:
        raise ValueError("interval must be 1 .. %d bytes (1 GiB), not %r" % (_MAX_INTERVAL, interval))
    else:
        value = interval
    _need()
    _trimalloc._prof_start(value)


def stop() -> None:
    """Stops sampling. What was sampled stays in the live set until freed."""
    _trimalloc._prof_stop()


def interval() -> int:
    """The mean sampling interval in bytes; 0 while sampling is off."""
    return _trimalloc._prof_interval()


def _kind(kind: Any) -> int:
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError("kind must be 'live' or 'peak', not %r" % (kind,))
    return _KINDS[kind]


def dump(path: Optional[str] = None, kind: str = "live") -> str:
    """Writes a profile (gzipped pprof) of the sampled memory that is live
    now ("live") or was live at the highest point since start or reset_peak()
    ("peak"); returns the path written. path None: TRIMALLOC_PROF_PREFIX
    (default /tmp/trimalloc) + .<pid>.<seq>.<dump|peak>.pb.gz."""
    k = _kind(kind)
    if path is not None:
        path = os.fspath(path)
        if isinstance(path, bytes):
            path = os.fsdecode(path)
        if not path:
            raise ValueError("path must not be empty (None: the default name)")
    _need()
    return _trimalloc._prof_dump(path, k)


def top(n: int = 10, by: str = "inuse_space", kind: str = "live") -> List[Dict[str, Any]]:
    """The n call paths holding the most `by` (inuse_space, inuse_objects,
    alloc_space or alloc_objects), largest first, as dicts with those four
    numbers, "frames" (leaf first: "function (file:line)") and "tag" (or
    None). n 0: all of them. A dump into a temporary file, read and removed."""
    if not _is_int(n):
        raise TypeError("n must be an int, not %r" % (n,))
    if n < 0:
        raise ValueError("n must be >= 0, not %r" % (n,))
    if not isinstance(by, str) or by not in _ORDERS:
        raise ValueError("by must be one of %s, not %r" % (", ".join(_ORDERS), by))
    k = _kind(kind)
    _need()
    fd, path = tempfile.mkstemp(prefix="trimalloc-top.", suffix=".pb.gz")
    os.close(fd)
    try:
        _trimalloc._prof_dump(path, k)
        return _trimalloc._prof_top(path, by, n)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass


def reset_peak() -> None:
    """Starts a new peak: the peak profile is the highest point from now
    (e.g. after each job)."""
    _trimalloc._prof_reset_peak()


def set_tag(tag: Optional[str]) -> None:
    """This thread's tag (a task name, a route): a "tag" label on its
    samples (at most 63 bytes kept). None or "" clears it."""
    if tag is not None and not isinstance(tag, str):
        raise TypeError("tag must be a str or None, not %r" % (tag,))
    _hooks.set_tag(tag or None)


@contextlib.contextmanager
def tag(name: Optional[str]) -> Iterator[None]:
    """with profile.tag("nightly-report"): ... -- the samples of this thread
    inside the block carry the tag; the previous tag comes back after.

    In a coroutine, the tag holds across awaits only where the coroutine runs
    under tagged() -- as every request handler under trimalloc.aiohttp's and
    trimalloc.asgi's middlewares does when its request began while the
    profiler sampled: elsewhere a tag is the thread's, and whatever the event
    loop runs while the block awaits carries it too."""
    previous = _hooks.current_tag()
    set_tag(name)
    try:
        yield
    finally:
        set_tag(previous)


def tagged(awaitable: Any, name: Optional[str]) -> Coroutine[Any, Any, Any]:
    """await profile.tagged(coro, "nightly-report"), or
    asyncio.create_task(profile.tagged(coro, name)): runs coro with this
    thread's tag set to name at each of its steps (the start and every
    resumption after an await) and the loop's own tag back while it is
    suspended, so that coroutines taking turns on one thread each label their
    own samples; tag() inside it holds across awaits. Costs two C calls and a
    few attribute accesses per resumption. Tasks that coro starts (create_task,
    gather) are not covered: wrap them too."""
    if name is not None and not isinstance(name, str):
        raise TypeError("name must be a str or None, not %r" % (name,))
    return _await(_hooks.Tagged(awaitable, name or None))


async def _await(awaitable: Any) -> Any:
    """A coroutine (what create_task takes) awaiting awaitable."""
    return await awaitable
