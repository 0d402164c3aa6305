"""trimalloc.profile: the heap profiler from Python, with Python frames.

Each profiling test runs a child Python on trimalloc (LD_PRELOAD of the
bundled library, PYTHONMALLOC=malloc, as `trimalloc run` does) that calls the
functions of fixtures/prof_app.py and reports what top() or dump() saw. The
profiles are also read here with a small profile.proto decoder of the test's
own, so that what is checked does not depend on the package's reader."""
import glob
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List

import pytest

import trimalloc
from trimalloc import _trimalloc, profile

from conftest import MiB, child_env
from test_celery import redis_url  # noqa: F401 (the fixture)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
APP = str(FIXTURES / "prof_app.py")


def app_line(marker: str) -> int:
    """The line of fixtures/prof_app.py that carries `# LINE marker`."""
    for i, line in enumerate(Path(APP).read_text().splitlines(), 1):
        if line.rstrip().endswith("# LINE " + marker):
            return i
    raise AssertionError("no line marked %r in %s" % (marker, APP))


def run_child(code: str, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """code in a child on trimalloc; its stdout's last line is JSON."""
    path = os.pathsep.join(p for p in (str(FIXTURES), os.environ.get("PYTHONPATH")) if p)
    e = child_env(True, PYTHONMALLOC="malloc", PYTHONPATH=path, **env)
    p = subprocess.run([sys.executable, "-c", code], env=e, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=timeout)
    assert p.returncode == 0, "child failed (%d)\n--- stdout\n%s\n--- stderr\n%s" % (
        p.returncode, p.stdout, p.stderr)
    return p


def child_json(code: str, **env: str) -> Any:
    return json.loads(run_child(code, **env).stdout.strip().splitlines()[-1])


# ---- a profile.proto decoder (gzip, then the fields the checks need) ----

def _varint(b: bytes, i: int):
    v = shift = 0
    while True:
        c = b[i]
        i += 1
        v |= (c & 0x7F) << shift
        shift += 7
        if c < 0x80:
            return v, i


def _fields(b: bytes):
    """(field number, wire type, value) of a message: ints, or bytes for
    length-delimited fields."""
    i = 0
    while i < len(b):
        key, i = _varint(b, i)
        num, wt = key >> 3, key & 7
        if wt == 0:
            v, i = _varint(b, i)
        elif wt == 1:
            v, i = int.from_bytes(b[i:i + 8], "little"), i + 8
        elif wt == 2:
            n, i = _varint(b, i)
            v, i = b[i:i + n], i + n
        elif wt == 5:
            v, i = int.from_bytes(b[i:i + 4], "little"), i + 4
        else:
            raise AssertionError("wire type %d at %d" % (wt, i))
        yield num, wt, v


def _ints(wt: int, v) -> List[int]:
    """A repeated integer field: packed (bytes) or one value."""
    if wt != 2:
        return [v]
    out, i = [], 0
    while i < len(v):
        x, i = _varint(v, i)
        out.append(x)
    return out


def read_profile(path: str) -> Dict[str, Any]:
    """{types, default, samples: [{values, frames: [(kind, name, file, line)],
    tags}], comments}; default the default sample type's name; frames leaf first, kind "py" for a location without a mapping
    (an interpreter frame), "native" otherwise."""
    with open(path, "rb") as f:
        data = f.read()
    if data[:2] == b"\x1f\x8b":
        data = gzip.decompress(data)
    strings, raw_samples, functions, locations, types, comments = [], [], {}, {}, [], []
    default = 0
    for num, wt, v in _fields(data):
        if num == 6:
            strings.append(v.decode("utf-8", "replace"))
        elif num == 2:
            raw_samples.append(v)
        elif num == 1:
            types.append(v)
        elif num == 5:
            f = {n: x for n, _, x in _fields(v)}
            functions[f.get(1, 0)] = f
        elif num == 4:
            loc = {"mapping": 0, "lines": []}
            for n, _, x in _fields(v):
                if n == 1:
                    loc["id"] = x
                elif n == 2:
                    loc["mapping"] = x
                elif n == 4:
                    ln = {a: y for a, _, y in _fields(x)}
                    loc["lines"].append((ln.get(1, 0), ln.get(2, 0)))
            locations[loc.get("id", 0)] = loc
        elif num == 13:
            comments.extend(_ints(wt, v))
        elif num == 14:
            default = v
    s = lambda i: strings[i] if i < len(strings) else "?"  # noqa: E731
    type_names = []
    for t in types:
        f = {n: x for n, _, x in _fields(t)}
        type_names.append(s(f.get(1, 0)))
    samples = []
    for raw in raw_samples:
        locs, values, tags = [], [], {}
        for n, wt, v in _fields(raw):
            if n == 1:
                locs += _ints(wt, v)
            elif n == 2:
                values += _ints(wt, v)
            elif n == 3:
                lab = {a: y for a, _, y in _fields(v)}
                tags[s(lab.get(1, 0))] = s(lab.get(2, 0))
        frames = []
        for lid in locs:
            loc = locations[lid]
            kind = "native" if loc["mapping"] else "py"
            for fid, line in loc["lines"] or [(0, 0)]:
                fn = functions.get(fid, {})
                frames.append((kind, s(fn.get(2, 0)), s(fn.get(4, 0)), line))
        samples.append({"values": dict(zip(type_names, values)), "frames": frames, "tags": tags})
    return {"types": type_names, "default": s(default), "samples": samples,
            "comments": [s(i) for i in comments]}


def frame_name(module: str, qualname: str) -> str:
    """A Python frame's name as the profiler gives it: module.qualname, or
    module.name before 3.11 (a code object has no co_qualname there)."""
    return "%s.%s" % (module, qualname if sys.version_info >= (3, 11) else qualname.rsplit(".", 1)[-1])


def py_names(sample: Dict[str, Any]) -> List[str]:
    return [f[1] for f in sample["frames"] if f[0] == "py"]


def assert_native_then_python(sample: Dict[str, Any]) -> None:
    """Leaf first: native frames, then only Python frames (the merge rule)."""
    kinds = [f[0] for f in sample["frames"]]
    if "py" in kinds:
        first = kinds.index("py")
        assert first > 0, ("a Python frame as the leaf: malloc is native", sample["frames"])
        assert all(k == "py" for k in kinds[first:]), ("native frames above Python ones",
                                                       sample["frames"])


def block_size(sample: Dict[str, Any], size: int) -> bool:
    """The sample's blocks were of `size` bytes (as the allocator rounded
    them: up to a page more)."""
    v = sample["values"]
    return v["inuse_objects"] > 0 and size <= v["inuse_space"] // v["inuse_objects"] <= size + 4096


def inuse_with(prof: Dict[str, Any], name: str) -> int:
    return sum(s["values"]["inuse_space"] for s in prof["samples"] if name in py_names(s))


# ---- the frames hook alone (no sampling needed) ----

def test_the_frames_hook_names_this_thread_s_python_callers():
    def outer():
        return inner()

    def inner():
        return _trimalloc._prof_frames_now()

    frames = outer()
    here = __name__.rsplit(".", 1)[-1]
    names = [f[0] for f in frames]
    test = "test_the_frames_hook_names_this_thread_s_python_callers"
    assert names[:3] == [frame_name(here, test + ".<locals>.inner"), frame_name(here, test + ".<locals>.outer"),
                         frame_name(here, test)], names
    assert frames[0][1] == __file__
    assert frames[0][2] == inner.__code__.co_firstlineno + 1


def test_the_frames_hook_reports_nothing_without_the_gil():
    assert _trimalloc._prof_frames_now(64, 0)  # with the GIL: frames
    assert _trimalloc._prof_frames_now(64, 1) == []  # this thread, GIL released
    assert _trimalloc._prof_frames_now(64, 2) == 0  # a thread Python never saw


def test_the_frames_hook_is_registered_when_the_core_has_the_profiler():
    code = "from trimalloc import _trimalloc as t; print(t._prof_frames_status())"
    p = run_child(code)
    assert p.stdout.strip() == "registered", p.stdout
    e = child_env(False)
    p = subprocess.run([sys.executable, "-c", code], env=e, stdout=subprocess.PIPE,
                       universal_newlines=True, check=True)
    assert "not the process's allocator" in p.stdout


# ---- Python frames in profiles ----

def test_top_names_the_python_function_that_made_bytes_as_the_caller_of_native_frames():
    rows = child_json(
        "import json, prof_app; from trimalloc import profile\n"
        "profile.start(64 << 10)\n"
        "prof_app.make_bytes(32)\n"
        "print(json.dumps(profile.top(0)))\n")
    line = app_line("make_bytes")
    mine = [r for r in rows if any(f.startswith("prof_app.make_bytes (") for f in r["frames"])]
    assert mine, json.dumps(rows[:5], indent=1)
    total = sum(r["inuse_space"] for r in mine)
    # 1 MiB blocks are above the 64 KiB interval: each is recorded with its size
    # (each block counts with the size the allocator gave it: its size class)
    assert 32 * MiB <= total <= 32 * MiB * 1.13, total
    for r in mine:
        i = next(i for i, f in enumerate(r["frames"]) if f.startswith("prof_app.make_bytes ("))
        assert i > 0, ("native frames first", r["frames"])
        assert r["frames"][i] == "prof_app.make_bytes (%s:%d)" % (APP, line), r["frames"]
        assert r["frames"][i + 1].startswith("<module> (<string>:"), r["frames"]
        assert r["tag"] is None


def test_dump_names_json_dumps_and_its_python_caller_above_the_c_encoder(tmp_path):
    path = str(tmp_path / "json.pb.gz")
    written = child_json(
        "import json, prof_app; from trimalloc import profile\n"
        "profile.start(64 << 10)\n"
        "prof_app.make_json(200000)\n"
        "print(json.dumps(profile.dump(%r)))\n" % path)
    assert written == path
    prof = read_profile(path)
    assert prof["types"] == ["alloc_objects", "alloc_space", "inuse_objects", "inuse_space"]
    for s in prof["samples"]:
        assert_native_then_python(s)
    chains = [py_names(s) for s in prof["samples"] if "prof_app.make_json" in py_names(s)]
    assert chains, [py_names(s) for s in prof["samples"]][:20]
    # the document itself: made by the encoder under json.dumps, called by make_json
    want = [frame_name("json.encoder", "JSONEncoder.encode"), "json.dumps", "prof_app.make_json"]
    assert any(c[:3] == want for c in chains), chains
    doc = sum(s["values"]["inuse_space"] for s in prof["samples"] if py_names(s)[:3] == want)
    assert doc > 10 * MiB, doc  # 200000 items of ~80 bytes of JSON
    files = {f[1]: f[2] for s in prof["samples"] for f in s["frames"] if f[0] == "py"}
    assert files["prof_app.make_json"] == APP
    assert files["json.dumps"].endswith("/json/__init__.py"), files["json.dumps"]
    lines = {f[3] for s in prof["samples"] for f in s["frames"] if f[1] == "prof_app.make_json"}
    assert app_line("make_json") in lines, lines


def test_samples_taken_without_the_gil_have_no_python_frames(tmp_path):
    path = str(tmp_path / "nogil.pb.gz")
    run_child(
        "import prof_app; from trimalloc import profile\n"
        "profile.start(64 << 10)\n"
        "prof_app.malloc_without_gil(40, 3 << 20)\n"
        "prof_app.malloc_with_gil(40, 5 << 20)\n"
        "profile.dump(%r)\n" % path)
    prof = read_profile(path)
    nogil = [s for s in prof["samples"] if block_size(s, 3 << 20)]
    gil = [s for s in prof["samples"] if block_size(s, 5 << 20)]
    # every block is above the interval: all 40 of each are there
    assert sum(s["values"]["inuse_objects"] for s in nogil) == 40, [s["frames"] for s in nogil]
    assert sum(s["values"]["inuse_objects"] for s in gil) == 40
    for s in nogil:  # malloc_without_gil is on the stack, but the thread had no GIL
        assert py_names(s) == [], s["frames"]
    for s in gil:  # the control: the same call holding the GIL shows its callers
        assert py_names(s)[:2] == ["prof_app.malloc_with_gil", "<module>"], s["frames"]
        assert_native_then_python(s)


def test_start_and_stop_at_run_time_see_only_what_was_allocated_while_on():
    out = child_json(
        "import json, prof_app; from trimalloc import profile\n"
        "i0 = profile.interval()\n"
        "prof_app.before_start(16)\n"
        "profile.start(64 << 10)\n"
        "i1 = profile.interval()\n"
        "prof_app.while_on(16)\n"
        "profile.stop()\n"
        "i2 = profile.interval()\n"
        "prof_app.after_stop(16)\n"
        "print(json.dumps({'i': [i0, i1, i2], 'rows': profile.top(0)}))\n")
    assert out["i"] == [0, 64 << 10, 0], out["i"]

    def held(fn):
        return sum(r["inuse_space"] for r in out["rows"]
                   if any(f.startswith("prof_app.%s (" % fn) for f in r["frames"]))

    assert held("before_start") == 0
    assert 16 * MiB <= held("while_on") <= 16 * MiB * 1.13, held("while_on")
    assert held("after_stop") == 0


def test_the_peak_profile_holds_what_was_freed_since(tmp_path):
    prefix = str(tmp_path / "app")
    out = child_json(
        "import json, os, prof_app; from trimalloc import profile\n"
        "profile.start(64 << 10)\n"
        "prof_app.peak_phase(64)\n"
        "prof_app.make_bytes(8)\n"
        "print(json.dumps({'peak': profile.dump(kind='peak'), 'live': profile.dump(),"
        " 'pid': os.getpid()}))\n", TRIMALLOC_PROF_PREFIX=prefix)
    pid = out["pid"]
    assert out["peak"].startswith("%s.%d." % (prefix, pid)) and out["peak"].endswith(".peak.pb.gz")
    assert out["live"].startswith("%s.%d." % (prefix, pid)) and out["live"].endswith(".dump.pb.gz")
    peak, live = read_profile(out["peak"]), read_profile(out["live"])
    assert inuse_with(peak, "prof_app.peak_phase") >= 60 * MiB, inuse_with(peak, "prof_app.peak_phase")
    assert inuse_with(live, "prof_app.peak_phase") == 0
    assert 8 * MiB <= inuse_with(live, "prof_app.make_bytes") <= 8 * MiB * 1.13


def test_interval_1_with_threads_a_concurrent_top_and_forks_does_not_deadlock():
    out = child_json(
        "import json, os, threading, time, prof_app; from trimalloc import profile\n"
        "profile.start(1)\n"
        "stop = threading.Event()\n"
        "def work(k):\n"
        "    n = 0\n"
        "    while not stop.is_set():\n"
        "        s = json.dumps([{'k': k, 'i': i} for i in range(200)])\n"
        "        b = [bytes(100 + i) for i in range(50)]\n"
        "        prof_app.malloc_free_without_gil(5, 1000)\n"
        "        n += 1\n"
        "    counts.append(n)\n"
        "counts = []\n"
        "ts = [threading.Thread(target=work, args=(k,)) for k in range(6)]\n"
        "for t in ts: t.start()\n"
        "tops, forks, end = [], [], time.monotonic() + 3\n"
        "while time.monotonic() < end:  # top() and fork() while six threads allocate\n"
        "    tops.append(len(profile.top(5)))\n"
        "    if len(forks) < 3:\n"
        "        pid = os.fork()\n"
        "        if pid == 0:  # the child: allocates with Python frames, reads its own profile\n"
        "            prof_app.make_bytes(2)\n"
        "            rows = profile.top(0)\n"
        "            ok = any(f.startswith('prof_app.make_bytes (') for r in rows for f in r['frames'])\n"
        "            os._exit(0 if ok else 3)\n"
        "        forks.append(os.waitpid(pid, 0)[1])\n"
        "stop.set()\n"
        "for t in ts: t.join()\n"
        "print(json.dumps({'tops': tops, 'forks': forks, 'counts': counts,"
        " 'interval': profile.interval()}))\n",
        timeout=240)
    assert out["interval"] == 1
    assert len(out["counts"]) == 6 and all(n > 0 for n in out["counts"]), out
    assert len(out["tops"]) >= 2 and all(n > 0 for n in out["tops"]), out
    assert out["forks"] == [0, 0, 0], out  # each child exited 0: it saw its make_bytes


def test_bad_arguments_raise_naming_the_value():
    with pytest.raises(TypeError, match="'64'"):
        profile.start("64")
    with pytest.raises(TypeError, match="True"):
        profile.start(True)
    with pytest.raises(ValueError, match=r"\b0\b"):
        profile.start(0)
    with pytest.raises(ValueError, match=str((1 << 30) + 1)):
        profile.start((1 << 30) + 1)
    with pytest.raises(ValueError, match="'hot'"):
        profile.dump(kind="hot")
    with pytest.raises(ValueError, match="'bytes'"):
        profile.top(by="bytes")
    with pytest.raises(ValueError, match="-1"):
        profile.top(-1)
    with pytest.raises(TypeError, match="2.5"):
        profile.top(2.5)
    with pytest.raises(TypeError, match="42"):
        profile.set_tag(42)
    with pytest.raises(TypeError, match="42"):
        _trimalloc._prof_set_tag(42)


def test_on_glibc_start_dump_and_top_say_trimalloc_is_not_active_and_tags_do_nothing():
    assert not trimalloc.active()  # the suite's own process runs on glibc
    for call in (profile.start, profile.dump, profile.top):
        with pytest.raises(RuntimeError, match="not the process's allocator.*trimalloc run"):
            call()
    with pytest.raises(trimalloc.Error):
        profile.start(1 << 20)
    profile.set_tag("x")  # hooks call these on every request, whatever the allocator
    with profile.tag("y"):
        pass
    profile.stop()
    profile.reset_peak()
    assert profile.interval() == 0


def test_a_tag_labels_the_samples_of_its_thread_and_tag_restores_the_previous():
    rows = child_json(
        "import json, threading, prof_app; from trimalloc import profile\n"
        "profile.start(64 << 10)\n"
        "profile.set_tag('outer')\n"
        "with profile.tag('report'):\n"
        "    prof_app.make_bytes(4)\n"
        "prof_app.make_bytes_here(2)\n"
        "t = threading.Thread(target=prof_app.while_on, args=(3,)); t.start(); t.join()\n"
        "print(json.dumps(profile.top(0)))\n")
    by_tag = {}
    for r in rows:
        by_tag[r["tag"]] = by_tag.get(r["tag"], 0) + r["inuse_space"]
    assert 4 * MiB <= by_tag.get("report", 0) <= 4 * MiB * 1.13, by_tag
    assert 2 * MiB <= by_tag.get("outer", 0) <= 2 * MiB * 1.13, by_tag  # restored after the block
    other = [r for r in rows if any(f.startswith("prof_app.while_on (") for f in r["frames"])]
    assert other and all(r["tag"] is None for r in other), other  # another thread: untagged


def test_run_profile_dir_turns_sampling_on_and_leaves_the_exit_profile_there(tmp_path):
    d = tmp_path / "profiles" / "nested"
    e = child_env(False, TRIMALLOC_PROF_AT_EXIT="1")
    e.pop("TRIMALLOC_PROF", None)
    e.pop("TRIMALLOC_PROF_PREFIX", None)
    # the program never imports trimalloc: `run --profile` registers the Python frames
    code = ("import ctypes, os, sys\n"
            "libc = ctypes.PyDLL(None)  # keeps the GIL: the sample has this <module> frame\n"
            "libc.malloc.restype = ctypes.c_void_p\n"
            "libc.trimalloc_prof_interval.restype = ctypes.c_size_t\n"
            "leak = libc.malloc(8 << 20)  # never freed: live at exit\n"
            "print(os.getpid(), libc.trimalloc_prof_interval())\n"
            "print(sorted(m for m in sys.modules if m.startswith('trimalloc')), file=sys.stderr)\n")
    p = subprocess.run([sys.executable, "-m", "trimalloc", "run", "--profile", str(d), "--",
                        "python3", "-c", code], env=e, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=120)
    assert p.returncode == 0, p.stderr
    pid, interval = map(int, p.stdout.split())
    assert interval > 0  # sampling on from the start
    files = glob.glob(str(d / ("python3.%d.*.exit.pb.gz" % pid)))
    assert len(files) == 1, (os.listdir(str(d)), p.stderr)
    prof = read_profile(files[0])
    assert prof["types"] == ["alloc_objects", "alloc_space", "inuse_objects", "inuse_space"]
    leak = [s for s in prof["samples"] if block_size(s, 8 << 20)]
    assert len(leak) == 1 and py_names(leak[0]) == ["<module>"], [s["frames"] for s in leak]
    assert "reason=exit" in prof["comments"], prof["comments"]


def test_run_profile_bad_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("")
    p = subprocess.run([sys.executable, "-m", "trimalloc", "run", "--profile", str(f), "--", "true"],
                       env=child_env(False), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       universal_newlines=True)
    assert p.returncode == 1 and "Not a directory" in p.stderr and str(f) in p.stderr, p.stderr
    p = subprocess.run([sys.executable, "-m", "trimalloc", "run", "--profile"], env=child_env(False),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert p.returncode == 2 and "--profile needs a directory" in p.stderr, p.stderr


def test_wsgi_and_asgi_middlewares_tag_the_request_s_samples_with_its_path():
    rows = child_json(
        "import asyncio, json, prof_app; from trimalloc import profile\n"
        "from trimalloc.wsgi import TrimMiddleware as W\n"
        "from trimalloc.asgi import TrimMiddleware as A\n"
        "profile.start(64 << 10)\n"
        "def wsgi_app(environ, start_response):\n"
        "    prof_app.make_bytes(3)\n"
        "    start_response('200 OK', [])\n"
        "    return [b'ok']\n"
        "body = W(wsgi_app, every=None, min_free=1 << 40)("
        "{'PATH_INFO': '/export/orders', 'QUERY_STRING': 'x=1'}, lambda *a: None)\n"
        "list(body); body.close()\n"
        "prof_app.before_start(2)  # after the request: untagged\n"
        "async def asgi_app(scope, receive, send):\n"
        "    await receive()\n"
        "    prof_app.while_on(4)\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'ok'})\n"
        "async def main():\n"
        "    async def receive(): return {'type': 'http.request', 'body': b''}\n"
        "    async def send(m): pass\n"
        "    await A(asgi_app, every=None, min_free=1 << 40)("
        "{'type': 'http', 'path': '/api/items'}, receive, send)\n"
        "asyncio.run(main())\n"
        "print(json.dumps(profile.top(0)))\n")

    def tags_of(fn):
        return {r["tag"] for r in rows if any(f.startswith("prof_app.%s (" % fn) for f in r["frames"])}

    assert tags_of("make_bytes") == {"/export/orders"}, rows[:5]
    assert tags_of("before_start") == {None}
    assert tags_of("while_on") == {"/api/items"}


def test_aiohttp_tags_with_the_route_template_and_gunicorn_pre_request_with_the_path():
    rows = child_json(
        "import asyncio, json, types, prof_app; from trimalloc import profile\n"
        "from aiohttp import web\n"
        "from aiohttp.test_utils import TestClient, TestServer\n"
        "import trimalloc.aiohttp\n"
        "from trimalloc.gunicorn import pre_request, post_request\n"
        "profile.start(64 << 10)\n"
        "async def user(request):\n"
        "    prof_app.make_bytes(3)\n"
        "    return web.Response(text='ok')\n"
        "app = web.Application()\n"
        "app.router.add_get('/users/{id}', user)\n"
        "trimalloc.aiohttp.install(app, every=None, min_free=1 << 40)\n"
        "async def main():\n"
        "    async with TestClient(TestServer(app)) as c:\n"
        "        r = await c.get('/users/42?full=1')\n"
        "        assert await r.text() == 'ok'\n"
        "asyncio.run(main())\n"
        "worker = types.SimpleNamespace(log=types.SimpleNamespace(debug=lambda *a: None))\n"
        "req = types.SimpleNamespace(method='GET', path='/reports/daily')\n"
        "pre_request(worker, req)\n"
        "prof_app.while_on(2)\n"
        "post_request(worker, req, {}, None)\n"
        "prof_app.after_stop(1)\n"
        "print(json.dumps(profile.top(0)))\n")

    def tags_of(fn):
        return {r["tag"] for r in rows if any(f.startswith("prof_app.%s (" % fn) for f in r["frames"])}

    assert tags_of("make_bytes") == {"/users/{id}"}, rows[:5]
    assert tags_of("while_on") == {"/reports/daily"}
    assert tags_of("after_stop") == {None}


def test_tagged_sets_its_tag_at_every_step_and_puts_the_loop_s_back_between():
    # the bookkeeping alone (on glibc the core has no tag; the package's copy is what moves)
    import asyncio
    from trimalloc import _hooks
    seen = []

    async def job(name, n):
        for i in range(n):
            seen.append((name, _hooks.current_tag()))
            await asyncio.sleep(0)
            if name == "a" and i == 0:
                profile.set_tag("a-set-inside")  # kept for a's later steps
        with profile.tag("block"):
            await asyncio.sleep(0)
            seen.append((name, _hooks.current_tag()))
        seen.append((name, _hooks.current_tag()))
        return name * 2

    async def cancelled():
        try:
            await asyncio.sleep(10)
        finally:
            seen.append(("c", _hooks.current_tag()))  # CancelledError thrown in: tagged

    async def main():
        seen.append(("loop", _hooks.current_tag()))
        c = asyncio.ensure_future(profile.tagged(cancelled(), "/c"))
        results = await asyncio.gather(profile.tagged(job("a", 3), "/a"),
                                       _hooks.Tagged(job("b", 3), "/b"))
        seen.append(("loop", _hooks.current_tag()))
        c.cancel()
        with pytest.raises(asyncio.CancelledError):
            await c
        return results

    profile.set_tag("loop-thread")
    try:
        assert asyncio.run(main()) == ["aa", "bb"]
        assert _hooks.current_tag() == "loop-thread"
    finally:
        profile.set_tag(None)
    assert [t for n, t in seen if n == "a"] == ["/a", "a-set-inside", "a-set-inside", "block",
                                                "a-set-inside"], seen
    assert [t for n, t in seen if n == "b"] == ["/b", "/b", "/b", "block", "/b"], seen
    assert [t for n, t in seen if n in ("loop", "c")] == ["loop-thread", "loop-thread", "/c"], seen
    co = job("a", 1)
    with pytest.raises(TypeError, match="42"):
        profile.tagged(co, 42)
    co.close()
    with pytest.raises(TypeError, match="42"):
        profile.tagged(42, "x")


def assert_interleaved_tags(rows, tag_a, tag_b):
    """prof_app.Interleaving's allocations, each under its own request's tag."""
    def held(fn):
        mine = [r for r in rows if any(f.startswith("prof_app.%s (" % fn) for f in r["frames"])]
        by_tag = {}
        for r in mine:
            by_tag[r["tag"]] = by_tag.get(r["tag"], 0) + r["inuse_space"]
        return by_tag

    for fn, tag, mib in (("for_request_a", tag_a, 8), ("for_request_b", tag_b, 5),
                         ("inside_tag_block", "a-block", 3)):
        by_tag = held(fn)
        assert set(by_tag) == {tag}, (fn, by_tag)  # every sample: its own request's tag
        assert mib * MiB <= by_tag[tag] <= mib * MiB * 1.13, (fn, by_tag)


def test_aiohttp_requests_interleaved_on_one_loop_each_tag_their_own_samples():
    # two requests on a real socket: each resumes after the other ran (and set its tag)
    rows = child_json(
        "import asyncio, json, prof_app; from trimalloc import profile\n"
        "from aiohttp import web\n"
        "from aiohttp.test_utils import TestClient, TestServer\n"
        "import trimalloc.aiohttp\n"
        "profile.start(64 << 10)\n"
        "async def a(request):\n"
        "    await request.app['scene'].a()\n"
        "    return web.Response(text='a')\n"
        "async def b(request):\n"
        "    await request.app['scene'].b()\n"
        "    return web.Response(text='b')\n"
        "app = web.Application()\n"
        "app.router.add_get('/a/{id}', a)\n"
        "app.router.add_get('/b/{id}', b)\n"
        "trimalloc.aiohttp.install(app, every=None, min_free=1 << 40)\n"
        "async def main():\n"
        "    app['scene'] = prof_app.Interleaving()\n"
        "    async with TestClient(TestServer(app)) as c:\n"
        "        ra, rb = await asyncio.gather(c.get('/a/1'), c.get('/b/2'))\n"
        "        assert (await ra.text(), await rb.text()) == ('a', 'b')\n"
        "asyncio.run(main())\n"
        "print(json.dumps(profile.top(0)))\n")
    assert_interleaved_tags(rows, "/a/{id}", "/b/{id}")


def test_asgi_requests_interleaved_on_one_loop_each_tag_their_own_samples():
    rows = child_json(
        "import asyncio, json, prof_app; from trimalloc import profile\n"
        "from trimalloc.asgi import TrimMiddleware\n"
        "profile.start(64 << 10)\n"
        "async def app(scope, receive, send):\n"
        "    await receive()\n"
        "    await getattr(scene, scope['path'][1])()\n"
        "    await send({'type': 'http.response.start', 'status': 200, 'headers': []})\n"
        "    await send({'type': 'http.response.body', 'body': b'ok'})\n"
        "mw = TrimMiddleware(app, every=None, min_free=1 << 40)\n"
        "async def call(path):\n"
        "    sent = []\n"
        "    async def receive(): return {'type': 'http.request', 'body': b''}\n"
        "    async def send(m): sent.append(m)\n"
        "    await mw({'type': 'http', 'path': path}, receive, send)\n"
        "    return sent[-1]['body']\n"
        "async def main():\n"
        "    global scene\n"
        "    scene = prof_app.Interleaving()\n"
        "    assert await asyncio.gather(call('/a/1'), call('/b/2')) == [b'ok', b'ok']\n"
        "asyncio.run(main())\n"
        "print(json.dumps(profile.top(0)))\n")
    assert_interleaved_tags(rows, "/a/1", "/b/2")


# ---- a real Celery worker: the task's name as the tag ----

def test_celery_task_samples_carry_the_task_name_tag(redis_url, tmp_path, monkeypatch):
    from test_celery import celery_worker
    monkeypatch.setenv("TRIMALLOC_PROF", "1")  # sampling from the worker's start
    monkeypatch.setenv("TRIMALLOC_PROF_INTERVAL", str(64 << 10))
    with celery_worker(redis_url, tmp_path, "prof", launcher=True, integration=True) as w:
        pids = set(w.done([w.run("hold_mib", 6) for _ in range(4)]))
        reports = w.on_each_pool_process("prof_rows")
    held = {}
    for rep in reports:
        for r in rep["rows"]:
            if any(f.startswith("celery_app.hold_mib (") for f in r["frames"]):
                assert r["tag"] == "celery_app.hold_mib", r
                held[rep["pid"]] = held.get(rep["pid"], 0) + r["inuse_space"]
    # 4 tasks of 6 MiB, kept, spread over the pool processes
    assert set(held) == pids, (held, pids)
    assert 24 * MiB <= sum(held.values()) <= 24 * MiB * 1.13, held
    untagged = [r for rep in reports for r in rep["rows"] if r["tag"] is None
                and any(f.startswith("celery_app.hold_mib (") for f in r["frames"])]
    assert not untagged
