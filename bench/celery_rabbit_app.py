"""The Celery app of the RabbitMQ Celery benchmark (bench/celery_rabbit.py
starts a worker on it). Broker: the private rabbitmq-server the driver starts
(BENCH_AMQP_URL); result backend: rpc:// (the results come back through the
broker). Tasks are consumed from the queue BENCH_QUEUE. BENCH_MAX_TASKS_PER_CHILD
(0: off) sets worker_max_tasks_per_child, Celery's own workaround for pool
processes that grow: each is replaced after that many tasks. BENCH_CELERY_TRIM
says what runs after each task, as in bench/celery_app.py:
    none         nothing
    malloc_trim  a task_postrun handler calling glibc's malloc_trim(0) through
                 ctypes, as users write it
    trimalloc    trimalloc.celery.install(app), as the package's README says
                 (the trimalloc package must be on PYTHONPATH; keyword
                 arguments from the JSON object BENCH_CELERY_INSTALL)
The task `bench.work` has the shape of the seed report "Celery workers and
jemalloc": task i builds a mixed-size amount of Python objects (records as in
bench/py_work.py; the size drawn deterministically from i: 70% small 0.5-2
MiB, 25% medium 5-15 MiB, 5% large 30-60 MiB), renders 2,000 rows of them to
JSON (a response of ~1.9 MB), drops them, and leaves some small objects in a
bounded cache that lives as long as the pool process (an OrderedDict of at most
5,000 entries, the oldest evicted), allocated among the task's garbage as a
real worker's caches are. It returns the pool process's pid, the allocator
that serves its malloc (bench/alloc.py), a checksum, its PYTHONMALLOC, the
task's time in ms, the cache's length and the task's size in MiB."""
import collections
import json
import os
import random
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from celery import Celery, signals  # noqa: E402

import alloc  # noqa: E402
import celery_bench  # noqa: E402
import py_work  # noqa: E402

URL = os.environ["BENCH_AMQP_URL"]
QUEUE = os.environ.get("BENCH_QUEUE", "bench")
MAX_TASKS_PER_CHILD = int(os.environ.get("BENCH_MAX_TASKS_PER_CHILD", "0"))

app = Celery("trimalloc_bench_rabbit", broker=URL, backend="rpc://")
app.conf.update(
    worker_prefetch_multiplier=1,
    worker_max_tasks_per_child=MAX_TASKS_PER_CHILD or None,  # None: never replaced
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=True,
    task_default_queue=QUEUE,
    result_expires=600,
)

TRIM = celery_bench.install_trim(app, "celery_rabbit_app")  # BENCH_CELERY_TRIM (celery_bench.py)

CACHE_MAX = 5000     # entries kept per pool process
CACHE_KEYS = 20000   # keys wrap around: a key seen again replaces its entry
CACHE_EVERY = 64     # one record in 64 leaves an entry (a 45 MiB task: ~530)
RENDER = 2000        # rows rendered to JSON per task

_allocator = []
_cache = collections.OrderedDict()


@signals.worker_process_init.connect(weak=False)
def _which_allocator(**kwargs):
    _allocator.append(alloc.allocator())


def task_mib(i):
    """The size of task i in MiB, drawn deterministically from i: 70% small
    (0.5-2), 25% medium (5-15), 5% large (30-60); 5.6 MiB on average."""
    r = random.Random(i)
    c = r.random()
    lo, hi = (0.5, 2.0) if c < 0.70 else (5.0, 15.0) if c < 0.95 else (30.0, 60.0)
    return r.uniform(lo, hi)


def build(i, mib):
    """Builds about `mib` MiB of records (bench/py_work.py's shape), renders
    some to JSON, drops them all but the cache entries; returns a checksum."""
    n = max(1, int(mib * 1048576 / py_work.RECORD_BYTES))
    records = []
    for k in range(n):
        j = i * 1000003 + k
        rec = {
            "id": j,
            "name": "record %d of task %d" % (k, i),
            "tags": ["t%d" % (j % 17), "u%d" % (j % 31), "v%d" % (j % 7)],
            "score": k * 0.5,
            "body": "b" * (100 + (j * 7919) % 1400),
        }
        records.append(rec)
        if k % CACHE_EVERY == 0:
            # A long-lived entry (the record's tags and a 200..2,000 B string)
            # allocated among the garbage, keyed by i (and k) mod CACHE_KEYS.
            key = (i + k // CACHE_EVERY * 7919) % CACHE_KEYS
            _cache[key] = {"id": j, "tags": rec["tags"], "text": "c" * (200 + (j * 104729) % 1801)}
            _cache.move_to_end(key)
            if len(_cache) > CACHE_MAX:
                _cache.popitem(last=False)
    # The response: RENDER rows (the records again from the first if there
    # are fewer), rendered by json's pure-Python encoder (indent): a fixed
    # ~8 ms of small string allocations, so that a small task is not just
    # Celery's overhead.
    check = len(json.dumps([records[k % n] for k in range(RENDER)], indent=1, sort_keys=True))
    for r in records:
        check += len(r["body"]) + len(r["tags"])
    del records
    return check


@app.task(name="bench.ping")
def ping():
    return os.getpid()


@app.task(name="bench.work")
def work(i):
    t = time.perf_counter()
    mib = task_mib(i)
    check = build(i, mib)
    ms = (time.perf_counter() - t) * 1000.0
    return [os.getpid(), _allocator[0] if _allocator else alloc.allocator(), check,
            os.environ.get("PYTHONMALLOC", ""), ms, len(_cache), mib]
