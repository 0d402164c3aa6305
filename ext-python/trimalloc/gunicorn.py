"""trimalloc.gunicorn: gunicorn server hooks.

    # gunicorn.conf.py
    from trimalloc.gunicorn import post_request, post_worker_init

and start gunicorn on trimalloc: `trimalloc run -- gunicorn -c gunicorn.conf.py app:app`.
post_request trims every 100 requests, or earlier past 64 MiB free but
resident, at most once a second (see trimalloc.wsgi.RequestTrimmer); build one
with other settings with make_post_request(every=..., free_threshold=...,
min_interval=...). post_worker_init logs which allocator the worker runs on.
"""
from typing import Any, Callable, Optional

from . import _trimalloc
from .wsgi import (DEFAULT_EVERY, DEFAULT_FREE_THRESHOLD, DEFAULT_MIN_INTERVAL,
                   RequestTrimmer)


def make_post_request(every=DEFAULT_EVERY, free_threshold=DEFAULT_FREE_THRESHOLD,
                      min_interval=DEFAULT_MIN_INTERVAL):
    # type: (Optional[int], Optional[int], float) -> Callable[..., None]
    trimmer = RequestTrimmer(every, free_threshold, min_interval, "gunicorn")

    def post_request(worker, req, environ, resp):
        # type: (Any, Any, Any, Any) -> None
        trimmer.request_done()

    post_request.trimmer = trimmer  # type: ignore[attr-defined]
    return post_request


post_request = make_post_request()


def post_worker_init(worker):
    # type: (Any) -> None
    msg = "trimalloc: worker %s runs on %s" % (getattr(worker, "pid", "?"), _trimalloc.backend())
    path = _trimalloc.loaded_path()
    if path:
        msg += " (%s)" % path
    log = getattr(worker, "log", None)
    if log is not None:
        log.info(msg)
