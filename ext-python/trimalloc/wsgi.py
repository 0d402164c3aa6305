"""trimalloc.wsgi: trim between requests.

    from trimalloc.wsgi import TrimMiddleware
    application = TrimMiddleware(application, every=100, free_threshold=64 << 20)

After a response is closed (PEP 3333: the server calls close() on the body),
the middleware trims when `every` requests have ended since its last trim, or
earlier when the allocator holds `free_threshold` bytes that are free but
resident. Both go through the process-wide rate limit (min_interval seconds).
"""
import threading
from typing import Any, Callable, Iterable, Iterator, Optional

from . import _hooks

DEFAULT_EVERY = 100
DEFAULT_FREE_THRESHOLD = 64 << 20
DEFAULT_MIN_INTERVAL = 1.0


class RequestTrimmer:
    """Counts finished requests and trims when due (shared by WSGI and gunicorn)."""

    def __init__(self, every=DEFAULT_EVERY, free_threshold=DEFAULT_FREE_THRESHOLD,
                 min_interval=DEFAULT_MIN_INTERVAL, source="wsgi"):
        # type: (Optional[int], Optional[int], float, str) -> None
        if every is None and free_threshold is None:
            raise ValueError("every and free_threshold are both None: nothing would trim")
        self.every = None if every is None else _hooks.check_count(every, "every")
        self.free_threshold = (
            None if free_threshold is None else _hooks.check_bytes(free_threshold, "free_threshold")
        )
        self.min_interval = _hooks.check_interval(min_interval)
        self.source = source
        self.requests = 0
        self.trims = 0
        self.trimmed_bytes = 0
        self._since_trim = 0
        self._lock = threading.Lock()

    def request_done(self):
        # type: () -> Optional[int]
        """Call once per finished request; returns bytes released or None."""
        with self._lock:
            self.requests += 1
            self._since_trim += 1
            due = self.every is not None and self._since_trim >= self.every
        if due:
            released = _hooks.trim_if_due(self.source, self.min_interval, 0)
        elif self.free_threshold is not None:
            released = _hooks.trim_if_due(self.source, self.min_interval, self.free_threshold)
        else:
            return None
        if released is not None:
            with self._lock:
                self._since_trim = 0
                self.trims += 1
                self.trimmed_bytes += released
        return released


class _ClosingBody:
    def __init__(self, body, on_close):
        # type: (Iterable[bytes], Callable[[], Any]) -> None
        self._body = body
        self._on_close = on_close

    def __iter__(self):
        # type: () -> Iterator[bytes]
        return iter(self._body)

    def close(self):
        # type: () -> None
        try:
            close = getattr(self._body, "close", None)
            if close is not None:
                close()
        finally:
            self._on_close()


class TrimMiddleware(RequestTrimmer):
    """WSGI middleware: trims after every `every` requests or past `free_threshold`."""

    def __init__(self, app, every=DEFAULT_EVERY, free_threshold=DEFAULT_FREE_THRESHOLD,
                 min_interval=DEFAULT_MIN_INTERVAL):
        # type: (Callable[..., Iterable[bytes]], Optional[int], Optional[int], float) -> None
        if not callable(app):
            raise TypeError("app must be a WSGI callable, not %r" % (app,))
        RequestTrimmer.__init__(self, every, free_threshold, min_interval, "wsgi")
        self.app = app

    def __call__(self, environ, start_response):
        # type: (Any, Any) -> Iterable[bytes]
        try:
            body = self.app(environ, start_response)
        except BaseException:
            self.request_done()
            raise
        return _ClosingBody(body, self.request_done)
