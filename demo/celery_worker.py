"""Scenario 2: a Celery worker whose tasks build large transient structures.

The Celery app of the demo. Each task builds the records of one "report" (a
list of dicts holding strings, floats and lists: `mb` MB of Python objects,
tens of MB), aggregates them, keeps a small summary in a bounded per-process
list of recent results (as workers keep caches), and returns a small result.

The worker is started by the demo (runner.py), as a user would:
    python -m celery -A celery_worker worker -P prefork -c 2 ...
Environment:
    DEMO_BROKER       redis://127.0.0.1:PORT/0 (the demo's own redis-server)
    DEMO_CELERY_TRIM  "1": trimalloc.celery.install(app, min_interval=0), a
                      trim after every task (malloc_trim when the worker does
                      not run on trimalloc)
    DEMO_FLOOR_DIR    where each worker process writes, when it shuts down,
                      its floor (live_bytes.python_live_bytes) as <pid>.json
"""
import collections
import json
import os
import random

from celery import Celery, signals

from live_bytes import python_live_bytes

BROKER = os.environ.get("DEMO_BROKER", "redis://127.0.0.1:6379/0")

app = Celery("celery_worker", broker=BROKER, backend=BROKER)
app.conf.update(
    worker_prefetch_multiplier=1,
    worker_hijack_root_logger=False,
    result_expires=600,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)

if os.environ.get("DEMO_CELERY_TRIM") == "1":
    import trimalloc.celery

    trimalloc.celery.install(app, min_interval=0)

RECORDS_PER_MB = 2_000  # about 500 B of objects per record (measured on CPython 3.11)
_recent = collections.deque(maxlen=200)


@app.task(name="demo.build_report")
def build_report(n, seed, mb):
    rng = random.Random(seed)
    records = []
    for i in range(mb * RECORDS_PER_MB):
        records.append({
            "id": n * 1_000_000 + i,
            "customer": "customer-%06d" % rng.randrange(100_000),
            "amount": rng.random() * 1_000.0,
            "tags": ["tag-%d" % rng.randrange(50), "region-%d" % rng.randrange(20)],
        })
    totals = {}
    for r in records:
        for t in r["tags"]:
            totals[t] = totals.get(t, 0.0) + r["amount"]
    top = sorted(totals.items(), key=lambda kv: kv[1], reverse=True)[:3]
    summary = {"n": n, "records": len(records), "top": [[k, round(v, 2)] for k, v in top]}
    _recent.append(summary)
    return summary


def _write_floor(role):
    d = os.environ.get("DEMO_FLOOR_DIR")
    if not d:
        return
    data = {"pid": os.getpid(), "role": role, "floor": python_live_bytes()}
    with open(os.path.join(d, "%d.json" % os.getpid()), "w") as f:
        json.dump(data, f)


@signals.worker_process_shutdown.connect
def _pool_process_shutdown(**kwargs):
    _write_floor("pool")


@signals.worker_shutdown.connect
def _main_process_shutdown(**kwargs):
    _write_floor("main")
