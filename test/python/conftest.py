"""Shared helpers for the trimalloc Python suite.

The suite runs on Debian's /usr/bin/python3 with the package installed (see
script/test-python). Anything that depends on which allocator runs happens in
a child process whose environment says so: preload=True puts the bundled
libtrimalloc.so in LD_PRELOAD, preload=False removes it (glibc backend).
"""
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import pytest

import trimalloc

ROOT = Path(__file__).resolve().parents[2]
HEADER = ROOT / "core" / "trimalloc.h"
MiB = 1 << 20


def core_fields() -> List[str]:
    """The stats field names, parsed from the X-macro in core/trimalloc.h."""
    text = HEADER.read_text()
    start = text.index("#define TRIMALLOC_STATS_FIELDS(X)")
    lines = []
    for line in text[start:].splitlines()[1:]:
        lines.append(line)
        if not line.rstrip().endswith("\\"):
            break
    return re.findall(r"X\(\s*\w+\s*,\s*(\w+)\s*,", "\n".join(lines))


def core_version() -> str:
    return re.search(r'#define TRIMALLOC_VERSION "([^"]+)"', HEADER.read_text()).group(1)


def child_env(preload: bool, **extra: str) -> Dict[str, str]:
    env = dict(os.environ)
    for k in ("LD_PRELOAD", "PYTHONMALLOC", "TRIMALLOC_PRELOAD_GUARD", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(k, None)
    if preload:
        env["LD_PRELOAD"] = trimalloc.library_path()
    env.update(extra)
    return env


def run_py(code: str, preload: bool = False, env: Optional[Dict[str, str]] = None,
           args: Optional[List[str]] = None, timeout: float = 120, check: bool = True,
           **extra: str) -> subprocess.CompletedProcess:
    """Runs `python -c code` (with warnings as errors) in a child; returns the result."""
    e = env if env is not None else child_env(preload, **extra)
    p = subprocess.run([sys.executable, "-W", "error", "-c", code] + (args or []), env=e,
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True,
                       timeout=timeout)
    if check and p.returncode != 0:
        raise AssertionError("child failed (%d)\n--- stdout\n%s\n--- stderr\n%s"
                             % (p.returncode, p.stdout, p.stderr))
    return p


def fresh_rate_limit() -> None:
    """The last trim an hour ago, in this process: the rate limit lets the next
    trim run. A deferred trim this wakes up is waited for (then the clock is
    moved past it too), so that it cannot land in the middle of a test."""
    from trimalloc import _trimalloc
    _trimalloc._advance_clock(3600)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        p = _trimalloc.policy_stats()
        if not p["pending"] and not p["busy"]:
            _trimalloc._advance_clock(3600)
            return
        time.sleep(0.005)
    raise AssertionError("a deferred trim did not finish")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(cond: Callable[[], bool], timeout: float = 30.0, step: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def stop_process(p: subprocess.Popen, sig: int = signal.SIGTERM, timeout: float = 15) -> None:
    """Stops a child we started, by its pid: sig, then SIGKILL."""
    if p.poll() is not None:
        return
    try:
        p.send_signal(sig)
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(timeout)


def rss_of(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS for pid %d" % pid)


def children_of(pid: int) -> List[int]:
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d))
    return out


@pytest.fixture
def fields() -> List[str]:
    return core_fields()
