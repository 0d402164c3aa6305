"""Memory benchmark for the choice between pymalloc and PYTHONMALLOC=malloc under `trimalloc run`.

Not a test (pytest does not collect it): it prints RSS figures. For each
workload it runs a child Python under glibc and under trimalloc (LD_PRELOAD of
the bundled library), each with pymalloc (default) and with PYTHONMALLOC=malloc,
and reports RSS (MiB) at the peak, after the objects are dropped and collected,
and after trimalloc.trim(). Workloads build many small objects (tuples, dicts,
short str, lists: 16-512 B, the sizes pymalloc serves) and keep a fraction of
them alive:
  drop-all    nothing survives (a job that builds and drops its data)
  keep-1/1000 one object in 1000 survives, scattered (a cache filled on the side)
  keep-1/50   one in 50 survives, scattered (heavier fragmentation)

    /usr/bin/python3 bench/py_pythonmalloc.py   (with the trimalloc package installed)
"""
import json
import os
import subprocess
import sys

import trimalloc

CHILD = r'''
import gc, json, sys, time
import trimalloc
from trimalloc import _trimalloc
keep_every = int(sys.argv[1])
t0 = time.perf_counter()
base = _trimalloc.rss()
kept = []
for rnd in range(3):
    data = []
    for i in range(600000):
        o = (i, str(i), {"k": i, "v": [i, i + 1]})
        data.append(o)
        if keep_every and i % keep_every == 0:
            kept.append(o)
    peak = _trimalloc.rss()
    del data, o
    gc.collect()
after = _trimalloc.rss()
trimalloc.trim()
trimmed = _trimalloc.rss()
print(json.dumps(dict(base=base, peak=peak, after=after, trimmed=trimmed,
                      seconds=time.perf_counter() - t0, kept=len(kept))))
'''


def run(preload, pythonmalloc, keep_every):
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "PYTHONMALLOC"):
        env.pop(k, None)
    if preload:
        env["LD_PRELOAD"] = trimalloc.library_path()
    if pythonmalloc:
        env["PYTHONMALLOC"] = "malloc"
    out = subprocess.run([sys.executable, "-c", CHILD, str(keep_every)], env=env, check=True,
                         stdout=subprocess.PIPE, universal_newlines=True).stdout
    return json.loads(out)


def main():
    mib = lambda n: n / 1048576.0  # noqa: E731
    print("%-12s %-10s %-12s %8s %8s %8s %8s %7s" % (
        "workload", "allocator", "PYTHONMALLOC", "base", "peak", "after", "trimmed", "time_s"))
    for name, keep in (("drop-all", 0), ("keep-1/1000", 1000), ("keep-1/50", 50)):
        for preload in (False, True):
            for pm in (False, True):
                r = run(preload, pm, keep)
                print("%-12s %-10s %-12s %8.1f %8.1f %8.1f %8.1f %7.2f" % (
                    name, "trimalloc" if preload else "glibc", "malloc" if pm else "(pymalloc)",
                    mib(r["base"]), mib(r["peak"]), mib(r["after"]), mib(r["trimmed"]),
                    r["seconds"]))


if __name__ == "__main__":
    main()
