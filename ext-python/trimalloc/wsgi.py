"""trimalloc.wsgi: trim between requests.

    from trimalloc.wsgi import TrimMiddleware
    application = TrimMiddleware(application)  # the request hooks' defaults: _trimalloc.DEFAULTS["request"]

After a response is closed (PEP 3333: the server calls close() on the body),
the middleware trims when `every` requests have ended since its last trim, or
sooner when the allocator holds at least `min_free` bytes free but resident;
never twice within `min_interval` seconds (process-wide). None turns `every` or
`min_free` off. A trim skipped by the rate limit is tried again after the next
request. The policy is core/bind's (trimalloc._trimalloc.Trimmer), the same as
the Ruby gem's Rack middleware: deciding costs a few atomics and a clock read.

A body that is the server's wsgi.file_wrapper stays one (gunicorn keeps
sending it with sendfile): its close() is wrapped in place.
(`free_threshold` is the old name of `min_free`, accepted with a
DeprecationWarning for one release.)

For the heap profiler (trimalloc.profile), while it samples, the thread's tag
is the request's path (PATH_INFO: WSGI has no route template) from the call
until the body is closed: a "tag" label on the samples the request takes.
With the profiler off (the default) the middleware sets no tag; a request
that began before the profiler was switched on stays untagged.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, Iterator, Optional

from . import _hooks, _trimalloc

# core/bind's defaults for request hooks (core/bind/bind_facts.c, which says
# why; the same as the Ruby gem's Rack middleware)
DEFAULT_EVERY = _trimalloc.DEFAULTS["request"]["every"]
DEFAULT_MIN_FREE = _trimalloc.DEFAULTS["request"]["min_free"]
DEFAULT_MIN_INTERVAL = _trimalloc.DEFAULTS["request"]["min_interval"]
DEFAULT_FREE_THRESHOLD = DEFAULT_MIN_FREE  # the old name

_UNSET = object()


class RequestTrimmer:
    """Counts finished requests and trims when due (shared by WSGI and gunicorn)."""

    def __init__(self, every: Optional[int] = DEFAULT_EVERY, min_free: Any = _UNSET,
                 min_interval: float = DEFAULT_MIN_INTERVAL, source: str = "wsgi",
                 free_threshold: Any = _UNSET) -> None:
        if free_threshold is not _UNSET:
            if min_free is not _UNSET:
                raise TypeError("give min_free or its old name free_threshold, not both")
            min_free = _hooks.renamed("free_threshold", "min_free", free_threshold,
                                      "trimalloc.%s" % source, stacklevel=4)
        if min_free is _UNSET:
            min_free = DEFAULT_MIN_FREE
        self.source = source
        self.trimmer = _hooks.new_trimmer(every, min_free, min_interval)

    every = property(lambda self: self.trimmer.every)
    min_free = property(lambda self: self.trimmer.min_free)
    min_interval = property(lambda self: self.trimmer.min_interval)
    free_threshold = min_free  # the old name
    requests = property(lambda self: self.trimmer.stats()["events"])
    trims = property(lambda self: self.trimmer.stats()["trims"])
    trimmed_bytes = property(lambda self: self.trimmer.stats()["trimmed_bytes"])

    def stats(self) -> Dict[str, int]:
        """{events, trims, skipped, coalesced, trimmed_bytes}"""
        return self.trimmer.stats()

    def request_done(self) -> Optional[int]:
        """Call once per finished request; returns bytes released or None."""
        return _hooks.event(self.source, self.trimmer)


class _ClosingBody:
    def __init__(self, body: Iterable[bytes], on_close: Callable[[], Any]) -> None:
        self._body = body
        self._on_close = on_close

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._body)

    def close(self) -> None:
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


def _close_then(body: Any, on_close: Callable[[], Any]) -> Optional[Any]:
    """The same body object with on_close run after its own close(), or None
    when its close cannot be replaced."""
    own = getattr(body, "close", None)

    def close() -> None:
        try:
            if own is not None:
                own()
        finally:
            on_close()

    try:
        body.close = close
    except (AttributeError, TypeError):
        return None
    return body


class TrimMiddleware(RequestTrimmer):
    """WSGI middleware: trims after every `every` requests or past `min_free` free bytes."""

    def __init__(self, app: Callable[..., Iterable[bytes]], every: Optional[int] = DEFAULT_EVERY,
                 min_free: Any = _UNSET, min_interval: float = DEFAULT_MIN_INTERVAL,
                 free_threshold: Any = _UNSET) -> None:
        if not callable(app):
            raise TypeError("app must be a WSGI callable, not %r" % (app,))
        RequestTrimmer.__init__(self, every, min_free, min_interval, "wsgi", free_threshold)
        self.app = app

    def __call__(self, environ: Any, start_response: Any) -> Iterable[bytes]:
        # Tagged only while the profiler samples (_hooks.profiling): off, the
        # request makes no tag calls. A request tagged here is untagged when
        # its body closes, even if the profiler was stopped meanwhile.
        if _hooks.profiling():
            path = environ.get("PATH_INFO") if isinstance(environ, dict) else None
            _hooks.set_tag(path if isinstance(path, str) and path else None)
            ended: Callable[[], Any] = self._ended
        else:
            ended = self.request_done
        try:
            body = self.app(environ, start_response)
        except BaseException:
            ended()
            raise
        wrapper = environ.get("wsgi.file_wrapper") if isinstance(environ, dict) else None
        if isinstance(wrapper, type) and isinstance(body, wrapper):
            kept = _close_then(body, ended)  # still a file_wrapper: sendfile works
            if kept is not None:
                return kept
        return _ClosingBody(body, ended)

    def _ended(self) -> None:
        _hooks.set_tag(None)
        self.request_done()
