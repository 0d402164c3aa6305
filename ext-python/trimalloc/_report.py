"""trimalloc.report(): Python's allocator, the C allocator and the kernel, side by side.

Python level: pymalloc's arenas, read from sys._debugmallocstats(). That
function only prints (to the C stderr), so report() points fd 2 at an
anonymous memory file for the duration of the call (a file, not a pipe: a pipe
would block once its buffer fills, with nobody reading), then parses the
"# arenas allocated current", "N arenas * S bytes/arena", "# bytes in
allocated blocks", "# bytes in available blocks" and "N unused pools * S bytes"
lines. Anything another thread writes to fd 2 meanwhile ends up in that file.
With PYTHONMALLOC=malloc there is no pymalloc: the Python section says so, and
the objects are counted by the allocator section instead.
"""
from __future__ import annotations

import os
import sys
import threading

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see __init__.py)
if TYPE_CHECKING:
    from typing import IO, Any, Dict, Optional

from . import _trimalloc

_capture_lock = threading.Lock()

_PATTERNS = {
    "arenas": r"^# arenas allocated current\s*=\s*([\d,]+)",
    "arenas_reclaimed": r"^# arenas reclaimed\s*=\s*([\d,]+)",
    "arenas_highwater": r"^# arenas highwater mark\s*=\s*([\d,]+)",
    "block_bytes": r"^# bytes in allocated blocks\s*=\s*([\d,]+)",
    "free_block_bytes": r"^# bytes in available blocks\s*=\s*([\d,]+)",
}
_ARENA_LINE = r"^(\d+) arenas \* (\d+) bytes/arena\s*=\s*([\d,]+)"
_POOL_LINE = r"^(\d+) unused pools \* (\d+) bytes\s*=\s*([\d,]+)"


def pymalloc_in_use() -> bool:
    """Does pymalloc serve this interpreter's objects? Not under
    PYTHONMALLOC=malloc (or malloc_debug), where it counts no block."""
    return sys.getallocatedblocks() > 0


def _debugmallocstats_text() -> str:
    with _capture_lock:
        try:
            sys.stderr.flush()
        except Exception:  # stderr may be closed or replaced: capture anyway
            pass
        f: IO[bytes]
        if hasattr(os, "memfd_create"):
            fd = os.memfd_create("trimalloc-report", getattr(os, "MFD_CLOEXEC", 1))
            f = os.fdopen(fd, "w+b")
        else:  # pragma: no cover (Python built without memfd_create)
            import tempfile

            f = tempfile.TemporaryFile()
        with f:
            saved = os.dup(2)
            try:
                os.dup2(f.fileno(), 2)
                sys._debugmallocstats()
            finally:
                os.dup2(saved, 2)
                os.close(saved)
            f.seek(0)
            return f.read().decode("utf-8", "replace")


def _int(s: str) -> int:
    return int(s.replace(",", ""))


def parse_debugmallocstats(text: str) -> Dict[str, Any]:
    """The pymalloc numbers from sys._debugmallocstats() output (see module doc)."""
    import re  # here, not at import: only report() parses

    out: Dict[str, Any] = {"pymalloc": False}
    m = re.search(_ARENA_LINE, text, re.M)
    if not m:
        return out
    out["pymalloc"] = True
    out["arena_size"] = int(m.group(2))
    out["arena_bytes"] = _int(m.group(3))
    for key, pat in _PATTERNS.items():
        m = re.search(pat, text, re.M)
        if m:
            out[key] = _int(m.group(1))
    m = re.search(_POOL_LINE, text, re.M)
    if m:
        out["unused_pools"] = int(m.group(1))
        out["pool_size"] = int(m.group(2))
        out["free_pool_bytes"] = _int(m.group(3))
    if out["arena_bytes"] and "block_bytes" in out:
        out["fragmentation"] = 1.0 - out["block_bytes"] / float(out["arena_bytes"])
    return out


def _proc_status(key: str) -> Optional[int]:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _mib(n: Optional[float]) -> str:
    """A byte count for people: KiB below 1 MiB, GiB from 1 GiB."""
    if n is None:
        return "?"
    if n >= 1 << 30:
        return "%.2f GiB" % (n / float(1 << 30))
    if n >= 1 << 20:
        return "%.1f MiB" % (n / float(1 << 20))
    return "%.0f KiB" % (n / 1024.0)


class Report(dict):  # type: ignore[type-arg]
    """A dict with three sections, "python", "allocator" and "kernel"; str() is a table."""

    def __str__(self) -> str:
        py, al, k = self["python"], self["allocator"], self["kernel"]
        lines = ["trimalloc report (backend: %s, pid %d)" % (al["backend"], k["pid"])]
        if py.get("pymalloc"):
            free = py.get("free_block_bytes", 0) + py.get("free_pool_bytes", 0)
            lines.append(
                "  python     pymalloc %d arenas x %s = %s: %s in objects, %s free inside them"
                " (%.0f%% unused); %d allocated blocks"
                % (
                    py["arenas"],
                    _mib(py["arena_size"]),
                    _mib(py["arena_bytes"]),
                    _mib(py.get("block_bytes")),
                    _mib(free),
                    100.0 * py.get("fragmentation", 0.0),
                    py["allocated_blocks"],
                )
            )
            if py.get("pools_free_bytes") is not None:  # one line a level: the pools on python's
                lines[-1] += "; a trim gives back %s of its pools now (%s so far)" % (
                    _mib(py["pools_free_bytes"]), _mib(py["pools_released_bytes"]))
            else:  # 3.8 and 3.9: pools of one OS page (trimalloc info says the same)
                lines[-1] += "; trims leave its pools alone on this Python"
        else:
            lines.append(
                "  python     no pymalloc (PYTHONMALLOC=malloc?): objects are counted by the"
                " allocator; %d allocated blocks" % py["allocated_blocks"]
            )
        parts = ["allocated %s" % _mib(al.get("allocated"))]
        if "resident" in al:
            parts.append("resident %s" % _mib(al["resident"]))
        if "fragmentation" in al:
            parts.append("fragmentation %.1f%%" % (100.0 * al["fragmentation"]))
        parts.append("free but resident %s" % _mib(al["free_bytes"]))
        lines.append("  allocator  %s: %s" % (al["backend"], ", ".join(parts)))
        rss = "rss %s" % _mib(k["rss"])
        if k.get("rss_peak") is not None:
            rss += " (peak %s)" % _mib(k["rss_peak"])
        lines.append("  kernel     " + rss)
        return "\n".join(lines)


def report() -> Report:
    """Python's allocator, the C allocator and the kernel, side by side.

    report()["python"]: pymalloc arenas ("arenas", "arena_bytes", "block_bytes",
    "free_block_bytes", "free_pool_bytes", "fragmentation"), what trims give back
    of its pools ("pools_free_bytes" now, "pools_released", "sparse_pools_trimmed",
    "pools_released_bytes" so far) and "allocated_blocks" (sys.getallocatedblocks()); report()["allocator"]: the
    stats() fields that say how much is live and held ("allocated", "resident",
    "fragmentation", ...) plus "free_bytes"; report()["kernel"]: "rss" and
    "rss_peak" of this process. print(report()) shows them as a table."""
    py = parse_debugmallocstats(_debugmallocstats_text())
    py["allocated_blocks"] = sys.getallocatedblocks()
    pools = _trimalloc._pymalloc_pools()
    if py.get("pymalloc") and pools["on"]:  # trims give back pymalloc's pools (_pools.c)
        py["pools_free_bytes"] = pools["free_bytes"]
        py["pools_released"] = pools["pools_released"]
        py["sparse_pools_trimmed"] = pools["sparse_pools_trimmed"]
        py["pools_released_bytes"] = pools["released_bytes"]
    s = _trimalloc.stats()
    al = {k: s[k] for k in ("backend", "allocated", "resident", "mapped", "fragmentation") if k in s}
    al["free_bytes"] = _trimalloc.free_bytes()
    kernel = {"pid": os.getpid(), "rss": _trimalloc.rss(), "rss_peak": _proc_status("VmHWM")}
    return Report(python=py, allocator=al, kernel=kernel)
