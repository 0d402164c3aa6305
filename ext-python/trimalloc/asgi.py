"""trimalloc.asgi: trim between requests of any ASGI 3 application.

    from trimalloc.asgi import TrimMiddleware
    app = TrimMiddleware(app)              # the request hooks' defaults: _trimalloc.DEFAULTS["request"]
    # Starlette / FastAPI: app.add_middleware(TrimMiddleware)

Served by uvicorn, hypercorn, daphne, or gunicorn's uvicorn.workers.UvicornWorker
(with the README's gunicorn config, post_worker_init wraps the application
itself: that worker never calls post_request).

Once the response's last body message (`http.response.body` without
`more_body`) has been sent, the middleware counts one request on the event
loop (a few atomics); a trim that is due (the policy of trimalloc.wsgi, shared
with the Ruby gem's Rack middleware: every `every` requests, or sooner past
`min_free` bytes free but resident, never twice within `min_interval` seconds)
runs in the loop's default executor, where it releases the GIL: the loop goes
on serving while the pages go back. A request whose application raises, or
that ends without a complete response, counts when it ends. Lifespan and
websocket scopes pass through uncounted.

For the heap profiler (trimalloc.profile), while it samples, the request's
samples carry its path as their tag (scope["path"], without the query string:
the route template is only known inside the application): the application
runs under profile.tagged, which sets the thread's tag at each of its steps,
so requests taking turns on the event loop's thread each label their own
samples (and profile.tag() in the application holds across awaits). Tasks the
application starts (asyncio.create_task, gather) run untagged unless wrapped
in profile.tagged themselves. With the profiler off (the default) the
application's coroutine is awaited directly, with no wrapper and no tag
calls; a request that began before the profiler was switched on runs
untagged to its end (and a profile.tag() block in it is the thread's, as
outside any request).
"""
from __future__ import annotations

from typing import Any, Awaitable, Callable, Dict, List, Optional

from . import _hooks
from .wsgi import _UNSET, DEFAULT_EVERY, DEFAULT_MIN_INTERVAL, RequestTrimmer

Message = Dict[str, Any]
Send = Callable[[Message], Awaitable[None]]


class TrimMiddleware(RequestTrimmer):
    """ASGI middleware: trims, off the event loop, after every `every`
    responses or past `min_free` free bytes; .stats() has its counters."""

    def __init__(self, app: Any, every: Optional[int] = DEFAULT_EVERY, min_free: Any = _UNSET,
                 min_interval: float = DEFAULT_MIN_INTERVAL) -> None:
        if not callable(app):
            raise TypeError("app must be an ASGI application, not %r" % (app,))
        RequestTrimmer.__init__(self, every, min_free, min_interval, "asgi")
        self.app = app

    @classmethod
    def sharing(cls, app: Any, requests: RequestTrimmer) -> TrimMiddleware:
        """app wrapped in a middleware that counts in `requests`'s policy
        (gunicorn's post_request hook)."""
        if not callable(app):
            raise TypeError("app must be an ASGI application, not %r" % (app,))
        if not isinstance(requests, RequestTrimmer):
            raise TypeError("requests must be a trimalloc RequestTrimmer, not %r" % (requests,))
        self = cls.__new__(cls)
        self.source = "asgi"
        self.trimmer = requests.trimmer
        self.app = app
        return self

    async def __call__(self, scope: Message, receive: Callable[[], Awaitable[Message]],
                       send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        counted: List[bool] = []

        def done() -> None:
            if not counted:
                counted.append(True)
                _hooks.event_off_loop(self.source, self.trimmer)

        async def send_then_count(message: Message) -> None:
            await send(message)
            if message.get("type") == "http.response.body" and not message.get("more_body", False):
                done()

        try:
            if _hooks.profiling():
                path = scope.get("path")
                tag = path if isinstance(path, str) and path else None
                await _hooks.Tagged(self.app(scope, receive, send_then_count), tag)
            else:  # the profiler off: the application's coroutine awaited as it is
                await self.app(scope, receive, send_then_count)
        finally:
            done()
