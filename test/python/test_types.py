"""The package type-checks: Debian's mypy over its source directory
(ext-python/trimalloc: the annotations py.typed promises, and the stub
_trimalloc.pyi for the C extension) reports no error, for the oldest Python
the package runs on (3.8) and for 3.11."""
import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import ROOT, child_env

MYPY = "/usr/bin/mypy"  # Debian's (package mypy, in script/lib/deps.sh)
SRC = ROOT / "ext-python"
VERSIONS = ("3.8", "3.11")


@pytest.mark.skipif(not os.path.exists(MYPY),
                    reason="%s is not installed (Debian package mypy; script/lib/deps.sh installs it)" % MYPY)
def test_package_type_checks_with_mypy():
    env = child_env(False)
    env.pop("MYPYPATH", None)
    # The options here, not in a config file (--config-file= reads none); no
    # cache (/dev/null): nothing is written into the tree, every run checks
    # afresh. A third-party module mypy finds no types for is Any. Both
    # versions at once: each takes about 10 s of a CPU.
    runs = {}
    for version in VERSIONS:
        cmd = [MYPY, "--config-file=", "--cache-dir=" + os.devnull, "--python-version", version,
               "--ignore-missing-imports", "--no-color-output", "trimalloc"]
        runs[version] = subprocess.Popen(cmd, cwd=str(SRC), env=env, stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT, universal_newlines=True)
    try:
        outs = {version: p.communicate(timeout=300)[0] for version, p in runs.items()}
    finally:
        for p in runs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    files = [f for f in Path(SRC, "trimalloc").rglob("*") if f.suffix in (".py", ".pyi")]
    for version, out in outs.items():
        assert runs[version].returncode == 0, "mypy --python-version %s:\n%s" % (version, out)
        # it did check the package: every .py and the .pyi
        m = re.search(r"^Success: no issues found in (\d+) source files?$", out, re.M)
        assert m and int(m.group(1)) == len(files), "mypy --python-version %s checked %s of %d files:\n%s" % (
            version, m and m.group(1), len(files), out)
