"""Python memory after a burst: build `--records` records (dicts of strings,
lists and ints, the shape of parsed JSON or ORM rows; 300,000 of them take
about 250 MiB), keep one in
100 alive (a cache, a log of recent results), drop the rest and collect, then
measure what the process gives back on its own and after the allocator's
trim. Under the default pymalloc the small objects live in 1 MiB arenas that
stay as long as one object in them is alive; under PYTHONMALLOC=malloc every
object is the allocator's.
    python3 py_burst.py [--records N]
Reports RSS (bytes): baseline, peak, freed (after del + gc.collect),
act_1s (after 1 s of light activity: a few small dicts every 1 ms), trim
(after the allocator's trim), and minor faults per phase."""
import gc
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import alloc  # noqa: E402

RECORDS = alloc.opt("--records", 300_000)


def record(i):
    return {"id": i, "name": "record %d %s" % (i, "n" * (i % 60)),
            "tags": ["t%d" % (i % 17), "u%d" % (i % 31)], "score": i * 0.5,
            "body": "b" * (100 + i % 400)}


def main():
    trim_name, trim = alloc.trim_function()
    gc.collect()
    baseline = alloc.rss()
    f0 = alloc.minflt()
    records, kept = [], []
    for i in range(RECORDS):
        r = record(i)
        records.append(r)
        if i % 100 == 0:
            kept.append(r)
    peak = alloc.rss()
    f1 = alloc.minflt()
    del records, r
    gc.collect()
    freed = alloc.rss()
    f2 = alloc.minflt()
    start = time.monotonic()
    while time.monotonic() - start < 1.0:
        scratch = [record(k) for k in range(20)]
        del scratch
        time.sleep(0.001)
    act_1s = alloc.rss()
    f3 = alloc.minflt()
    t0 = time.perf_counter()
    trim()
    trim_ms = (time.perf_counter() - t0) * 1e3
    trimmed = alloc.rss()
    f4 = alloc.minflt()
    alloc.report("py-burst", trim_fn=trim_name, records=RECORDS, kept=len(kept), baseline=baseline,
                 peak=peak, freed=freed, act_1s=act_1s, trim=trimmed, trim_ms=trim_ms,
                 flt_burst=f1 - f0, flt_free=f2 - f1, flt_activity=f3 - f2, flt_trim=f4 - f3)


main()
