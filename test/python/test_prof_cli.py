"""`trimalloc top` and `trimalloc flame`, and the reader behind
trimalloc.profile.top (_trimalloc._prof_top), on a profile of known contents
written by the core's own encoder (test/prof/make_profile.c, built here; its
comment lists what it holds)."""
import gzip
import os
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from trimalloc import _trimalloc

from conftest import ROOT, child_env

MiB = 1 << 20
TOTAL_INUSE = 28 * MiB + MiB // 2 + 1000
TOTAL_ALLOC_OBJECTS = 43
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    """The path of the known profile (make_profile.c compiled with core/pprof.c)."""
    d = tmp_path_factory.mktemp("prof")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler to build test/prof/make_profile.c")
    exe = d / "make_profile"
    subprocess.run([cc, "-std=c11", "-D_GNU_SOURCE", "-I", str(ROOT / "core"),
                    str(ROOT / "test" / "prof" / "make_profile.c"), str(ROOT / "core" / "pprof.c"),
                    str(ROOT / "core" / "prim" / "linux.c"), "-o", str(exe)], check=True)
    out = d / "known.pb.gz"
    subprocess.run([str(exe), str(out)], check=True)
    return out


def cli(*args, **kw):
    """Runs `python -m trimalloc ARGS` on glibc; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "trimalloc"] + [str(a) for a in args], env=child_env(False),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True, timeout=60, **kw)


def usage_error(p, *words):
    assert p.returncode == 2, (p.returncode, p.stdout, p.stderr)
    assert p.stdout == ""
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("trimalloc: error: "), p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


def file_error(p, path, *words):
    assert p.returncode == 1, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("trimalloc: error: %s: " % path), p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


# ---- top ----

def test_top_table(profile):
    p = cli("top", profile)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].startswith("%s: 7 samples, reason dump" % profile), lines[0]
    assert lines[1].startswith("live: 28.5 MiB in 30 objects"), lines[1]
    assert "exactly 28.6 MiB at the dump" in lines[1]  # exact_allocated=30000000
    head = [i for i, l in enumerate(lines) if l.split() == ["live", "%", "objects", "allocated", "where"]]
    assert len(head) == 1, p.stdout
    rows = lines[head[0] + 1:]
    assert len(rows) == 6, p.stdout
    # largest first; (frames, tag) summed: ReportJob's two samples are one 9 MiB row, OtherJob its own
    assert rows[0].split()[:3] == ["16.0", "MiB", "56.1%"], rows[0]
    assert rows[0].endswith("[GET /reports] PyBytes_FromStringAndSize (python3.11) < "
                            "app.handlers.build_report (app/handlers.py:42) < app.main.handle (app/main.py:10)"), rows[0]
    assert rows[1].split()[:3] == ["9.0", "MiB", "31.6%"], rows[1]
    assert "[ReportJob] rb_str_buf_new (libruby-3.1.so.3.1) < String#* (<internal:string>) < " \
           "Report#render (app/models/report.rb:7) < ReportJob#perform (app/jobs/report_job.rb:3)" in rows[1]
    assert "malloc" not in rows[0] + rows[1] and "ruby_xmalloc" not in rows[1], "allocator frames are left out"
    assert "std::vector<std::pair<int, char*> >::_M_realloc_insert<&>(\"x\", 'y') (app) < main (app)" in rows[2]
    assert "[OtherJob]" in rows[3] and rows[3].split()[:2] == ["512.0", "KiB"]


def test_top_n_and_by(profile):
    p = cli("top", profile, "-n", "1")
    assert p.returncode == 0, p.stderr
    assert "top 1 of 6 call paths by inuse_space" in p.stdout
    assert "GET /reports" in p.stdout and "ReportJob" not in p.stdout
    assert "12.5 MiB" in p.stdout and "in the other 5 call paths" in p.stdout  # 28.5 MiB + 1000 B - 16 MiB
    p = cli("top", profile, "--by=alloc_space", "-n0")
    assert p.returncode == 0, p.stderr
    assert "top 6 of 6 call paths by alloc_space" in p.stdout
    assert "json.loads (/usr/lib/python3.11/json/__init__.py:346)" in p.stdout, "freed memory shows by alloc_space"
    p = cli("top", "--by", "inuse_objects", profile)
    assert p.returncode == 0 and "by inuse_objects" in p.stdout, p.stderr


def test_top_bad_arguments(profile):
    usage_error(cli("top"), "no profile FILE")
    usage_error(cli("top", profile, "-n", "x"), "-n", "'x'")
    usage_error(cli("top", profile, "-n", "-3"), "-n")
    usage_error(cli("top", profile, "-n"), "-n needs a value")
    usage_error(cli("top", profile, "--by", "cpu"), "--by", "inuse_space", "'cpu'")
    usage_error(cli("top", profile, "--frobnicate"), "unknown option", "--frobnicate")
    usage_error(cli("top", profile, profile), "one FILE only")


def test_top_bad_files(profile, tmp_path):
    missing = tmp_path / "missing.pb.gz"
    file_error(cli("top", missing), missing, "No such file or directory")
    text = tmp_path / "notes.txt"
    text.write_text("this is not a profile\n")
    file_error(cli("top", text), text, "not a profile")
    cut = tmp_path / "cut.pb.gz"
    data = profile.read_bytes()
    cut.write_bytes(data[:len(data) // 2])
    file_error(cli("top", cut), cut, "gzip")
    empty = tmp_path / "empty.pb.gz"
    empty.write_bytes(b"")
    file_error(cli("top", empty), empty, "empty")
    file_error(cli("top", tmp_path), tmp_path, "directory")


def test_top_reads_plain_protobuf(profile, tmp_path):
    """pprof's readers take gzipped or plain profile.proto: so do these."""
    raw = tmp_path / "plain.pb"
    raw.write_bytes(gzip.decompress(profile.read_bytes()))
    assert cli("top", raw).stdout.splitlines()[1:] == cli("top", profile).stdout.splitlines()[1:]


# ---- flame ----

def test_flame_svg(profile, tmp_path):
    out = tmp_path / "flame.svg"
    p = cli("flame", profile, "-o", out)
    assert p.returncode == 0, p.stderr
    assert p.stdout == "wrote %s (flame graph of inuse_space)\n" % out
    root = ET.parse(str(out)).getroot()  # well-formed XML
    assert root.tag == SVG + "svg"
    assert root.find(SVG + "script") is None, "self-contained, no script"
    titles = [t.text for t in root.iter(SVG + "title")]
    assert "all (28.5 MiB, 100.00%)" in titles
    assert "app.handlers.build_report (app/handlers.py:42) (16.0 MiB, 56.14%)" in titles
    # every frame's full text in its tooltip, escaped in the file and read back whole
    cxx = "std::vector<std::pair<int, char*> >::_M_realloc_insert<&>(\"x\", 'y') (/usr/bin/app)"
    assert any(t.startswith(cxx + " (3.0 MiB") for t in titles), titles
    assert "&lt;std::pair&lt;int, char*&gt; &gt;" in out.read_text()
    # widths by value: the root spans the drawing, the Python frames 16/28.5 of it
    rects = {g.find(SVG + "title").text.rsplit(" (", 1)[0]: float(g.find(SVG + "rect").get("width"))
             for g in root.iter(SVG + "g")}
    assert rects["all"] == pytest.approx(1180, abs=0.1)
    assert rects["app.main.handle (app/main.py:10)"] == pytest.approx(1180 * 16 * MiB / TOTAL_INUSE, abs=0.1)
    # ReportJob and OtherJob are one stack in the graph (tags merged): 9.5 MiB
    assert rects["ReportJob#perform (app/jobs/report_job.rb:3)"] == pytest.approx(
        1180 * (9 * MiB + MiB // 2) / TOTAL_INUSE, abs=0.1)
    assert "json.loads (/usr/lib/python3.11/json/__init__.py:346)" not in rects, "nothing live there"


def test_flame_other_type(profile, tmp_path):
    out = tmp_path / "alloc.svg"
    assert cli("flame", profile, "--type", "alloc_space", "-o", out).returncode == 0
    titles = [t.text for t in ET.parse(str(out)).getroot().iter(SVG + "title")]
    assert any(t.startswith("json.loads (/usr/lib/python3.11/json/__init__.py:346) (5.0 MiB") for t in titles)


def collapsed_lines(text):
    lines = text.splitlines()
    stacks = [l.rsplit(" ", 1)[0] for l in lines]
    assert len(set(stacks)) == len(stacks), "one line per distinct stack"
    return {s: int(l.rsplit(" ", 1)[1]) for s, l in zip(stacks, lines)}


def test_flame_collapsed(profile, tmp_path):
    p = cli("flame", profile, "--collapsed", "-o", "-")
    assert p.returncode == 0, p.stderr
    stacks = collapsed_lines(p.stdout)
    assert sum(stacks.values()) == TOTAL_INUSE, "the lines sum to the total inuse_space"
    rb = ("ReportJob#perform (app/jobs/report_job.rb:3);Report#render (app/models/report.rb:7);"
          "String#*;rb_str_buf_new;ruby_xmalloc;malloc")
    assert stacks[rb] == 9 * MiB + MiB // 2, "root first, the leaf last; tags merged"
    assert stacks["[no stack]"] == 1000
    out = tmp_path / "objects.folded"
    p = cli("flame", profile, "--collapsed", "--type", "alloc_objects", "-o", out)
    assert p.returncode == 0 and p.stdout == "wrote %s (collapsed stacks of alloc_objects)\n" % out
    assert sum(collapsed_lines(out.read_text()).values()) == TOTAL_ALLOC_OBJECTS


def test_flame_bad_arguments(profile, tmp_path):
    usage_error(cli("flame", profile), "no output", "-o")
    usage_error(cli("flame", "-o", tmp_path / "x.svg"), "no profile FILE")
    usage_error(cli("flame", profile, "-o"), "-o needs a value")
    usage_error(cli("flame", profile, "-o", tmp_path / "x.svg", "--colapsed"), "unknown option", "--colapsed")
    file_error(cli("flame", profile, "-o", tmp_path / "x.svg", "--type", "cpu"), profile, "no sample type 'cpu'",
               "inuse_space")
    file_error(cli("flame", profile, "-o", tmp_path / "no" / "x.svg"), tmp_path / "no" / "x.svg", "cannot write")
    file_error(cli("flame", tmp_path / "none.pb.gz", "-o", tmp_path / "x.svg"), tmp_path / "none.pb.gz")
    assert not (tmp_path / "x.svg").exists(), "nothing written when the profile cannot be read"


# ---- the extension functions the profile API uses ----

def test_prof_top_rows(profile):
    rows = _trimalloc._prof_top(str(profile), None, 0)
    assert [r["inuse_space"] for r in rows] == [16 * MiB, 9 * MiB, 3 * MiB, MiB // 2, 1000, 0]
    assert set(rows[0]) == {"inuse_space", "inuse_objects", "alloc_space", "alloc_objects", "frames", "tag"}
    # leaf first; "function (file:line)", or "function" (native frames, a Ruby C method)
    assert rows[0]["frames"] == ["malloc", "PyBytes_FromStringAndSize", "app.handlers.build_report (app/handlers.py:42)",
                                 "app.main.handle (app/main.py:10)"]
    assert rows[1]["frames"][2:4] == ["rb_str_buf_new", "String#*"]
    assert rows[0]["tag"] == "GET /reports"
    assert (rows[1]["tag"], rows[1]["inuse_objects"], rows[1]["alloc_space"], rows[1]["alloc_objects"]) == \
        ("ReportJob", 9, 12 * MiB, 12)
    assert rows[2]["tag"] is None and rows[4]["frames"] == []
    assert len(_trimalloc._prof_top(profile)) == 6  # n 10 by default, a PathLike path
    top = _trimalloc._prof_top(str(profile), "alloc_objects", 2)
    assert [r["alloc_objects"] for r in top] == [20, 12]


def test_prof_top_errors(profile, tmp_path):
    with pytest.raises(ValueError, match="unknown sample type 'cpu'"):
        _trimalloc._prof_top(str(profile), "cpu", 1)
    with pytest.raises(FileNotFoundError, match="missing"):
        _trimalloc._prof_top(str(tmp_path / "missing"), None, 1)
    bad = tmp_path / "bad.pb.gz"
    bad.write_bytes(b"\x1f\x8b" + os.urandom(64))
    with pytest.raises(ValueError, match=str(bad)):
        _trimalloc._prof_top(str(bad), None, 1)
    with pytest.raises(ValueError, match="n must be >= 0"):
        _trimalloc._prof_top(str(profile), None, -1)
    with pytest.raises(TypeError):
        _trimalloc._prof_top(str(profile), 3, 1)
    with pytest.raises(ValueError, match="not a profile"):
        _trimalloc._prof_top_text(__file__, None, 1)
    with pytest.raises(OSError, match="cannot write"):
        _trimalloc._prof_flame(str(profile), str(tmp_path / "no" / "x.svg"))
