"""pymalloc's empty pools given back by trims (core/bind/bind_pymalloc.c,
wired in by _pools.c): what they release, that pymalloc's objects stay intact
through it, and that the policy's own thread (the idle trim) releases them
too, taking the GIL."""
import json
import sys

import pytest

from conftest import MiB, run_py

# A child-process snippet: churn(n) builds n small dicts and strings (pymalloc's
# sizes), keeps one object in 500 alive (pinning their arenas, as a worker's
# caches do) and drops the rest; check() reads every survivor back.
CHURN = r'''
import json, os, sys, time
import trimalloc
from trimalloc import _trimalloc
keep = []
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
def churn(n, seed):
    objs = [{"k": i, "s": "v%d-%d" % (seed, i), "t": (i, seed)} for i in range(n)]
    keep.extend(objs[::500])
    del objs
def check():
    for o in keep:
        assert o["s"] == "v%d-%d" % (o["t"][1], o["k"]) and o["t"][0] == o["k"], o
'''

# What bind_pymalloc.c walks: the pool header it knows (3.8-3.13), in pools of more
# than one OS page (16 KiB pools: 3.10+ on 64 bits; 3.8 and 3.9 have pools of
# one page, and trims leave them alone: test_api's report test says so).
KNOWN = pytest.mark.skipif(
    not ((3, 10) <= sys.version_info[:2] <= (3, 13) and sys.maxsize > 2**32),
    reason="trims give back pymalloc's pools on 64-bit CPython 3.10-3.13")


def pools(out):
    return json.loads(out.strip().splitlines()[-1])


@KNOWN
@pytest.mark.parametrize("preload", [True, False], ids=["trimalloc", "glibc"])
def test_trim_gives_back_empty_pools_that_survivors_pin(preload):
    code = CHURN + r'''
churn(400000, 1)
before = rss()
released = trimalloc.trim()
after = rss()
check()
churn(400000, 2)  # the released pools are used again, their free lists rebuilt
check()
p = _trimalloc._pymalloc_pools()
print(json.dumps(dict(p, before=before, after=after, trim=released)))
'''
    p = pools(run_py(code, preload=preload).stdout)
    assert p["on"] and p["arenas"] >= 20, p
    assert p["pools_released"] >= 500 and p["released_bytes"] >= 20 * MiB, p
    # pools that keep a survivor give back their pages without one
    assert p["sparse_pools_trimmed"] >= 100, p
    # the survivors pin every arena: only the pools' release brings RSS down
    assert p["before"] - p["after"] >= 20 * MiB, p
    assert p["trim"] >= p["released_bytes"], p


@KNOWN
def test_pools_stay_intact_under_pymalloc_debug_hooks():
    # the debug hooks check every block's guard bytes on free and on realloc:
    # a pool given back while a block in it was live, or a free list followed
    # into a page given back, breaks them (or crashes)
    code = CHURN + r'''
for r in range(6):
    churn(150000, r)
    trimalloc.trim()
    check()
p = _trimalloc._pymalloc_pools()
print(json.dumps(p))
'''
    p = pools(run_py(code, preload=True, PYTHONMALLOC="pymalloc_debug").stdout)
    assert p["pools_released"] > 0, p


@KNOWN
def test_a_pool_that_changed_since_it_was_weighed_is_weighed_again():
    # a trim remembers the sparse pools it weighed and skips them while their
    # header is the same; dropping the survivors on a pool's last two pages
    # changes it (the pool keeps the ones on its first two), and those pages
    # come back at the next trim
    code = CHURN + r'''
objs = [{"k": i, "s": "v%d" % i, "t": (i, 0)} for i in range(200000)]
keep.extend(objs[::8])
del objs
trimalloc.trim()
trimalloc.trim()  # nothing changed since: nothing weighed again
second = _trimalloc._pymalloc_pools()
keep[:] = [o for o in keep if id(o) % 16384 < 8192]
before = rss()
trimalloc.trim()
after = rss()
p = _trimalloc._pymalloc_pools()
print(json.dumps(dict(p, sparse2=second["sparse_pools_trimmed"], released2=second["released_bytes"],
                      before=before, after=after)))
'''
    p = pools(run_py(code, preload=True).stdout)
    assert p["sparse_pools_trimmed"] - p["sparse2"] >= 500, p
    assert p["released_bytes"] - p["released2"] >= 4 * MiB and p["before"] - p["after"] >= 4 * MiB, p


@KNOWN
def test_hook_trims_weigh_a_bounded_share_and_reach_every_pool():
    # a hook's trim weighs at most TRIM_BUDGET (2048) sparse pools, each walk
    # starting where the last one stopped: the first leaves some for the next,
    # and a few trims later nothing is left that a trim could give back
    code = CHURN + r'''
import gc
churn(1200000, 1)
partial = _trimalloc._pymalloc_pools(False)["free_bytes"]  # a bounded read: at most 512 sparse pools weighed
total = _trimalloc._pymalloc_pools()["free_bytes"]
trimalloc.gc.enable(min_interval=0)
steps = []
for k in range(8):
    gc.collect()
    steps.append(_trimalloc._pymalloc_pools()["released_bytes"])
check()
print(json.dumps({"partial": partial, "total": total, "steps": steps,
                  "left": _trimalloc._pymalloc_pools()["free_bytes"]}))
'''
    p = pools(run_py(code, preload=True).stdout)
    steps, total = p["steps"], p["total"]
    assert total >= 100 * MiB and p["partial"] < total - 4 * MiB, p
    assert steps[0] < total - 4 * MiB, p  # bounded: sparse pools left for later walks
    assert steps[-1] >= total * 0.95 and p["left"] <= total * 0.05, p


@KNOWN
def test_no_pools_under_pythonmalloc_malloc():
    p = pools(run_py(CHURN + "churn(100000, 1)\ntrimalloc.trim()\nprint(json.dumps(_trimalloc._pymalloc_pools()))",
                     preload=True, PYTHONMALLOC="malloc").stdout)
    assert p["arenas"] == 0 and p["pools_released"] == 0, p


@KNOWN
def test_idle_trim_from_the_policy_thread_releases_pools():
    # a job hook's trim held back by its refault budget runs on core/bind's
    # thread when the worker goes idle: that thread takes the GIL for the pools
    code = CHURN + r'''
t = _trimalloc.Trimmer(None, 0, 0.0, 1e-9)  # every trim too dear while jobs run: deferred to idle
for r in range(3):
    churn(200000, r)
    t.event()
before = _trimalloc._pymalloc_pools()["pools_released"]
time.sleep(3.5)  # idle: no event for 1 s; the main thread holds no GIL while it sleeps
after = _trimalloc._pymalloc_pools()["pools_released"]
check()
print(json.dumps(dict(_trimalloc.policy_stats(), before=before, after=after)))
'''
    p = pools(run_py(code, preload=True).stdout)
    assert p["idle_trims"] >= 1 and p["after"] > p["before"], p


@KNOWN
def test_exit_turns_the_pools_off_before_finalizing():
    # trimalloc's atexit handler stops the pools' release before the
    # interpreter finalizes, so that the policy thread never asks a finalizing
    # interpreter for the GIL. atexit runs its handlers last registered first:
    # one registered before `import trimalloc` runs after trimalloc's.
    code = r'''
import atexit, sys
def after_trimallocs():
    from trimalloc import _trimalloc
    sys.stdout.write("on at exit: %s\n" % _trimalloc._pymalloc_pools()["on"])
atexit.register(after_trimallocs)
import trimalloc
from trimalloc import _trimalloc
t = _trimalloc.Trimmer(None, 0, 0.0, 1e-9)  # an idle trim pending as the process exits
keep = [{"k": i} for i in range(200000)][::500]
t.event()
print("on before exit: %s" % _trimalloc._pymalloc_pools()["on"])
'''
    r = run_py(code, preload=True)
    assert r.stdout.split("\n")[:2] == ["on before exit: True", "on at exit: False"], r.stdout
    assert r.stderr == "", r.stderr


@KNOWN
def test_policy_thread_walks_pools_while_threads_churn():
    # 4 threads build and drop objects (checking the ones they keep) while
    # their trimmer's trims, held back by min_interval, run on the policy's
    # thread: that thread takes the GIL and walks the pools between the
    # threads' turns. The debug hooks check every block pymalloc hands out.
    code = r'''
import json, random, threading, time
import trimalloc
from trimalloc import _trimalloc
stop, errors = [], []
def worker(seed):
    rnd, live = random.Random(seed), {}
    t = _trimalloc.Trimmer(None, 0, 0.2, 0.0)
    while not stop:
        for i in range(rnd.randint(1000, 20000)):
            k = rnd.getrandbits(40)
            live[k] = (k, "s%d" % k, [k] * rnd.randint(1, 30))
        for k in list(live):
            if rnd.random() < 0.95:
                del live[k]
        t.event()
        errors.extend((k, v) for k, v in live.items() if v[0] != k or v[1] != "s%d" % k or v[2][0] != k)
threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
for th in threads:
    th.start()
time.sleep(4)
stop.append(1)
for th in threads:
    th.join()
print(json.dumps(dict(_trimalloc._pymalloc_pools(), deferred=_trimalloc.policy_stats()["deferred"],
                      errors=len(errors))))
'''
    p = pools(run_py(code, preload=True, PYTHONMALLOC="pymalloc_debug").stdout)
    assert p["errors"] == 0 and p["deferred"] >= 5 and p["pools_released"] > 0, p
