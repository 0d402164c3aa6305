"""The launcher (`trimalloc run/path/info`, `python -m trimalloc`) and trimalloc.preload."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

import trimalloc
from conftest import child_env, run_py

LAUNCHERS = {"module": [sys.executable, "-m", "trimalloc"]}
_script = Path(sys.executable).parent / "trimalloc"
if _script.exists():  # the console script, present when installed into a venv
    LAUNCHERS["script"] = [str(_script)]


def launch(launcher, *args, env=None, **extra):
    return subprocess.run(LAUNCHERS[launcher] + list(args), env=env or child_env(False, **extra),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          universal_newlines=True, timeout=60)


def test_console_script_is_installed_in_a_venv():
    if sys.prefix == sys.base_prefix:
        pytest.skip("not running from an installed venv (in-place build)")
    assert "script" in LAUNCHERS


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_launcher_passes_exit_status(launcher):
    p = launch(launcher, "run", "--", sys.executable, "-c", "import sys; sys.exit(7)")
    assert p.returncode == 7, p.stderr
    p = launch(launcher, "run", "--", "sh", "-c", "exit 0")
    assert p.returncode == 0, p.stderr
    p = launch(launcher, "run", "--", "sh", "-c", "kill -TERM $$")
    assert p.returncode == -15  # a signal passes through too: the launcher exec'd


@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_launcher_runs_the_command_on_trimalloc(launcher):
    code = ("import os, trimalloc; print(os.getpid(), trimalloc.backend(), "
            "os.environ.get('PYTHONMALLOC'), os.environ['LD_PRELOAD'])")
    p = subprocess.Popen(LAUNCHERS[launcher] + ["run", "--", sys.executable, "-c", code],
                         env=child_env(False), stdout=subprocess.PIPE, universal_newlines=True)
    out, _ = p.communicate(timeout=60)
    pid, backend, pymalloc, preload = out.split()
    assert int(pid) == p.pid  # exec'd: same process, nothing waits in between
    assert backend == "trimalloc"
    assert preload == trimalloc.library_path()
    assert pymalloc == ("malloc" if trimalloc.DEFAULT_PYTHONMALLOC else "None")


def test_launcher_pythonmalloc_options():
    code = "import os; print(os.environ.get('PYTHONMALLOC'))"
    for opt, want in (("--pythonmalloc", "malloc"), ("--no-pythonmalloc", "None")):
        p = launch("module", "run", opt, "--", sys.executable, "-c", code)
        assert p.stdout.strip() == want, (opt, p.stderr)


def test_launcher_prepends_to_ld_preload_once():
    other = "/lib/x86_64-linux-gnu/libdl.so.2"
    if not os.path.exists(other):
        other = trimalloc.library_path()  # any readable library would do
    lib = trimalloc.library_path()
    code = "import os; print(os.environ['LD_PRELOAD'])"
    env = child_env(False, LD_PRELOAD=other)
    p = launch("module", "run", "--", sys.executable, "-c", code, env=env)
    assert p.stdout.strip() == (lib + ":" + other if other != lib else lib)
    env = child_env(True)  # already there: not added twice
    p = launch("module", "run", "--", sys.executable, "-c", code, env=env)
    assert p.stdout.strip() == lib


def test_launcher_says_when_the_command_is_not_found(tmp_path):
    p = launch("module", "run", "--", "no-such-command-trimalloc", "x")
    assert p.returncode == 127
    assert "no-such-command-trimalloc" in p.stderr and "not found" in p.stderr
    plain = tmp_path / "not-executable"
    plain.write_text("echo hi\n")
    p = launch("module", "run", "--", str(plain))
    assert p.returncode == 126 and str(plain) in p.stderr


def test_launcher_usage_errors():
    for args, text in ((["run"], "no command"), (["run", "--bogus", "--", "true"], "--bogus"),
                       (["frobnicate"], "frobnicate"), (["path", "x"], "no arguments")):
        p = launch("module", *args)
        assert p.returncode == 2 and text in p.stderr, (args, p.stderr)


def test_path_info_help_version():
    p = launch("module", "path")
    assert p.returncode == 0 and p.stdout == trimalloc.library_path() + "\n"
    p = launch("module", "info")
    assert p.returncode == 0
    assert "backend:      glibc" in p.stdout and trimalloc.library_path() in p.stdout
    assert "purger:       none (glibc" in p.stdout
    p = launch("module", "info", env=child_env(True))
    assert "backend:      trimalloc" in p.stdout
    assert "purger:       not started" in p.stdout  # nothing left to purge yet
    env = child_env(True)
    env["TRIMALLOC_BACKGROUND"] = "0"
    assert "purger:       off (TRIMALLOC_BACKGROUND=0" in launch("module", "info", env=env).stdout
    p = launch("module", "--help")
    assert p.returncode == 0 and "trimalloc run" in p.stdout and "path" in p.stdout
    p = launch("module", "--version")
    assert p.stdout.strip() == "trimalloc " + trimalloc.__version__
