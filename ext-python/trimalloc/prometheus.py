"""trimalloc.prometheus: the allocator's stats as Prometheus metrics.

Single process:

    import trimalloc.prometheus
    trimalloc.prometheus.register()          # adds a collector to prometheus_client.REGISTRY

Every scrape then reads stats() afresh: one metric per field of the core's
field list that the backend measures (gauges, and counters for the fields that
only grow), plus trimalloc_rss_bytes and trimalloc_info{backend,version}.

Multiprocess mode (gunicorn, Celery prefork with PROMETHEUS_MULTIPROC_DIR set):
custom collectors do not run there, only metric objects that write their
values to the shared directory. So:

    trimalloc.prometheus.enable_multiprocess()   # in each worker process

creates those Gauges and Counters and updates them whenever a trimalloc hook
runs (trimalloc.gc, trimalloc.celery, the WSGI middleware, gunicorn's
post_request, trimalloc.trimming); call .update() yourself for more.

While trims reach pymalloc's pools (pymalloc, the default; not under
PYTHONMALLOC=malloc) the arenas whose pools trims walk (those pymalloc
mapped since trimalloc was imported) are exported too:
trimalloc_pymalloc_arena_bytes and _arenas, _free_bytes (what a trim would
give back of them now; the multiprocess metrics read it weighing at most 512
changed pools) and the counters _released_bytes, _pools_released and
_sparse_pools_trimmed.

Counters never go down: a field of the core's list that can lag behind
(`frees` is allocations minus live blocks) is exported as its high-water
mark. And each process counts from its own start: a worker forked from a
master that already counted (trims, allocations) does not report the
master's counts again, so sums over workers are right. (When trimalloc was
first imported after the fork, a worker counts from that import.)
"""
from __future__ import annotations

import os
import threading
from typing import Any, Dict, Iterator, List, Optional, Tuple

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from . import _hooks, _trimalloc
from ._report import pymalloc_in_use

# The fields (from the core's list, _trimalloc.FIELDS) that only ever grow,
# exported as counters; every other field is a gauge, so a field added to the
# core shows up as a gauge without a change here.
COUNTER_FIELDS = frozenset(
    ["allocations", "frees", "huge_allocations", "purges", "purged_bytes", "trims",
     "trimmed_bytes", "trim_ns"]
)


# pymalloc's arenas, exported while trims reach its pools (the package's
# arena allocator, _pools.c and bind_pymalloc.c; not under PYTHONMALLOC=malloc, where every
# object is in the fields above): name, is_counter, help.
POOL_METRICS = (
    ("pymalloc_arenas", False, "pymalloc arenas that trims walk (those mapped since trimalloc was imported)"),
    ("pymalloc_arena_bytes", False, "bytes of the pymalloc arenas that trims walk"),
    ("pymalloc_free_bytes", False, "bytes of pymalloc's pool pages that a trim would give back now"),
    ("pymalloc_released_bytes", True, "bytes of pymalloc's pool pages given back by trims"),
    ("pymalloc_pools_released", True, "empty pymalloc pools whose pages trims gave back"),
    ("pymalloc_sparse_pools_trimmed", True, "sparse pymalloc pools whose free pages trims gave back"),
)
_COUNTERS = COUNTER_FIELDS | {name for name, is_counter, _doc in POOL_METRICS if is_counter}


def _pools_raw(weigh_all: bool = True) -> Dict[str, Any]:
    """POOL_METRICS' values as counted since the interpreter started, or {}
    when trims leave pymalloc's pools alone. weigh_all False: the free bytes
    weigh at most 512 sparse pools that changed since they were weighed (the
    multiprocess metrics, updated after every hook's trim)."""
    if not pymalloc_in_use():
        return {}
    p = _trimalloc._pymalloc_pools(weigh_all)
    if not p["on"]:
        return {}
    return {"pymalloc_arenas": p["arenas"], "pymalloc_arena_bytes": p["arenas"] * p["arena_bytes"],
            "pymalloc_free_bytes": p["free_bytes"], "pymalloc_released_bytes": p["released_bytes"],
            "pymalloc_pools_released": p["pools_released"],
            "pymalloc_sparse_pools_trimmed": p["sparse_pools_trimmed"]}


def _base_name(prefix: str, name: str, unit: str) -> Tuple[str, float]:
    """(metric name, scale) in Prometheus' base units: bytes, seconds, ratio."""
    if unit == "ns":
        base = name[:-3] if name.endswith("_ns") else name
        return "%s_%s_seconds" % (prefix, base), 1e-9
    if unit == "bytes" and not name.endswith("bytes"):
        return "%s_%s_bytes" % (prefix, name), 1
    if unit == "ratio" and not name.endswith("ratio"):
        return "%s_%s_ratio" % (prefix, name), 1
    return "%s_%s" % (prefix, name), 1


def metric_names(prefix: str = "trimalloc") -> Dict[str, Tuple[str, float, bool]]:
    """field -> (metric name, scale, is_counter) for every field of the core's list.

    A gauge whose name would clash with a counter's (the gauge "purged", in
    bytes, and the counter "purged_bytes") gets "_now" before its unit:
    trimalloc_purged_now_bytes next to trimalloc_purged_bytes_total."""
    out: Dict[str, Tuple[str, float, bool]] = {}
    counters = set()
    for name, _type, unit, _doc in _trimalloc.FIELDS:
        if name in COUNTER_FIELDS:
            counters.add(_base_name(prefix, name, unit)[0])
    for name, _type, unit, _doc in _trimalloc.FIELDS:
        metric, scale = _base_name(prefix, name, unit)
        is_counter = name in COUNTER_FIELDS
        if not is_counter and metric in counters:
            suffix = {"ns": "_seconds", "bytes": "_bytes", "ratio": "_ratio"}.get(unit, "")
            metric = "%s_%s_now%s" % (prefix, name, suffix)
        out[name] = (metric, scale, is_counter)
    return out


# Counter values this process inherited (from the master it was forked from):
# subtracted, so that every process counts from its own start.
_baseline: Dict[str, float] = {}
_baseline_lock = threading.Lock()


def _take_baseline() -> None:
    s = dict(_trimalloc.stats(), **_pools_raw(weigh_all=False))
    with _baseline_lock:
        _baseline.clear()
        for name in _COUNTERS:
            if name in s:
                _baseline[name] = s[name]


def _since_start(s: Dict[str, Any]) -> Dict[str, Any]:
    with _baseline_lock:
        return {k: (max(v - _baseline.get(k, 0), 0) if k in _COUNTERS else v) for k, v in s.items()}


def _families(prefix: str, pools: bool) -> List[Tuple[str, str, float, bool, str]]:
    """(key, metric name, scale, is_counter, help) of every field of the
    core's list and, with `pools`, of POOL_METRICS: what both the collector
    and the multiprocess metrics export."""
    names = metric_names(prefix)
    out = [(name,) + names[name] + (doc,) for name, _type, _unit, doc in _trimalloc.FIELDS]
    if pools:
        out += [(name, "%s_%s" % (prefix, name), 1, is_counter, doc) for name, is_counter, doc in POOL_METRICS]
    return out


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_take_baseline)
if _trimalloc.forked_child():  # imported first in a fork: count from here
    _take_baseline()


class TrimallocCollector:
    """A prometheus_client collector reading trimalloc.stats() at each scrape."""

    def __init__(self, prefix: str = "trimalloc") -> None:
        if not isinstance(prefix, str) or not prefix:
            raise TypeError("prefix must be a non-empty str, not %r" % (prefix,))
        self.prefix = prefix
        self._high: Dict[str, float] = {}
        self._lock = threading.Lock()

    def collect(self) -> Iterator[Any]:
        s = _since_start(dict(_trimalloc.stats(), **_pools_raw()))
        info = GaugeMetricFamily(self.prefix + "_info", "trimalloc backend and version",
                                 labels=["backend", "version"])
        info.add_metric([str(s["backend"]), _trimalloc.VERSION], 1)
        yield info
        for name, metric, scale, is_counter, doc in _families(self.prefix, pools=True):
            if name not in s:
                continue
            value = s[name] * scale
            if is_counter:
                with self._lock:  # never lower than what a scrape already saw
                    value = self._high[name] = max(value, self._high.get(name, 0))
                yield CounterMetricFamily(metric, doc, value=value)
            else:
                yield GaugeMetricFamily(metric, doc, value=value)
        yield GaugeMetricFamily(self.prefix + "_rss_bytes", "resident set size of the process",
                                value=_trimalloc.rss())


def register(registry: Any = REGISTRY, prefix: str = "trimalloc") -> TrimallocCollector:
    """Register a TrimallocCollector with registry (default: the global one)."""
    c = TrimallocCollector(prefix)
    registry.register(c)
    return c


class MultiprocessMetrics:
    """Gauges and Counters holding the stats, for prometheus_client's multiprocess mode.

    gauge_mode is the Gauge multiprocess_mode: "liveall" (default: one series
    per live process, labelled pid), "livesum", "all", "sum", "min" or "max".
    Counters add each process's growth (past its high-water mark) since its
    own start."""

    def __init__(self, prefix: str = "trimalloc", registry: Any = REGISTRY,
                 gauge_mode: str = "liveall") -> None:
        if not isinstance(prefix, str) or not prefix:
            raise TypeError("prefix must be a non-empty str, not %r" % (prefix,))
        modes = ("all", "liveall", "livesum", "sum", "min", "max")
        if gauge_mode not in modes:
            raise ValueError("gauge_mode must be one of %s, not %r" % (", ".join(modes), gauge_mode))
        self._lock = threading.Lock()
        self._gauges: Dict[str, Any] = {}
        self._counters: Dict[str, Any] = {}
        self._scales: Dict[str, float] = {}
        self._last: Dict[str, float] = {}
        self._pid = os.getpid()
        # pymalloc's: when trims reach its pools in this process (decided at import)
        for name, metric, scale, is_counter, doc in _families(prefix, pools=bool(_pools_raw(weigh_all=False))):
            self._scales[name] = scale
            if is_counter:
                self._counters[name] = Counter(metric, doc, registry=registry)
            else:
                self._gauges[name] = Gauge(metric, doc, registry=registry, multiprocess_mode=gauge_mode)
        self._rss = Gauge(prefix + "_rss_bytes", "resident set size of the process",
                          registry=registry, multiprocess_mode=gauge_mode)

    def update(self) -> None:
        """Write the current stats into the metrics."""
        s = _since_start(dict(_trimalloc.stats(), **_pools_raw(weigh_all=False)))
        with self._lock:
            if self._pid != os.getpid():  # forked since the last update: start again
                self._pid = os.getpid()
                self._last = {}
            for name, g in self._gauges.items():
                if name in s:
                    g.set(s[name] * self._scales[name])
            for name, c in self._counters.items():
                if name not in s:
                    continue
                v = s[name] * self._scales[name]
                high = self._last.get(name, 0)
                if v > high:  # only growth past the high-water mark: never counted twice
                    c.inc(v - high)
                    self._last[name] = v
            self._rss.set(_trimalloc.rss())

    def _on_hook(self, source: str, released: Optional[int]) -> None:
        self.update()

    def install(self) -> MultiprocessMetrics:
        """Update after every trimalloc hook run (and now)."""
        _hooks.add_listener(self._on_hook)
        self.update()
        return self

    def uninstall(self) -> None:
        _hooks.remove_listener(self._on_hook)


_multiprocess: List[MultiprocessMetrics] = []


def enable_multiprocess(prefix: str = "trimalloc", registry: Any = REGISTRY,
                        gauge_mode: str = "liveall") -> MultiprocessMetrics:
    """Create the multiprocess metrics once per process and update them from the hooks."""
    if not _multiprocess:
        _multiprocess.append(MultiprocessMetrics(prefix, registry, gauge_mode).install())
    return _multiprocess[0]
