"""trimalloc.aiohttp: trim between requests of an aiohttp server.

    from aiohttp import web
    import trimalloc.aiohttp
    app = web.Application()
    trimalloc.aiohttp.install(app)    # the request hooks' defaults: _trimalloc.DEFAULTS["request"]

or web.Application(middlewares=[trimalloc.aiohttp.TrimMiddleware(), ...]), first
in the list. It works under web.run_app and under gunicorn's
aiohttp.GunicornWebWorker. With the README's gunicorn config (`from
trimalloc.gunicorn import post_request, post_worker_init`) nothing more is
needed: aiohttp's worker never calls post_request, so post_worker_init puts
this middleware into the worker's application, counting in post_request's
policy.

When a response has been sent (its write_eof returned: the last bytes are
with the transport), the middleware counts one request on the event loop (a
few atomics); a trim that is due (the policy of trimalloc.wsgi, shared with
the Ruby gem's Rack middleware: every `every` requests, or sooner past
`min_free` bytes free but resident, never twice within `min_interval`
seconds) runs in the loop's default executor, where it releases the GIL: the
loop goes on serving other requests while the pages go back. A handler that
raises counts when it raises.

For the heap profiler (trimalloc.profile), while it samples, the handler's
samples carry the matched route's template as their tag (e.g. "/users/{id}",
else the request's path): the handler runs under profile.tagged, which sets
the thread's tag at each of its steps, so requests taking turns on the event
loop's thread each label their own samples (and profile.tag() in a handler
holds across awaits). Tasks the handler starts (asyncio.create_task, gather)
run untagged unless wrapped in profile.tagged themselves. With the profiler
off (the default) the handler's coroutine is awaited directly, with no
wrapper and no tag calls; a request that began before the profiler was
switched on runs untagged to its end.
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, List, Optional

from aiohttp import web

from . import _hooks
from .wsgi import _UNSET, DEFAULT_EVERY, DEFAULT_MIN_INTERVAL, RequestTrimmer


class TrimMiddleware(RequestTrimmer):
    """aiohttp middleware: trims, off the event loop, after every `every`
    responses or past `min_free` free bytes; .stats() has its counters."""

    __middleware_version__ = 1  # a new-style middleware: called as (request, handler)

    def __init__(self, every: Optional[int] = DEFAULT_EVERY, min_free: Any = _UNSET,
                 min_interval: float = DEFAULT_MIN_INTERVAL) -> None:
        RequestTrimmer.__init__(self, every, min_free, min_interval, "aiohttp")

    @classmethod
    def sharing(cls, requests: RequestTrimmer) -> TrimMiddleware:
        """A middleware that counts in `requests`'s policy (gunicorn's post_request hook)."""
        if not isinstance(requests, RequestTrimmer):
            raise TypeError("requests must be a trimalloc RequestTrimmer, not %r" % (requests,))
        self = cls.__new__(cls)
        self.source = "aiohttp"
        self.trimmer = requests.trimmer
        return self

    async def __call__(self, request: Any, handler: Callable[[Any], Awaitable[Any]]) -> Any:
        try:
            if _hooks.profiling():
                resp = await _hooks.Tagged(handler(request), _route(request))
            else:  # the profiler off: the handler's coroutine awaited as it is
                resp = await handler(request)
        except BaseException:  # an HTTPException, an error, a cancelled request
            self._done()
            raise
        if not _after_send(resp, self._done):
            self._done()
        return resp

    def _done(self) -> None:
        _hooks.event_off_loop(self.source, self.trimmer)


def _route(request: Any) -> Optional[str]:
    """The matched route's template ("/users/{id}"), else the path."""
    try:
        canonical = request.match_info.route.resource.canonical
    except AttributeError:  # no resource: a 404, a system route
        canonical = None
    if isinstance(canonical, str) and canonical:
        return canonical
    path = getattr(request, "path", None)
    return path if isinstance(path, str) and path else None


def _after_send(resp: Any, done: Callable[[], None]) -> bool:
    """Arranges for done() once aiohttp has sent resp (its write_eof returned
    or raised) or failed to (its prepare raised); False when resp was sent
    already or cannot be followed (then the caller counts now)."""
    if not isinstance(resp, web.StreamResponse) or getattr(resp, "_eof_sent", False):
        return False  # no response (aiohttp answers 500), or one the handler finished itself
    own_prepare, own_eof = resp.prepare, resp.write_eof
    fired: List[bool] = []

    def fire() -> None:
        if not fired:
            fired.append(True)
            for name in ("prepare", "write_eof"):  # resp back to its own methods
                resp.__dict__.pop(name, None)
            done()

    async def prepare(*args: Any, **kwargs: Any) -> Any:
        try:
            return await own_prepare(*args, **kwargs)
        except BaseException:
            fire()
            raise

    async def write_eof(*args: Any, **kwargs: Any) -> Any:
        try:
            return await own_eof(*args, **kwargs)
        finally:
            fire()

    # Instance attributes shadowing the methods, on this response only (fire()
    # removes them): deliberate, hence the ignores.
    try:
        resp.prepare = prepare  # type: ignore[assignment]
        resp.write_eof = write_eof  # type: ignore[assignment]
    except (AttributeError, TypeError):  # a response type with __slots__
        for name in ("prepare", "write_eof"):
            getattr(resp, "__dict__", {}).pop(name, None)
        return False
    return True


def install(app: Any, every: Optional[int] = DEFAULT_EVERY, min_free: Any = _UNSET,
            min_interval: float = DEFAULT_MIN_INTERVAL) -> TrimMiddleware:
    """Puts a TrimMiddleware first in app's middlewares (before the app starts); returns it."""
    mw = TrimMiddleware(every, min_free, min_interval)
    add(app, mw)
    return mw


def add(app: Any, mw: TrimMiddleware) -> None:
    """Puts mw first in app's middlewares: the outermost, so that it sees the
    response every other middleware made."""
    if not isinstance(app, web.Application):
        raise TypeError("app must be an aiohttp.web.Application, not %r" % (app,))
    if not isinstance(mw, TrimMiddleware):
        raise TypeError("mw must be a trimalloc.aiohttp.TrimMiddleware, not %r" % (mw,))
    if app.frozen:
        raise ValueError("app %r has started (its middlewares are frozen): install the "
                         "middleware before it runs" % (app,))
    app.middlewares.insert(0, mw)


def installed(app: Any) -> Optional[TrimMiddleware]:
    """The TrimMiddleware in app's middlewares, or None."""
    for m in getattr(app, "middlewares", ()):
        if isinstance(m, TrimMiddleware):
            return m
    return None
