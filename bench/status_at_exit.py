#!/usr/bin/python3
"""Runs a Python script, then prints the process's resident memory split:
anonymous against file-backed (the heap profiler's unwinder reads the
.eh_frame of every library on the stack: clean, shared page-cache pages
that count in RSS). The Python twin of status_at_exit.rb.

    python3 bench/status_at_exit.py bench/py_tasks.py --tasks 4 --idle-ms 0

With STATUS_PAGES=FILE it also writes the file pages resident at exit
("path perms file-offset", hex, one a line; /proc/self/pagemap's present
bit), as status_at_exit.rb does. Those files are summed per library and ELF
section (readelf -S) with

    python3 bench/status_at_exit.py --sections A.pages B.pages ...

which prints, in KiB, the (library, section) rows that differ between them."""
import os
import runpy
import sys


def write_pages(out: str) -> None:
    with open("/proc/self/maps") as m:
        maps = [l.split(None, 5) for l in m]
    with open("/proc/self/pagemap", "rb") as pm, open(out, "w") as f:
        for p in maps:
            if len(p) < 6 or p[4] == "0":
                continue
            lo, hi = (int(x, 16) for x in p[0].split("-"))
            pm.seek(lo // 4096 * 8)
            ents = pm.read((hi - lo) // 4096 * 8)
            off = int(p[2], 16)
            for i in range(len(ents) // 8):
                if ents[i * 8 + 7] & 0x80:
                    f.write("%s %s %x\n" % (p[5].strip(), p[1], off + i * 4096))


def elf_sections(path: str, cache: dict) -> list:
    """[(file offset, end, name)] of the sections with file contents."""
    import subprocess  # here: the measured run imports nothing more than before

    if path not in cache:
        out = subprocess.run(["readelf", "-S", "-W", path], capture_output=True, text=True).stdout
        secs = []
        for l in out.splitlines():
            p = l.replace("[ ", "[").split()
            if len(p) > 6 and p[0].startswith("[") and p[0] != "[Nr]" and p[2] != "NOBITS":
                try:
                    off, size = int(p[4], 16), int(p[5], 16)
                except ValueError:
                    continue
                if size:
                    secs.append((off, off + size, p[1]))
        cache[path] = secs
    return cache[path]


def sections(files: list) -> None:
    import collections

    cache: dict = {}
    counts = []
    for name in files:
        c = collections.Counter()
        with open(name) as f:
            for l in f:
                path, _perms, off = l.rstrip("\n").rsplit(" ", 2)
                page = int(off, 16)
                secs = [s for lo, hi, s in elf_sections(path, cache) if lo < page + 4096 and hi > page] \
                    if os.path.exists(path) else []
                c[(os.path.basename(path), "+".join(secs) or "-")] += 4
        counts.append(c)
    print("%-28s %-28s" % ("library", "section") + "".join("%9s" % os.path.basename(n)[:8] for n in files))
    for k in sorted(set().union(*counts)):
        v = [c.get(k, 0) for c in counts]
        if len(set(v)) > 1:
            print("%-28s %-28s" % (k[0][:28], k[1][:28]) + "".join("%9d" % x for x in v))
    print("%-57s" % "all file pages" + "".join("%9d" % sum(c.values()) for c in counts))


def main() -> None:
    if len(sys.argv) >= 2 and sys.argv[1] == "--sections":
        sections(sys.argv[2:])
        return
    if len(sys.argv) < 2:
        raise SystemExit("usage: status_at_exit.py SCRIPT [ARGS...] | --sections PAGES...")
    script = sys.argv[1]
    sys.argv = sys.argv[1:]
    try:
        runpy.run_path(script, run_name="__main__")
    finally:
        keep = ("VmHWM", "VmRSS", "RssAnon", "RssFile")
        with open("/proc/self/status") as f:
            lines = [l.split() for l in f if l.split(":")[0] in keep]
        sys.stderr.write("STATUS " + " ".join(" ".join(l[:2]) for l in lines) + "\n")
        if os.environ.get("STATUS_PAGES"):
            write_pages(os.environ["STATUS_PAGES"])


if __name__ == "__main__":
    main()
