"""trimalloc.prometheus: the collector, and gauges for multiprocess mode."""
import json
import sys

import pytest
from prometheus_client import CollectorRegistry, generate_latest

import trimalloc
from trimalloc import _trimalloc
from trimalloc.prometheus import COUNTER_FIELDS, POOL_METRICS, TrimallocCollector, register
from conftest import MiB, core_fields, fresh_rate_limit, run_py


# Trims reach pymalloc's pools on this Python (CPython 3.10-3.13, 64 bits: pools of 16 KiB).
POOLS_KNOWN = (3, 10) <= sys.version_info[:2] <= (3, 13) and sys.maxsize > 2**32


def samples(registry):
    out = {}
    for family in registry.collect():
        for s in family.samples:
            key = s.name + json.dumps(s.labels, sort_keys=True) if s.labels else s.name
            out[key] = s.value
    return out


def test_counter_fields_are_core_fields():
    assert COUNTER_FIELDS <= set(core_fields())


def test_collector_exports_every_stats_field():
    reg = CollectorRegistry()
    register(reg)
    s, got = trimalloc.stats(), samples(reg)
    assert got['trimalloc_info{"backend": "%s", "version": "%s"}' % (s["backend"], trimalloc.__version__)] == 1
    assert got["trimalloc_allocated_bytes"] > 0 and got["trimalloc_rss_bytes"] > 0
    assert "trimalloc_trims_total" in got and "trimalloc_trim_seconds_total" in got
    n = len([k for k in s if k != "backend"])
    pools = len(POOL_METRICS) if POOLS_KNOWN and sys.getallocatedblocks() else 0
    assert len(got) == n + 2 + pools  # one sample per measured field, plus info and rss (and pymalloc's)
    text = generate_latest(reg).decode()
    assert "# TYPE trimalloc_trims_total counter" in text
    assert "# TYPE trimalloc_allocated_bytes gauge" in text
    assert "# HELP trimalloc_allocated_bytes bytes in live blocks" in text


def test_collector_reads_fresh_values_at_each_scrape():
    fresh_rate_limit()  # no deferred trim lands between the two scrapes
    reg = CollectorRegistry()
    assert isinstance(register(reg), TrimallocCollector)
    first = samples(reg)["trimalloc_trims_total"]
    trimalloc.trim()
    assert samples(reg)["trimalloc_trims_total"] == first + 1


def test_collector_under_preload_has_all_fields():
    code = r'''
import json
from prometheus_client import CollectorRegistry
import trimalloc.prometheus
reg = CollectorRegistry()
trimalloc.prometheus.register(reg)
print(json.dumps(sorted(m.name for m in reg.collect())))
'''
    names = json.loads(run_py(code, preload=True).stdout)
    assert len(names) == len(core_fields()) + 2 + (len(POOL_METRICS) if POOLS_KNOWN else 0)
    assert "trimalloc_fragmentation_ratio" in names and "trimalloc_resident_bytes" in names


# pymalloc's arenas with one object in 500 kept: a scrape before and after a trim.
POOLS = r'''
import json
from prometheus_client import CollectorRegistry
import trimalloc, trimalloc.prometheus
reg = CollectorRegistry()
trimalloc.prometheus.register(reg)
def scrape():
    return {s.name: s.value for fam in reg.collect() for s in fam.samples}
objs = [{"k": i, "s": "v%d" % i, "t": (i, 1)} for i in range(400000)]
keep = objs[::500]
del objs
before = scrape()
trimalloc.trim()
print(json.dumps({"before": before, "after": scrape()}))
'''


@pytest.mark.parametrize("pythonmalloc", ["pymalloc", "malloc"])
def test_collector_exports_pymalloc_arenas_while_trims_reach_them(pythonmalloc):
    r = json.loads(run_py(POOLS, preload=True, PYTHONMALLOC=pythonmalloc).stdout)
    b, a = r["before"], r["after"]
    exported = [k for k in a if "pymalloc" in k]
    if pythonmalloc == "malloc" or not POOLS_KNOWN:  # every object in malloc, or pools of one page
        assert not exported, a
        return
    assert len(exported) == len(POOL_METRICS), exported
    assert b["trimalloc_pymalloc_arenas"] >= 20 and b["trimalloc_pymalloc_arena_bytes"] >= 20 * MiB, b
    # the free pages the trim is about to give back, then given back and counted
    assert b["trimalloc_pymalloc_free_bytes"] >= 10 * MiB, b
    gave = a["trimalloc_pymalloc_released_bytes_total"] - b["trimalloc_pymalloc_released_bytes_total"]
    assert gave >= b["trimalloc_pymalloc_free_bytes"] // 2, (b, a)
    assert a["trimalloc_pymalloc_free_bytes"] < b["trimalloc_pymalloc_free_bytes"] // 4, (b, a)
    assert a["trimalloc_pymalloc_pools_released_total"] > b["trimalloc_pymalloc_pools_released_total"], (b, a)


MULTI = r'''
import gc, json, os
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
import trimalloc, trimalloc.prometheus
m = trimalloc.prometheus.enable_multiprocess(registry=CollectorRegistry())
assert trimalloc.prometheus.enable_multiprocess() is m  # once per process
trimalloc.gc.enable(min_interval=0)
gc.collect()
gc.collect()
out = {}
reg = CollectorRegistry()
MultiProcessCollector(reg)
for fam in reg.collect():
    for s in fam.samples:
        out[s.name] = (s.value, s.labels)
print(json.dumps({"samples": out, "pid": os.getpid(), "trims": trimalloc.stats()["trims"]}))
'''


@pytest.mark.parametrize("preload", [True, False], ids=["trimalloc", "glibc"])
def test_multiprocess_gauges_follow_the_hooks(tmp_path, preload):
    r = json.loads(run_py(MULTI, preload=preload, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)).stdout)
    s = r["samples"]
    # the two gc hook trims reached the shared files through the listener
    assert s["trimalloc_trims_total"][0] == r["trims"] >= 2
    value, labels = s["trimalloc_rss_bytes"]
    assert value > 0 and labels == {"pid": str(r["pid"])}  # liveall: per process
    assert s["trimalloc_allocated_bytes"][0] > 0
    if POOLS_KNOWN:  # pymalloc's arenas, through the same files
        assert "trimalloc_pymalloc_arena_bytes" in s and "trimalloc_pymalloc_released_bytes_total" in s, s
    else:
        assert not [k for k in s if "pymalloc" in k], s


def test_metric_names_are_unique_and_in_base_units():
    from trimalloc.prometheus import metric_names
    names = metric_names()
    assert set(names) == set(core_fields())
    families = [m for m, _, counter in names.values()]
    assert len(set(families)) == len(families)
    assert names["trim_ns"] == ("trimalloc_trim_seconds", 1e-9, True)
    assert names["allocated"] == ("trimalloc_allocated_bytes", 1, False)
    assert names["purged_bytes"][0] == "trimalloc_purged_bytes"
    assert names["purged"][0] == "trimalloc_purged_now_bytes"


def test_counters_never_go_down():
    reg = CollectorRegistry()
    c = register(reg)
    real = trimalloc._trimalloc.stats
    values = iter([100, 90, 120])

    def fake():
        s = real()
        s["frees"] = next(values)  # frees lags: allocations - live blocks can shrink
        return s

    trimalloc._trimalloc.stats = fake
    try:
        got = [samples(reg)["trimalloc_frees_total"] for _ in range(3)]
    finally:
        trimalloc._trimalloc.stats = real
    assert got == [100, 100, 120], got
    assert c.prefix == "trimalloc"


FORKED = r'''
import json, os
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector
import trimalloc, trimalloc.prometheus
for _ in range(3):
    trimalloc.trim()  # the master's own trims, before the fork
pid = os.fork()
if pid == 0:
    m = trimalloc.prometheus.enable_multiprocess(registry=CollectorRegistry())
    trimalloc.trim()  # the worker's one trim
    m.update()
    os._exit(0)
os.waitpid(pid, 0)
reg = CollectorRegistry()
MultiProcessCollector(reg)
out = {s.name: s.value for fam in reg.collect() for s in fam.samples if s.name == "trimalloc_trims_total"}
print(json.dumps({"worker_trims_total": out.get("trimalloc_trims_total"),
                  "master_trims": trimalloc.stats()["trims"]}))
'''


def test_multiprocess_counts_each_worker_from_its_own_start(tmp_path):
    r = json.loads(run_py(FORKED, PROMETHEUS_MULTIPROC_DIR=str(tmp_path)).stdout)
    assert r["master_trims"] == 3
    assert r["worker_trims_total"] == 1, r  # not 3 + 1: the master's trims are not the worker's
