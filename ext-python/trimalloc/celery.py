"""trimalloc.celery: trim after each task, and say which allocator each process that runs tasks is on.

    # in the module that creates the Celery app
    import trimalloc.preload         # optional, first: the worker (and its pool) on trimalloc
    import trimalloc.celery
    trimalloc.celery.install(app)    # the job hooks' defaults: _trimalloc.DEFAULTS["job"]

or start the worker with `trimalloc run -- celery -A proj worker`. Without
either, the trims drive glibc's malloc_trim, which already helps.

task_postrun: the shared policy (core/bind, the same as the Ruby gem's
Sidekiq middleware): trim when at least min_free bytes are free but resident
(0: after every task) or every `every` tasks (None: off), at most once per
min_interval seconds per process; a trim skipped by that limit runs when due.
refault_share (0.1 by default; 0: off) prices each trim by the refault
(core/bind/binding.h): it runs when the pages free, at the measured cost of
faulting one back in, come to at most that share of the CPU time the process
spent since its last trim; one held back runs when the worker goes idle (no
task ending for TA_BIND_IDLE_NS, core/bind/binding.h).
One INFO line from the logger "trimalloc.celery" per process that runs tasks,
whatever the pool: each prefork child (worker_process_init), or the worker
itself for the solo, threads, eventlet and gevent pools (worker_init), e.g.
"trimalloc: pool process 1234 runs on trimalloc (...)".
(`min_freed` is the old name of `min_free`, accepted with a DeprecationWarning
for one release.)
task_prerun/task_postrun also set the thread's heap-profiler tag to the task's
name for the task while the profiler samples (trimalloc.profile: a "tag"
label on the samples the task takes; off, the default, or when trimalloc is
not the allocator, no tag calls; a task begun while it was off stays
untagged). With the eventlet and
gevent pools, tasks share a thread: a sample then carries the tag of the task
that started last on it.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, Optional

from celery import signals

from . import _hooks, _trimalloc

logger = logging.getLogger("trimalloc.celery")

_UNSET = object()
# core/bind's defaults for job hooks (core/bind/bind_facts.c, which says why;
# the same as the Ruby gem's Sidekiq middleware)
DEFAULT_MIN_INTERVAL = _trimalloc.DEFAULTS["job"]["min_interval"]
DEFAULT_MIN_FREE = _trimalloc.DEFAULTS["job"]["min_free"]
DEFAULT_EVERY = _trimalloc.DEFAULTS["job"]["every"]
DEFAULT_REFAULT_SHARE = _trimalloc.DEFAULTS["job"]["refault_share"]  # 0.1 (0: no refault budget)

_settings: Dict[str, Any] = {"app": None, "trimmer": None}
_COUNTS = _trimalloc.TRIMMER_COUNTS  # the keys of a trimmer's stats()
_before = dict.fromkeys(_COUNTS, 0)  # the counts of trimmers replaced by a later install()


def _task_prerun(sender: Any = None, **kwargs: Any) -> None:
    if _hooks.profiling():  # off: no tag calls (a task begun while off stays untagged)
        name = getattr(sender, "name", None)
        _hooks.set_tag(name if isinstance(name, str) else None)


def _task_postrun(sender: Any = None, **kwargs: Any) -> None:
    _hooks.clear_tag()  # what prerun set, even if the profiler was stopped since
    app = _settings["app"]
    if app is not None and getattr(sender, "app", app) is not app:
        return
    trimmer = _settings["trimmer"]
    if trimmer is not None:
        _hooks.event("celery", trimmer)


def backend_line(kind: str = "pool process") -> str:
    """The line logged by each process that runs tasks."""
    if _trimalloc.active():
        return "trimalloc: %s %d runs on trimalloc (%s)" % (kind, os.getpid(), _trimalloc.loaded_path())
    return (
        "trimalloc: %s %d runs on glibc (trimalloc is not preloaded: start the "
        "worker with `trimalloc run -- celery ...`); trims call malloc_trim" % (kind, os.getpid())
    )


def _pool_name(worker: Any) -> str:
    cls = getattr(worker, "pool_cls", None)
    name = getattr(cls, "__module__", "") if not isinstance(cls, str) else cls
    return name.rsplit(".", 1)[-1] or "?"


def _worker_process_init(**kwargs: Any) -> None:
    logger.info(backend_line())  # a prefork child


def _worker_init(sender: Any = None, **kwargs: Any) -> None:
    pool = _pool_name(sender)
    if pool != "prefork":  # tasks run in this process: say it here
        logger.info(backend_line("worker process (%s pool)" % pool))


def install(app: Optional[Any] = None, min_interval: float = DEFAULT_MIN_INTERVAL,
            min_free: Any = _UNSET, every: Optional[int] = DEFAULT_EVERY,
            min_freed: Any = _UNSET, refault_share: float = DEFAULT_REFAULT_SHARE) -> None:
    """Connect the trim to task_postrun and the log line to worker_process_init / worker_init.

    app: trim only after this app's tasks (None: any task). Calling install()
    again changes the settings (and starts the counts again); the handlers
    are connected once."""
    if min_freed is not _UNSET:
        if min_free is not _UNSET:
            raise TypeError("give min_free or its old name min_freed, not both")
        min_free = _hooks.renamed("min_freed", "min_free", min_freed, "trimalloc.celery.install")
    if min_free is _UNSET:
        min_free = DEFAULT_MIN_FREE
    if app is not None and not hasattr(app, "tasks"):
        raise TypeError("app must be a Celery app, not %r" % (app,))
    trimmer = _hooks.new_trimmer(every, min_free, min_interval, refault_share)
    old = _settings["trimmer"]
    if old is not None:
        for k, v in old.stats().items():
            _before[k] += v
    _settings["app"] = app
    _settings["trimmer"] = trimmer
    signals.task_prerun.connect(_task_prerun, weak=False, dispatch_uid="trimalloc.task_prerun")
    signals.task_postrun.connect(_task_postrun, weak=False, dispatch_uid="trimalloc.task_postrun")
    signals.worker_process_init.connect(
        _worker_process_init, weak=False, dispatch_uid="trimalloc.worker_process_init"
    )
    signals.worker_init.connect(_worker_init, weak=False, dispatch_uid="trimalloc.worker_init")


def uninstall() -> None:
    signals.task_prerun.disconnect(_task_prerun, dispatch_uid="trimalloc.task_prerun")
    signals.task_postrun.disconnect(_task_postrun, dispatch_uid="trimalloc.task_postrun")
    signals.worker_process_init.disconnect(
        _worker_process_init, dispatch_uid="trimalloc.worker_process_init"
    )
    signals.worker_init.disconnect(_worker_init, dispatch_uid="trimalloc.worker_init")


def stats() -> Dict[str, int]:
    """Tasks seen, trims run and bytes they released, in this process."""
    t = _settings["trimmer"]
    now = t.stats() if t is not None else {}
    s = {k: _before[k] + now.get(k, 0) for k in _COUNTS}
    s["tasks"] = s["events"]
    return s
