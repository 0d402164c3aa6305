#!/usr/bin/python3
"""A model of the unwind-table pages libgcc's unwinder reads for the stacks
of a heap profile, to set against the file pages the kernel maps for them
(bench/status_at_exit.* with STATUS_PAGES).

For every native PC of the profile (`go tool pprof -raw`, so Debian's
golang-go), per library: the .eh_frame_hdr pages the binary search of
GCC 12's find_fde_tail probes, the pages of the FDE that covers the PC and
of its CIE (readelf --debug-dump=frames). Then the 64 KiB windows (by
address) those pages fall in: the kernel's fault-around maps the page-cache
pages of that window on each read fault (fault_around_bytes, 64 KiB by
default), so a window read once is resident whole. Left out: the
profiler's own frames (skipped, in libtrimalloc.so) and the frame a walk
stops at (the eval function): one FDE each per walk.

    python3 bench/unwind_pages.py PROFILE.pb.gz [--deepest]

--deepest: only the PCs of the profile's longest call path (one walk)."""
import os
import re
import subprocess
import sys


def read_profile(path: str):
    raw = subprocess.run(["go", "tool", "pprof", "-raw", path], capture_output=True, text=True, check=True).stdout
    traces, locs, maps, part = [], {}, {}, None
    for l in raw.splitlines():
        if l.startswith(("Samples", "Locations", "Mappings")):
            part = l[0]
        elif part == "S" and ":" in l:
            traces.append([int(x) for x in l.split(":", 1)[1].split()])
        elif part == "L":
            m = re.match(r"\s*(\d+): (0x[0-9a-f]+) M=(\d+)", l)
            if m:
                locs[int(m.group(1))] = (int(m.group(2), 16), int(m.group(3)))
        elif part == "M":
            m = re.match(r"(\d+): (0x[0-9a-f]+)/(0x[0-9a-f]+)/(0x[0-9a-f]+) (\S+)", l)
            if m:
                maps[int(m.group(1))] = (int(m.group(2), 16), int(m.group(4), 16), os.path.realpath(m.group(5)))
    return traces, locs, maps


def elf(path: str, cache: dict):
    """Sections {name: (vaddr, offset, size)} and FDEs sorted by pc:
    (pc_begin, offset in .eh_frame, length, CIE offset)."""
    if path not in cache:
        secs, fdes = {}, []
        for l in subprocess.run(["readelf", "-S", "-W", path], capture_output=True, text=True).stdout.splitlines():
            p = l.replace("[ ", "[").split()
            if len(p) > 6 and p[0].startswith("[") and p[0] != "[Nr]":
                secs[p[1]] = (int(p[3], 16), int(p[4], 16), int(p[5], 16))
        frames = subprocess.run(["readelf", "--debug-dump=frames", path], capture_output=True, text=True).stdout
        for m in re.finditer(r"^([0-9a-f]+) ([0-9a-f]+) [0-9a-f]+ FDE cie=([0-9a-f]+) pc=([0-9a-f]+)\.\.", frames, re.M):
            fdes.append((int(m.group(4), 16), int(m.group(1), 16), int(m.group(2), 16), int(m.group(3), 16)))
        fdes.sort()
        cache[path] = (secs, fdes)
    return cache[path]


def pages_for(vaddr: int, secs: dict, fdes: list) -> set:
    """File pages read to find and decode the FDE of vaddr."""
    hdr, ehf = secs[".eh_frame_hdr"], secs[".eh_frame"]
    pages = {hdr[1] // 4096}  # the header (version, encodings, count)
    lo, hi, mid = 0, len(fdes), 0
    while lo < hi:  # find_fde_tail's binary search over the 8-byte table entries
        mid = (lo + hi) // 2
        pages.add((hdr[1] + 12 + 8 * mid) // 4096)
        if vaddr < fdes[mid][0]:
            hi = mid
        elif mid + 1 < len(fdes) and vaddr >= fdes[mid + 1][0]:
            pages.add((hdr[1] + 12 + 8 * (mid + 1)) // 4096)
            lo = mid + 1
        else:
            break
    _pc, off, length, cie = fdes[mid]
    pages.update(range((ehf[1] + off) // 4096, (ehf[1] + off + length + 4) // 4096 + 1))
    pages.add((ehf[1] + cie) // 4096)
    return pages


def main() -> None:
    if len(sys.argv) < 2:
        raise SystemExit("usage: unwind_pages.py PROFILE.pb.gz [--deepest]")
    traces, locs, maps = read_profile(sys.argv[1])
    ids = max(traces, key=len) if "--deepest" in sys.argv else list(locs)
    cache: dict = {}
    per_lib: dict = {}
    for i in set(ids):
        pc, m = locs[i]
        if not m or pc == 0:
            continue  # an interpreter frame
        start, off, path = maps[m]
        secs, fdes = elf(path, cache)
        if ".eh_frame_hdr" not in secs or not fdes:
            continue
        text = secs[".text"]
        vaddr = pc - start + off + (text[0] - text[1])  # file offset to link-time address
        pcs, pages = per_lib.setdefault(path, (set(), set()))
        pcs.add(pc)
        pages |= pages_for(vaddr, secs, fdes)
    for path, (pcs, pages) in sorted(per_lib.items()):
        secs, _ = cache[path]
        start, off, _p = next(mp for mp in maps.values() if mp[2] == path)
        base = start - off  # the library's load address: windows are by address
        windows = {(base + p * 4096) // 65536 for p in pages}
        span = secs[".eh_frame"][1] + secs[".eh_frame"][2] - secs[".eh_frame_hdr"][1]
        print(f"{os.path.basename(path)}: {len(pcs)} PCs; {len(pages)} pages read ({len(pages) * 4} KiB) "
              f"in {len(windows)} 64 KiB windows; .eh_frame_hdr+.eh_frame {span // 1024} KiB")


if __name__ == "__main__":
    main()
