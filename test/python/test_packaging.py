"""Packaging: the sdist carries core/, pip installs offline, the library needs no libpython."""
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import trimalloc
from conftest import ROOT, child_env

PY = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable


def needed(path):
    out = subprocess.run(["readelf", "-d", path], stdout=subprocess.PIPE,
                         universal_newlines=True, check=True).stdout
    return [line.split("[", 1)[1].rstrip("]") for line in out.splitlines() if "(NEEDED)" in line]


def test_bundled_library_does_not_link_libpython():
    libs = needed(trimalloc.library_path())
    assert libs and not any("python" in lib for lib in libs), libs
    assert any(lib.startswith("libc.") for lib in libs), libs
    ext = trimalloc._trimalloc.__file__
    assert not any("python" in lib for lib in needed(ext)), needed(ext)


def test_package_ships_typing_files():
    pkg = Path(trimalloc.__file__).parent
    assert (pkg / "py.typed").is_file()
    assert "def stats() -> " in (pkg / "_trimalloc.pyi").read_text()


def test_sdist_carries_core(tmp_path):
    subprocess.run([PY, "setup.py", "-q", "egg_info", "--egg-base", str(tmp_path), "sdist", "-d",
                    str(tmp_path / "dist")], cwd=str(ROOT), check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    (sdist,) = (tmp_path / "dist").glob("trimalloc-*.tar.gz")
    with tarfile.open(str(sdist)) as t:
        names = {n.split("/", 1)[1] for n in t.getnames() if "/" in n}
    want = {"setup.py", "pyproject.toml", "core/Makefile", "core/trimalloc.h",
            "core/bind/bind_policy.c", "core/bind/binding.h", "ext-python/trimalloc/_trimalloc.c",
            "ext-python/trimalloc/_trimalloc.pyi", "ext-python/trimalloc/py.typed"}
    assert want <= names, want - names
    core_c = {str(p.relative_to(ROOT)) for p in ROOT.glob("core/*.c")}
    core_c |= {str(p.relative_to(ROOT)) for p in ROOT.glob("core/prim/*")}
    assert core_c and core_c <= names, core_c - names
    assert not [n for n in names if n.endswith((".o", ".so", ".a")) or "/build" in n]


def test_pip_install_from_the_tree_offline(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for f in ("setup.py", "pyproject.toml", "MANIFEST.in"):
        shutil.copy(str(ROOT / f), str(src / f))
    ignore = shutil.ignore_patterns("build*", "*.o", "*.so", "*.a", "__pycache__", "*.egg-info")
    shutil.copytree(str(ROOT / "core"), str(src / "core"), ignore=ignore)
    shutil.copytree(str(ROOT / "ext-python"), str(src / "ext-python"), ignore=ignore)
    venv = tmp_path / "venv"
    subprocess.run([PY, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    env = child_env(False, PIP_NO_INDEX="1", PIP_DISABLE_PIP_VERSION_CHECK="1")
    p = subprocess.run([str(venv / "bin" / "pip"), "install", "--no-build-isolation", str(src)],
                       env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                       universal_newlines=True)
    assert p.returncode == 0, p.stdout
    code = "import trimalloc; print(trimalloc.backend())"
    p = subprocess.run([str(venv / "bin" / "trimalloc"), "run", "--", "python3", "-c", code],
                       env=dict(env, PATH="%s:%s" % (venv / "bin", env["PATH"])),
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    assert (p.returncode, p.stdout) == (0, "trimalloc\n"), p.stderr


def test_python_code_is_annotated_and_runs_on_3_8():
    # Annotations, not `# type:` comments, on every function of the package
    # (its installed copy), in a grammar Python 3.8 reads; where a file
    # annotates, PEP 563 keeps its annotations unevaluated, so a name or a
    # subscript from a later Python in an annotation never runs on 3.8.
    import ast
    import re
    pkg = Path(trimalloc.__file__).parent
    files = sorted(pkg.glob("*.py")) + sorted(pkg.glob("_bootstrap/*.py"))
    assert len(files) > 10, files
    bare = []
    for f in files:
        src = f.read_text()
        tree = ast.parse(src, filename=str(f), feature_version=(3, 8))
        assert not re.search(r"#\s*type:(?!\s*ignore)", src), "%s: a type comment" % f
        annotated = False
        for n in ast.walk(tree):
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = n.args
                params = a.posonlyargs + a.args + a.kwonlyargs + [x for x in (a.vararg, a.kwarg) if x]
                if n.returns is None or any(p.annotation is None and p.arg not in ("self", "cls")
                                            for p in params):
                    bare.append("%s:%d %s" % (f.name, n.lineno, n.name))
                annotated = True
            elif isinstance(n, ast.AnnAssign):
                annotated = True
        if annotated:
            assert "from __future__ import annotations" in src, f
    assert not bare, bare
