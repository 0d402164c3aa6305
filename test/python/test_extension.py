"""The C extension itself: re-import, subinterpreters, no leaks."""
import json

import pytest

from conftest import MiB, run_py

REIMPORT = r'''
import importlib, json, sys
import trimalloc, trimalloc._trimalloc as m1
del sys.modules["trimalloc._trimalloc"]
m2 = importlib.import_module("trimalloc._trimalloc")
again = importlib.reload(m2)
out = {
    "new_module": m2 is not m1,
    "own_error": m2.Error is not m1.Error and issubclass(m2.Error, RuntimeError),
    "reload_same": again is m2,
    "both_work": m1.stats()["backend"] == m2.stats()["backend"] == m2.backend(),
    "fields_same": m1.FIELDS == m2.FIELDS,
}
del m1
import gc; gc.collect()
out["after_free"] = isinstance(m2.trim(), int) and "backend" in m2.stats()
print(json.dumps(out))
'''


@pytest.mark.parametrize("preload", [True, False], ids=["trimalloc", "glibc"])
def test_extension_reimports(preload):
    r = json.loads(run_py(REIMPORT, preload=preload).stdout.splitlines()[-1])
    assert r == dict.fromkeys(r, True) and len(r) == 6, r


SUBINTERP = r'''
import trimalloc._trimalloc as main_mod
code = """
import trimalloc, trimalloc._trimalloc as t
assert t.backend() == trimalloc.backend() == BACKEND
assert t.stats()['backend'] == BACKEND
assert isinstance(t.trim(), int)
assert issubclass(t.Error, RuntimeError)
"""
try:
    import _testcapi
    run = _testcapi.run_in_subinterp
except ImportError:
    import _xxsubinterpreters as xx
    def run(src):
        i = xx.create()
        try:
            xx.run_string(i, src)
        finally:
            xx.destroy(i)
        return 0
for _ in range(3):
    assert run(code.replace("BACKEND", repr(main_mod.backend()))) == 0
print("ok", main_mod.stats()["backend"], main_mod.Error.__name__)
'''


@pytest.mark.parametrize("preload", [True, False], ids=["trimalloc", "glibc"])
def test_extension_works_in_subinterpreters(preload):
    p = run_py(SUBINTERP, preload=preload)
    assert p.stdout.split() == ["ok", "trimalloc" if preload else "glibc", "Error"], p.stderr


LEAK = r'''
import json, sys, trimalloc
from trimalloc import _trimalloc
def loop(n):
    for _ in range(n):
        trimalloc.stats(); trimalloc.trim(); _trimalloc.trim_if_due(0)
        _trimalloc.free_bytes(); _trimalloc.rss(); _trimalloc.loaded_path()
loop(2000)  # warm up: caches, free lists
blocks, rss = sys.getallocatedblocks(), _trimalloc.rss()
loop(10000)
print(json.dumps({"blocks": sys.getallocatedblocks() - blocks, "rss": _trimalloc.rss() - rss}))
'''


@pytest.mark.parametrize("preload", [True, False], ids=["trimalloc", "glibc"])
def test_stats_trim_do_not_leak(preload):
    r = json.loads(run_py(LEAK, preload=preload).stdout.splitlines()[-1])
    # One leaked dict per stats() call would be 10000 blocks and ~10 MB.
    assert r["blocks"] < 200, r
    assert r["rss"] < 2 * MiB, r


IMPORTS = r'''
import json, sys
before = set(sys.modules)
import trimalloc
trimalloc.trim(); trimalloc.stats(); trimalloc.gc.enable()
print(json.dumps(sorted(set(sys.modules) - before)))
'''
CLI_IMPORTS = r'''
import json, sys
before = set(sys.modules)
import trimalloc.cli
print(json.dumps(sorted(set(sys.modules) - before)))
'''
HEAVY = {"typing", "tempfile", "re", "shutil", "random", "bz2", "lzma", "enum", "platform"}


def test_import_pulls_in_no_heavy_module():
    # `import trimalloc` runs at the start of every process that `trimalloc run
    # --profile` starts and in every CLI call: typing, tempfile (shutil, random,
    # bz2, lzma), re and platform cost 15-20 ms and 1.7 MiB there, for
    # annotations, report() and `trimalloc info` alone, which import them.
    new = json.loads(run_py(IMPORTS, preload=True).stdout.splitlines()[-1])
    assert "trimalloc._trimalloc" in new and not HEAVY & set(new), new
    # and the CLI (`trimalloc run` starts Python, imports it, then execs)
    new = json.loads(run_py(CLI_IMPORTS).stdout.splitlines()[-1])
    assert "trimalloc.cli" in new and not HEAVY & set(new), new
