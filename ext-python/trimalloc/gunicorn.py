"""trimalloc.gunicorn: gunicorn server hooks.

    # gunicorn.conf.py
    import trimalloc.preload          # optional, first: the master (and so every worker) on trimalloc
    from trimalloc.gunicorn import post_request, post_worker_init

or start gunicorn with `trimalloc run -- gunicorn -c gunicorn.conf.py app:app`.
post_request trims every 100 requests, or sooner past 64 MiB free but
resident, at most once a second (the policy of trimalloc.wsgi, shared with the
Ruby gem's Rack middleware); build one with other settings with
make_post_request(every=..., min_free=..., min_interval=...). post_worker_init
logs which allocator the worker runs on.
"""
from typing import Any, Callable, Optional

from . import _trimalloc
from .wsgi import _UNSET, DEFAULT_EVERY, DEFAULT_MIN_INTERVAL, RequestTrimmer


def make_post_request(every=DEFAULT_EVERY, min_free=_UNSET, min_interval=DEFAULT_MIN_INTERVAL,
                      free_threshold=_UNSET):
    # type: (Optional[int], Any, float, Any) -> Callable[..., None]
    """A post_request hook with its own RequestTrimmer (free_threshold: the old name of min_free)."""
    trimmer = RequestTrimmer(every, min_free, min_interval, "gunicorn", free_threshold)

    def post_request(worker, req, environ, resp):
        # type: (Any, Any, Any, Any) -> None
        trimmer.request_done()

    post_request.trimmer = trimmer  # type: ignore[attr-defined]
    return post_request


post_request = make_post_request()


def backend_line(pid):
    # type: (object) -> str
    """The line post_worker_init logs, saying which allocator the worker runs on
    (and, on glibc, how to change that)."""
    msg = "trimalloc: worker %s runs on %s" % (pid, _trimalloc.backend())
    path = _trimalloc.loaded_path()
    if path:
        return msg + " (%s)" % path
    return msg + (" (trimalloc is not preloaded: start gunicorn with `trimalloc run --`, or put "
                  "`import trimalloc.preload` first in gunicorn.conf.py); trims call malloc_trim")


def post_worker_init(worker):
    # type: (Any) -> None
    log = getattr(worker, "log", None)
    if log is not None:
        log.info(backend_line(getattr(worker, "pid", "?")))
