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


VENV_BIN = os.path.join(sys.prefix, "bin")
in_venv = pytest.mark.skipif(sys.prefix == sys.base_prefix,
                             reason="not running from a venv (script/test-python installs one)")
SITE = str(Path(trimalloc.__file__).resolve().parents[1])  # where the package is installed
PRINT_PREFIX_AND_PATH = "import os, sys; print(sys.prefix); print(os.environ['PATH'])"


@in_venv
@pytest.mark.parametrize("launcher", sorted(LAUNCHERS))
def test_launcher_from_a_venv_not_activated_runs_the_venvs_python3(launcher):
    # as if the venv were activated: found there first, and in front of PATH
    # for the command, where the interpreter started as `python3` finds itself
    p = launch(launcher, "run", "--", "python3", "-c", PRINT_PREFIX_AND_PATH,
               env=child_env(False, PATH="/usr/bin:/bin"))
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [sys.prefix, VENV_BIN + ":/usr/bin:/bin"]


@in_venv
def test_launcher_from_an_activated_venv_leaves_path_as_it_is():
    path = VENV_BIN + ":/usr/bin:/bin"
    p = launch("script", "run", "--", "python3", "-c", PRINT_PREFIX_AND_PATH,
               env=child_env(False, PATH=path))
    assert p.stdout.splitlines() == [sys.prefix, path], p.stderr


def test_launcher_on_the_system_python_searches_path_alone():
    env = child_env(False, PATH="/usr/bin:/bin", PYTHONPATH=SITE)
    p = subprocess.run(["/usr/bin/python3", "-m", "trimalloc", "run", "--", "python3", "-c",
                        PRINT_PREFIX_AND_PATH], env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert p.stdout.splitlines() == ["/usr", "/usr/bin:/bin"], p.stderr


@pytest.mark.parametrize("shell", ["/bin/sh", "/bin/bash"])
def test_launcher_finds_a_command_where_the_shell_does(tmp_path, shell):
    a, b, c = (tmp_path / d for d in "abc")
    for d in (a, b, c):
        d.mkdir()
    (a / "tool").write_text("#!/bin/sh\necho a\n")  # not executable: skipped
    (b / "tool").write_text("#!/bin/sh\necho b\n")
    (b / "tool").chmod(0o755)
    (c / "tool").mkdir()  # a directory: skipped
    (b / "plain").write_text("echo plain, run by sh\n")  # no #!: sh runs it
    (b / "plain").chmod(0o755)
    (a / "denied").write_text("echo no\n")
    cases = [("%s:%s:%s:/usr/bin:/bin" % (c, a, b), "tool"), ("%s:%s" % (a, b), "plain"),
             (":/usr/bin:/bin", "tool"),  # an empty entry: the current directory (b)
             ("%s:/usr/bin:/bin" % a, "denied"), ("%s:/usr/bin:/bin" % a, "missing-tool")]
    for path, cmd in cases:
        env = child_env(False, PATH=path)
        ours = subprocess.run([sys.executable, "-m", "trimalloc", "run", "--", cmd], env=env,
                              cwd=str(b), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, timeout=60)
        theirs = subprocess.run([shell, "-c", 'exec "$0"', cmd], env=env, cwd=str(b),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                universal_newlines=True, timeout=60)
        assert (ours.returncode, ours.stdout) == (theirs.returncode, theirs.stdout), (
            path, cmd, ours.stderr, theirs.stderr)
    assert (theirs.returncode, ours.stdout) == (127, "")  # the last case: not found


def test_launcher_says_what_it_searched_and_how_to_run_a_module():
    if subprocess.run(["sh", "-c", "command -v celery"], env=child_env(False, PATH="/usr/bin:/bin"),
                      stdout=subprocess.DEVNULL).returncode == 0:
        pytest.skip("a celery script is installed (Debian's python3-celery has none)")
    p = launch("module", "run", "--", "celery", "-A", "proj", "worker",
               env=child_env(False, PATH="/usr/bin:/bin"))
    assert p.returncode == 127 and p.stdout == ""
    searched = (VENV_BIN + ":" if sys.prefix != sys.base_prefix else "") + "/usr/bin:/bin"
    python = "python3" if sys.prefix != sys.base_prefix else sys.executable
    assert p.stderr == (
        "trimalloc: error: cannot run 'celery': command not found in %s\n"
        "trimalloc: this Python has the module 'celery'; run it with: "
        "trimalloc run -- %s -m celery -A proj worker\n" % (searched, python))
    p = launch("module", "run", "--", "no-such-command-trimalloc", env=child_env(False, PATH="/usr/bin"))
    assert p.stderr.endswith("command not found in %s/usr/bin\n" % searched[:-len("/usr/bin:/bin")])
    p = launch("module", "run", "--", "/no/such/dir/tool")
    assert (p.returncode, p.stderr) == (127, "trimalloc: error: cannot run '/no/such/dir/tool': no such file\n")


@in_venv
def test_launcher_in_a_venv_warns_when_the_command_is_another_pythons_script(tmp_path):
    # Debian's /usr/bin/gunicorn is "#!/usr/bin/python3": it cannot import the venv's packages
    (tmp_path / "gunicorn").write_text("#!/usr/bin/python3\nimport sys\nprint(sys.prefix)\n")
    (tmp_path / "gunicorn").chmod(0o755)
    env = child_env(False, PATH="%s:/usr/bin:/bin" % tmp_path)
    p = launch("script", "run", "--", "gunicorn", "-c", "gunicorn.conf.py", "app:app", env=env)
    assert (p.returncode, p.stdout) == (0, "/usr\n"), p.stderr  # run all the same
    assert p.stderr == (
        "trimalloc: warning: %s runs /usr/bin/python3, not this venv's Python, and will not see "
        "the venv's packages; to run it in the venv: "
        "trimalloc run -- python3 -m gunicorn -c gunicorn.conf.py app:app\n" % (tmp_path / "gunicorn"))
    # the venv's own scripts, and commands that are no Python module, run without a word
    for cmd in (["trimalloc", "--version"], ["sh", "-c", "exit 0"]):
        p = launch("script", "run", "--", *cmd, env=env)
        assert p.returncode == 0 and p.stderr == "", (cmd, p.stderr)


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
    # the core's reading of the variable, not the CLI's own: "FALSE" is not a
    # value the core takes (it warns and keeps the purger on)
    env["TRIMALLOC_BACKGROUND"] = "FALSE"
    assert "purger:       not started" in launch("module", "info", env=env).stdout
    # pymalloc's pools: walked by trims on pymalloc, nothing to walk under PYTHONMALLOC=malloc
    if (3, 10) <= sys.version_info[:2] <= (3, 13) and sys.maxsize > 2**32:
        assert "pymalloc:     trims give back" in launch("module", "info", env=child_env(True)).stdout
    malloc_env = child_env(True, PYTHONMALLOC="malloc")
    assert "pymalloc:     not in use" in launch("module", "info", env=malloc_env).stdout
    p = launch("module", "--help")
    assert p.returncode == 0 and "trimalloc run" in p.stdout and "path" in p.stdout
    p = launch("module", "--version")
    assert p.stdout.strip() == "trimalloc " + trimalloc.__version__
