"""trimalloc.gc: trim from gc.callbacks after the named collections."""
import gc
import json

import pytest

import trimalloc
from conftest import MiB, run_py
from test_api import BURST, NO_PURGE

GC_BURST = r'''
if ENABLE:
    trimalloc.gc.enable(min_interval=0)
base = _trimalloc.rss()
h, pin = burst(128)
peak = _trimalloc.rss()
del h  # a reference cycle: only the collector frees it
gc.collect()
after = _trimalloc.rss()
print(json.dumps(dict(base=base, peak=peak, after=after, hook=trimalloc.gc.stats(),
                      trims=trimalloc.stats()["trims"])))
'''


def gc_burst(preload, enable):
    code = BURST + ("ENABLE = %r\n" % enable) + GC_BURST
    return json.loads(run_py(code, preload=preload, **NO_PURGE).stdout.splitlines()[-1])


@pytest.mark.parametrize("preload", [True, False], ids=["trimalloc", "glibc"])
def test_gc_hook_lowers_rss_after_burst(preload):
    on = gc_burst(preload, enable=True)
    off = gc_burst(preload, enable=False)
    for r in (on, off):
        assert r["peak"] - r["base"] > 110 * MiB, r  # 128 MiB burst really resident
    # Without the hook the freed burst stays resident (more than half of it) ...
    assert off["after"] - off["base"] > (off["peak"] - off["base"]) // 2, off
    assert off["trims"] == 0 and off["hook"]["collections"] == 0
    # ... with it, the collection that freed the burst gave most of it back.
    assert on["after"] - on["base"] < (on["peak"] - on["base"]) // 4, on
    assert on["hook"]["trims"] >= 1 and on["hook"]["trimmed_bytes"] > 96 * MiB, on
    assert on["trims"] >= 1  # counted in the allocator's stats too


def test_gc_hook_only_runs_for_the_named_generations():
    trimalloc.gc.enable(min_interval=0, generations=(2,))
    try:
        before = trimalloc.gc.stats()
        gc.collect(0)
        gc.collect(1)
        mid = trimalloc.gc.stats()
        gc.collect(2)
        after = trimalloc.gc.stats()
    finally:
        trimalloc.gc.disable()
    assert mid["collections"] == before["collections"]
    assert after["collections"] == before["collections"] + 1
    assert after["trims"] == before["trims"] + 1


def test_gc_hook_is_rate_limited():
    trimalloc.gc.enable(min_interval=3600, generations=(0, 1, 2))
    try:
        trimalloc._trimalloc.trim_if_due(0)  # a trim "just ran"
        before = trimalloc.gc.stats()
        for _ in range(5):
            gc.collect()
        after = trimalloc.gc.stats()
    finally:
        trimalloc.gc.disable()
    assert after["collections"] == before["collections"] + 5
    assert after["trims"] == before["trims"]


def test_gc_enable_disable_enabled():
    assert not trimalloc.gc.enabled()
    trimalloc.gc.enable()
    trimalloc.gc.enable(min_interval=2.5)  # changes settings, installs once
    try:
        assert trimalloc.gc.enabled()
        assert gc.callbacks.count(trimalloc.gc._callback) == 1
        assert trimalloc.gc.stats()["min_interval"] == 2.5
    finally:
        trimalloc.gc.disable()
    assert not trimalloc.gc.enabled()
    assert trimalloc.gc._callback not in gc.callbacks
    trimalloc.gc.disable()  # idempotent
