"""The work of one Python "task" (bench/py_tasks.py and the Celery app,
bench/celery_app.py): build about `mib` MiB of Python objects (dict records
holding short strings, a list of tags, a float and a 100..1,500 B text, the
shape of parsed JSON or ORM rows: some 1.4 KB per record, counted with
sys.getsizeof), summarise them, and drop them. One record in 2,000 goes into
a bounded cache that lives across tasks (what a real worker keeps: caches,
connection buffers), so that the garbage is interleaved with a few long-lived
objects as in a real heap."""

RECORD_BYTES = 1390  # measured: sys.getsizeof of a record and everything it holds, on average
CACHE_MAX = 1000
_cache = {}


def task_mib(i):
    """The size of task i: 20..50 MiB, spread deterministically."""
    return 20 + (i * 13) % 31


def build(mib, seed):
    """Builds about `mib` MiB of records and drops them; returns a checksum."""
    n = mib * 1048576 // RECORD_BYTES
    records = []
    for k in range(n):
        j = seed * 1000003 + k
        records.append({
            "id": j,
            "name": "record %d of task %d" % (k, seed),
            "tags": ["t%d" % (j % 17), "u%d" % (j % 31), "v%d" % (j % 7)],
            "score": k * 0.5,
            "body": "b" * (100 + (j * 7919) % 1400),
        })
        if k % 2000 == 0:
            _cache[j % (CACHE_MAX * 3)] = records[-1]
            if len(_cache) > CACHE_MAX:
                _cache.pop(next(iter(_cache)))
    check = 0
    for r in records:
        check += len(r["body"]) + len(r["tags"])
    del records
    return check


def measure(n=2000):
    """Average bytes of one record and what it holds (to check RECORD_BYTES)."""
    import sys
    total = 0
    for k in range(n):
        r = {"id": k, "name": "record %d of task %d" % (k, 1), "tags": ["t%d" % (k % 17), "u%d" % (k % 31),
                                                                       "v%d" % (k % 7)],
             "score": k * 0.5, "body": "b" * (100 + (k * 7919) % 1400)}
        total += sys.getsizeof(r) + sum(sys.getsizeof(v) for v in r.values()) + sum(
            sys.getsizeof(t) for t in r["tags"])
    return total / n


if __name__ == "__main__":
    print("%.0f bytes per record" % measure())
