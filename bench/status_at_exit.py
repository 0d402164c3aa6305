#!/usr/bin/python3
"""Runs a Python script, then prints the process's resident memory split:
anonymous against file-backed (the heap profiler's unwinder reads the
.eh_frame of every library on the stack: clean, shared page-cache pages
that count in RSS). The Python twin of status_at_exit.rb.

    python3 bench/status_at_exit.py bench/py_tasks.py --tasks 4 --idle-ms 0"""
import runpy
import sys


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: status_at_exit.py SCRIPT [ARGS...]")
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        keep = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
        with open("/proc/self/status") as f:
            lines = [l.split() for l in f if l.split(":")[0] in keep]
        sys.stderr.write("STATUS " + " ".join(" ".join(l[:2]) for l in lines) + "\n")


if __name__ == "__main__":
    main()
