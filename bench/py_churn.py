"""Python interpreter workload (throughput): request-like records built as
dicts of strings and lists, serialised by hand, filtered and grouped; one
record in ten replaces an entry of a 20,000-entry working set, the rest is
garbage. Under PYTHONMALLOC=malloc every object goes through malloc (most are
16..512 B); by default pymalloc serves objects up to 512 B and malloc only
the larger ones (big lists, dicts and strings).
    python3 py_churn.py [--iters N]"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import alloc  # noqa: E402

ITERS = alloc.opt("--iters", 200_000)


def make_record(i):
    tags = ["tag%d" % ((i * k) % 97) for k in range(1 + i % 12)]
    return {
        "id": i,
        "name": "user-%d-%s" % (i, "x" * (i % 40)),
        "email": "user%d@example.org" % i,
        "tags": tags,
        "scores": [float(k * i % 101) for k in range(i % 20)],
        "meta": {"k%d" % k: str(k * i) for k in range(i % 8)},
    }


def serialise(r):
    parts = []
    for k, v in r.items():
        if isinstance(v, list):
            v = ",".join(str(x) for x in v)
        elif isinstance(v, dict):
            v = ";".join("%s=%s" % kv for kv in v.items())
        parts.append("%s:%s" % (k, v))
    return "|".join(parts)


def main():
    working = [None] * 20_000
    groups = {}
    total = 0
    t0 = time.perf_counter()
    for i in range(ITERS):
        r = make_record(i)
        text = serialise(r)
        fields = text.split("|")
        total += len(text) + len(fields)
        key = r["tags"][0]
        groups.setdefault(key, []).append(len(text))
        if len(groups[key]) > 64:
            groups[key] = groups[key][-8:]
        if i % 10 == 0:
            working[(i // 10) % len(working)] = (r, text.upper())
    t1 = time.perf_counter()
    alloc.report("python", iters=ITERS, check=total, loop_s=t1 - t0)


main()
