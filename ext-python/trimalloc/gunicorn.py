"""trimalloc.gunicorn: gunicorn server hooks.

    # gunicorn.conf.py
    import trimalloc.preload          # optional, first: the master (and so every worker) on trimalloc
    from trimalloc.gunicorn import post_request, post_worker_init

or start gunicorn with `trimalloc run -- gunicorn -c gunicorn.conf.py app:app`.
post_request trims every `every` requests, or sooner past `min_free` bytes free
but resident, at most once per `min_interval` seconds, with the request hooks'
defaults (_trimalloc.DEFAULTS["request"], from core/bind/bind_facts.c; the
policy of trimalloc.wsgi, shared with the Ruby gem's Rack middleware); build
one with other settings with
make_post_request(every=..., min_free=..., min_interval=...). post_worker_init
logs which allocator the worker runs on.

Some worker classes never call post_request: aiohttp's
(`-k aiohttp.GunicornWebWorker`) and uvicorn's (`-k uvicorn.workers.UvicornWorker`).
There post_worker_init, which runs after the worker loaded the application,
puts the config's post_request policy (and its counters) into the application
itself: trimalloc.aiohttp's middleware, or trimalloc.asgi's around it. Where
it cannot reach the application (another worker class, an aiohttp
application already started), it logs one warning at worker start naming what
to use instead.

pre_request (optional: `from trimalloc.gunicorn import pre_request`) sets the
worker thread's heap-profiler tag (trimalloc.profile) to the request's path
while the profiler samples, which post_request clears; it also logs
gunicorn's own debug line.
"""
from __future__ import annotations

import logging
import sys
from typing import Any, Callable, Optional, Tuple

from . import _hooks, _trimalloc
from .wsgi import _UNSET, DEFAULT_EVERY, DEFAULT_MIN_INTERVAL, RequestTrimmer


def make_post_request(every: Optional[int] = DEFAULT_EVERY, min_free: Any = _UNSET,
                      min_interval: float = DEFAULT_MIN_INTERVAL,
                      free_threshold: Any = _UNSET) -> Callable[..., None]:
    """A post_request hook with its own RequestTrimmer (free_threshold: the old name of min_free)."""
    trimmer = RequestTrimmer(every, min_free, min_interval, "gunicorn", free_threshold)

    def post_request(worker: Any, req: Any, environ: Any, resp: Any) -> None:
        _hooks.clear_tag()  # what pre_request set, even if the profiler was stopped since
        trimmer.request_done()

    post_request.trimmer = trimmer  # type: ignore[attr-defined]
    return post_request


post_request = make_post_request()


def pre_request(worker: Any, req: Any) -> None:
    """gunicorn's pre_request: its debug line, and the request's path as this
    thread's heap-profiler tag (post_request clears it)."""
    worker.log.debug("%s %s", req.method, req.path)
    if _hooks.profiling():  # off: no tag calls (a request begun while off stays untagged)
        path = getattr(req, "path", None)
        _hooks.set_tag(path if isinstance(path, str) and path else None)


def backend_line(pid: object) -> str:
    """The line post_worker_init logs, saying which allocator the worker runs on
    (and, on glibc, how to change that)."""
    msg = "trimalloc: worker %s runs on %s" % (pid, _trimalloc.backend())
    path = _trimalloc.loaded_path()
    if path:
        return msg + " (%s)" % path
    return msg + (" (trimalloc is not preloaded: start gunicorn with `trimalloc run --`, or put "
                  "`import trimalloc.preload` first in gunicorn.conf.py); trims call malloc_trim")


# Worker classes that call the post_request hook after each request (and so
# their subclasses, e.g. gevent's and eventlet's AsyncWorker).
_CALLS_POST_REQUEST = {("gunicorn.workers.sync", "SyncWorker"),
                       ("gunicorn.workers.gthread", "ThreadWorker"),
                       ("gunicorn.workers.base_async", "AsyncWorker")}
_AIOHTTP_WORKER = ("aiohttp.worker", "GunicornWebWorker")
_UVICORN_WORKER = ("uvicorn.workers", "UvicornWorker")


def _is(worker: Any, classes: Any) -> bool:
    return any((c.__module__, c.__name__) in classes for c in type(worker).__mro__)


def _class_name(worker: Any) -> str:
    return "%s.%s" % (type(worker).__module__, type(worker).__name__)


def _aiohttp_app(obj: Any) -> Any:
    """The aiohttp Application in obj (an Application or an AppRunner), or None."""
    web = sys.modules.get("aiohttp.web")
    if web is None:
        return None
    if isinstance(obj, web.AppRunner):
        obj = obj.app
    return obj if isinstance(obj, web.Application) else None


def _into_aiohttp(app: Any, requests: RequestTrimmer) -> str:
    """Puts trimalloc.aiohttp's middleware, counting in `requests`, into app;
    what happened, as the end of a log line."""
    from . import aiohttp as ta_aiohttp
    if ta_aiohttp.installed(app) is not None:
        return "the application has trimalloc.aiohttp's middleware already"
    ta_aiohttp.add(app, ta_aiohttp.TrimMiddleware.sharing(requests))
    return "trimalloc.aiohttp's middleware trims instead, with post_request's policy and counters"


def reach_app(worker: Any) -> Optional[Tuple[str, str]]:
    """For a worker whose class never calls post_request (aiohttp's, uvicorn's),
    while the config's post_request is trimalloc's: puts the same policy into
    the worker's application (loaded before post_worker_init runs). Returns
    (level, line) to log, or None when there is nothing to say."""
    requests = getattr(getattr(getattr(worker, "cfg", None), "post_request", None), "trimmer", None)
    if not isinstance(requests, RequestTrimmer) or _is(worker, _CALLS_POST_REQUEST):
        return None
    head = "trimalloc: worker %s: %s never calls post_request; " % (
        getattr(worker, "pid", "?"), _class_name(worker))
    app: Any = getattr(worker, "wsgi", None)  # whatever the worker class loaded (or None)
    try:
        if _aiohttp_app(app) is not None:
            return "info", head + _into_aiohttp(_aiohttp_app(app), requests)
        if _is(worker, {_AIOHTTP_WORKER}) and sys.modules["asyncio"].iscoroutinefunction(app):
            factory = app
            policy: RequestTrimmer = requests  # as checked above: a closure does not see the narrowing

            async def app_with_trim() -> Any:
                made = await factory()
                level, line = "warning", head + _INSTEAD
                try:
                    if _aiohttp_app(made) is not None:
                        level, line = "info", head + _into_aiohttp(_aiohttp_app(made), policy)
                except ValueError as e:  # a frozen application
                    line = head + "%s; %s" % (e, _INSTEAD)
                getattr(getattr(worker, "log", None) or logging.getLogger("gunicorn.error"), level)(line)
                return made

            worker.wsgi = app_with_trim
            return None  # said when the factory has made the application
        if _is(worker, {_UVICORN_WORKER}) and callable(app):
            from .asgi import TrimMiddleware
            worker.wsgi = TrimMiddleware.sharing(app, requests)
            return "info", head + ("trimalloc.asgi's middleware trims instead, with post_request's "
                                   "policy and counters")
    except ValueError as e:  # a frozen application
        return "warning", head + "%s; %s" % (e, _INSTEAD)
    return "warning", head + _INSTEAD


_INSTEAD = ("trimalloc.gunicorn.post_request will not trim in it: use trimalloc.aiohttp.install(app) "
            "(aiohttp), trimalloc.asgi.TrimMiddleware (ASGI) or trimalloc.wsgi.TrimMiddleware (WSGI) "
            "in the application instead")


def post_worker_init(worker: Any) -> None:
    """Logs which allocator the worker runs on; where the worker class never
    calls post_request, gives its application the same trim (reach_app)."""
    log = getattr(worker, "log", None)
    if log is not None:
        log.info(backend_line(getattr(worker, "pid", "?")))
    said = reach_app(worker)
    if said is not None:
        level, line = said
        if log is not None:
            getattr(log, level)(line)
        else:
            getattr(logging.getLogger("gunicorn.error"), level)(line)
