"""speedscope reads trimalloc's profiles: speedscope's own importer
(script/check-speedscope: its importProfilesFromArrayBuffer, pako's inflate
and importAsPprofProfile, on Node) on a Python program's profile and on a C
program's (test/prof/c_program_dump.c), compared with what this suite's own
decoder (test_profile.read_profile) reads from the same files: the sample
type speedscope shows, its total, every call stack's weight, the frames'
names and files.

Skipped (never failed) when node, npm's packages or speedscope's source are
not there: SPEEDSCOPE_SRC names a speedscope checkout or git dir."""
import json
import os
import shutil
import subprocess
from collections import Counter
from typing import Any, Dict, Tuple

import pytest

import trimalloc

from conftest import ROOT
from test_profile import APP, app_line, read_profile, run_child

CHECK = ROOT / "script" / "check-speedscope"


@pytest.fixture(scope="module")
def speedscope():
    """view(path): speedscope's reading of a profile file (a dict, see
    script/lib/speedscope_view.ts)."""
    p = subprocess.run([str(CHECK)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True, timeout=600)
    if p.returncode == 77:
        pytest.skip(p.stderr.strip().splitlines()[-1])
    assert p.returncode == 0, p.stderr

    def view(path) -> Dict[str, Any]:
        r = subprocess.run([str(CHECK), str(path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           universal_newlines=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)
    return view


def speedscope_stacks(v: Dict[str, Any]) -> Counter:
    """{call stack (names, root first): weight} from speedscope's export of
    what it imported (an evented profile: open/close events at values)."""
    names = [f["name"] for f in v["export"]["shared"]["frames"]]
    prof = v["export"]["profiles"][0]
    assert prof["type"] == "evented" and prof["unit"] == "bytes", prof["type"]
    out, stack, at = Counter(), [], prof["startValue"]
    for e in prof["events"]:
        if e["at"] > at:
            assert stack, e
            out[tuple(stack)] += e["at"] - at
        at = e["at"]
        if e["type"] == "O":
            stack.append(names[e["frame"]])
        else:
            assert stack.pop() == names[e["frame"]], e
    assert not stack and at == prof["endValue"]
    return out


def our_stacks(prof: Dict[str, Any], kind: str) -> Counter:
    out = Counter()
    for s in prof["samples"]:
        if s["values"][kind]:
            out[tuple(f[1] for f in reversed(s["frames"]))] += s["values"][kind]
    return out


def check_reads_as_ours(v: Dict[str, Any], prof: Dict[str, Any]) -> None:
    """speedscope took the file as pprof, shows inuse_space (the file's
    default sample type) in bytes, and its stacks and weights are ours."""
    assert v["imported"] and v["log"] == ["Importing as protobuf encoded pprof file"], v["log"]
    assert v["profiles"] == 1 and v["unit"] == "bytes"
    inuse = sum(s["values"]["inuse_space"] for s in prof["samples"])
    alloc = sum(s["values"]["alloc_space"] for s in prof["samples"])
    assert inuse != alloc, "the profile cannot tell inuse_space from alloc_space"
    assert v["total"] == inuse, (v["total"], inuse, alloc)
    # speedscope picks the default sample type (the last type when none is given)
    assert prof["default"] == "inuse_space" == prof["types"][-1], prof["types"]
    assert speedscope_stacks(v) == our_stacks(prof, "inuse_space")


def frames_by_name(v: Dict[str, Any]) -> Dict[str, Tuple[str, int]]:
    return {f["name"]: (f.get("file"), f["total"]) for f in v["frames"]}


def test_a_python_program_s_profile_reads_in_speedscope_as_it_was_written(speedscope, tmp_path):
    path = tmp_path / "py.pb.gz"
    run_child(
        "import prof_app; from trimalloc import profile\n"
        "profile.start(64 << 10)\n"
        "prof_app.make_bytes(6)\n"
        "prof_app.peak_phase(4)\n"
        "prof_app.make_json(100000)\n"
        "profile.dump(%r)\n" % str(path))
    prof = read_profile(str(path))
    v = speedscope(path)
    check_reads_as_ours(v, prof)
    frames = frames_by_name(v)
    assert frames["prof_app.make_bytes"][0] == APP
    assert 6 << 20 <= frames["prof_app.make_bytes"][1] <= (6 << 20) * 1.13
    assert frames["prof_app.make_json"][0] == APP
    assert frames["json.dumps"][0].endswith("/json/__init__.py"), frames["json.dumps"]
    assert frames["<module>"][0] == "<string>"
    # native frames (the interpreter's, under the Python ones) name their object
    native = [f for f in v["frames"] if f.get("file", "").startswith("/") and f["line"] == 0]
    assert native, v["frames"]
    # the line speedscope shows for make_bytes is the allocating one
    line = [f["line"] for f in v["frames"] if f["name"] == "prof_app.make_bytes"]
    assert line == [app_line("make_bytes")], line


def test_a_c_program_s_profile_reads_in_speedscope_as_it_was_written(speedscope, tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    assert cc, "no C compiler"
    lib = trimalloc.library_path()
    exe = tmp_path / "c_program_dump"
    subprocess.run([cc, "-std=c11", "-O2", "-rdynamic", "-I", str(ROOT / "core"),
                    str(ROOT / "test" / "prof" / "c_program_dump.c"), lib,
                    "-Wl,-rpath," + os.path.dirname(os.path.abspath(lib)), "-o", str(exe)], check=True)
    path = tmp_path / "c.pb.gz"
    subprocess.run([str(exe), str(path)], check=True, timeout=60)
    prof = read_profile(str(path))
    v = speedscope(path)
    check_reads_as_ours(v, prof)
    frames = frames_by_name(v)
    controller = frames["Billing::InvoicesController#show"]
    render, post = frames["Billing::Invoice#render"], frames["Billing::Ledger#post"]
    assert controller[0] == "app/controllers/invoices_controller.rb"
    assert render[0] == "app/models/invoice.rb" and post[0] == "app/models/ledger.rb"
    assert controller[1] == render[1] + post[1]
    assert 8 * 100000 <= render[1] <= 8 * 100000 * 1.13, render  # 8 live blocks
    assert 2 * 50000 <= post[1] <= 2 * 50000 * 1.13, post  # 2 of 4 live
    assert frames["c_only_site"][0] == str(exe)
    assert 3 * 70000 <= frames["c_only_site"][1] <= 3 * 70000 * 1.13
    assert frames["main"][1] == frames["c_only_site"][1]  # no hook frames above main
