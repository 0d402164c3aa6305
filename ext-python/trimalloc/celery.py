"""trimalloc.celery: trim after each task, and say which allocator each pool process runs on.

    # in the module that creates the Celery app
    import trimalloc.celery
    trimalloc.celery.install(app)

and start the worker on trimalloc: `trimalloc run -- celery -A proj worker`.
Without the launcher the trims drive glibc's malloc_trim, which already helps.

task_postrun: the rate-limited trim (at most once per min_interval seconds per
process, and only when at least min_freed bytes are free but resident).
worker_process_init: one INFO line per pool process, from the logger
"trimalloc.celery", e.g. "trimalloc: pool process 1234 runs on trimalloc (...)".
"""
import logging
import os
from typing import Any, Dict, Optional

from celery import signals

from . import _hooks, _trimalloc

logger = logging.getLogger("trimalloc.celery")

_settings = {"app": None, "min_interval": 1.0, "min_freed": 0}  # type: Dict[str, Any]
_counts = {"tasks": 0, "trims": 0, "trimmed_bytes": 0}


def _task_postrun(sender=None, **kwargs):
    # type: (Any, Any) -> None
    app = _settings["app"]
    if app is not None and getattr(sender, "app", app) is not app:
        return
    _counts["tasks"] += 1
    released = _hooks.trim_if_due("celery", _settings["min_interval"], _settings["min_freed"])
    if released is not None:
        _counts["trims"] += 1
        _counts["trimmed_bytes"] += released


def backend_line():
    # type: () -> str
    """The line logged by each pool process."""
    if _trimalloc.active():
        return "trimalloc: pool process %d runs on trimalloc (%s)" % (
            os.getpid(),
            _trimalloc.loaded_path(),
        )
    return (
        "trimalloc: pool process %d runs on glibc (trimalloc is not preloaded: start the "
        "worker with `trimalloc run -- celery ...`); trims call malloc_trim" % os.getpid()
    )


def _worker_process_init(**kwargs):
    # type: (Any) -> None
    logger.info(backend_line())


def install(app=None, min_interval=1.0, min_freed=0):
    # type: (Optional[Any], float, int) -> None
    """Connect the trim to task_postrun and the log line to worker_process_init.

    app: trim only after this app's tasks (None: any task). Calling install()
    again changes the settings; the handlers are connected once."""
    _settings["min_interval"] = _hooks.check_interval(min_interval)
    _settings["min_freed"] = _hooks.check_bytes(min_freed, "min_freed")
    if app is not None and not hasattr(app, "tasks"):
        raise TypeError("app must be a Celery app, not %r" % (app,))
    _settings["app"] = app
    signals.task_postrun.connect(_task_postrun, weak=False, dispatch_uid="trimalloc.task_postrun")
    signals.worker_process_init.connect(
        _worker_process_init, weak=False, dispatch_uid="trimalloc.worker_process_init"
    )


def uninstall():
    # type: () -> None
    signals.task_postrun.disconnect(_task_postrun, dispatch_uid="trimalloc.task_postrun")
    signals.worker_process_init.disconnect(
        _worker_process_init, dispatch_uid="trimalloc.worker_process_init"
    )


def stats():
    # type: () -> Dict[str, int]
    """Tasks seen, trims run and bytes they released, in this process."""
    return dict(_counts)
