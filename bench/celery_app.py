"""The Celery app of the Celery benchmark (bench/celery_run.py starts a
worker on it). Broker and result backend: the redis-server the driver starts
(BENCH_REDIS_URL). BENCH_CELERY_TRIM says what runs after each task:
    none         nothing
    malloc_trim  a task_postrun handler calling glibc's malloc_trim(0) through
                 ctypes, as users write it
    trimalloc    trimalloc.celery.install(app), as the package's README says
                 (the rate-limited trim after each task; the trimalloc
                 package must be on PYTHONPATH); BENCH_CELERY_INSTALL, a
                 JSON object, is passed to install() as keyword arguments
                 (e.g. {"min_interval": 0}) to measure other settings
The task `bench.work` builds 20..50 MiB of Python objects and drops them
(bench/py_work.py) and returns the pool process's pid, the allocator that
serves its malloc (bench/alloc.py), a checksum, its PYTHONMALLOC and, under
trimalloc.celery, the hook's counts so far (celery_bench.trim_counts)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from celery import Celery, signals  # noqa: E402

import alloc  # noqa: E402
import celery_bench  # noqa: E402
import py_work  # noqa: E402

URL = os.environ["BENCH_REDIS_URL"]

app = Celery("trimalloc_bench", broker=URL, backend=URL)
app.conf.update(
    worker_prefetch_multiplier=1,
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
    result_expires=600,
)

TRIM = celery_bench.install_trim(app, "celery_app")  # BENCH_CELERY_TRIM (celery_bench.py)

_allocator = []


@signals.worker_process_init.connect(weak=False)
def _which_allocator(**kwargs):
    _allocator.append(alloc.allocator())


@app.task(name="bench.ping")
def ping():
    return os.getpid()


@app.task(name="bench.work")
def work(i):
    check = py_work.build(py_work.task_mib(i), i)
    return [os.getpid(), _allocator[0] if _allocator else alloc.allocator(), check,
            os.environ.get("PYTHONMALLOC", ""), celery_bench.trim_counts(TRIM)]
