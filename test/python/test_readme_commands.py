"""The README's own lines for running a program on trimalloc ("Run a program on
trimalloc": Celery, gunicorn, a job), with the README's proj/celery.py and
gunicorn.conf.py, run as written where Debian's packages and a venv meet:

- venv: the venv's `trimalloc` script (`python3` in a line that starts with it:
  the venv's python3) with the venv's bin/ not on PATH (not activated);
- activated: the venv's bin/ first on PATH, every word as typed;
- system: a `trimalloc` script on PATH for /usr/bin/python3 (what pip installs
  into /usr/local/bin), the package on PYTHONPATH, no venv.

PATH is otherwise a fresh Debian 12's: Debian's /usr/bin/gunicorn and no
`celery` script (python3-celery installs none). Each server is started,
checked to run on trimalloc, and stopped."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import trimalloc
from conftest import (ROOT, child_env, children_of, free_port, maps_trimalloc, spawn_server,
                      stop_group, wait_for, wait_listening, zombie_or_gone)
from test_celery import redis_url  # noqa: F401 (the fixture: a redis-server of the test's own)

README = (ROOT / "README.md").read_text()
DEBIAN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
VENV_BIN = os.path.join(sys.prefix, "bin")
IN_VENV = sys.prefix != sys.base_prefix
MODES = ["venv", "activated", "system"]


def block_after(heading):
    """The first fenced block after a heading (or a line) of the README."""
    start = README.index(heading)
    m = re.search(r"```[a-z]*\n(.*?)```", README[start:], re.S)
    return m.group(1)


def python_block(first_line):
    """The README's python block that starts with first_line."""
    for m in re.finditer(r"```python\n(.*?)```", README, re.S):
        if m.group(1).startswith(first_line):
            return m.group(1)
    raise AssertionError("no python block starting with %r in README.md" % first_line)


RUN_LINES = [l for l in block_after("### Run a program on trimalloc").splitlines() if l.strip()]


def run_line(word):
    """The README's run line that holds word."""
    lines = [l for l in RUN_LINES if word in l]
    assert lines, "no %r line in the README's run block: %s" % (word, RUN_LINES)
    return lines[0]


def command(line, mode, tmp_path):
    """argv and environment for a README line in a mode (see the module doc)."""
    argv = shlex.split(line)
    env = child_env(False, PATH=DEBIAN_PATH)
    env.pop("VIRTUAL_ENV", None)
    env.pop("PYTHONPATH", None)
    if mode == "venv":
        argv[0] = os.path.join(VENV_BIN, argv[0])
    elif mode == "activated":
        env["PATH"] = VENV_BIN + ":" + DEBIAN_PATH
        env["VIRTUAL_ENV"] = sys.prefix
    else:
        bindir = tmp_path / "system-bin"
        bindir.mkdir(exist_ok=True)
        script = bindir / "trimalloc"
        script.write_text("#!/usr/bin/python3\nimport sys\nfrom trimalloc.cli import main\n"
                          "sys.exit(main())\n")
        script.chmod(0o755)
        env["PATH"] = str(bindir) + ":" + DEBIAN_PATH
        env["PYTHONPATH"] = str(Path(trimalloc.__file__).resolve().parents[1])
    return argv, env


def expected_prefix(mode):
    return sys.prefix if mode != "system" else "/usr"


@pytest.fixture(params=MODES)
def mode(request):
    if request.param != "system" and not IN_VENV:
        pytest.skip("the suite is not running from a venv (script/test-python installs one)")
    return request.param


def test_readme_runs_programs_with_python3_m():
    """Debian's python3-celery has no `celery` script and its /usr/bin/gunicorn
    runs /usr/bin/python3: the README says python3 -m."""
    assert "python3 -m celery" in run_line("celery") and "python3 -m gunicorn" in run_line("gunicorn")


@pytest.mark.parametrize("word", ["python3 -m trimalloc", "--pythonmalloc"])
def test_readme_job_lines_run_the_job_on_trimalloc_in_the_environment(mode, word, tmp_path):
    job = tmp_path / "job.py"
    job.write_text("import os, sys, trimalloc\n"
                   "print(sys.prefix, trimalloc.backend(), os.environ.get('PYTHONMALLOC'))\n")
    argv, env = command(run_line(word), mode, tmp_path)
    p = subprocess.run(argv, env=env, cwd=str(tmp_path), stdout=subprocess.PIPE,
                       stderr=subprocess.PIPE, universal_newlines=True, timeout=60)
    assert p.returncode == 0, (argv, p.stderr)
    assert p.stderr == "", p.stderr
    pythonmalloc = "malloc" if "--pythonmalloc" in word else "None"  # pymalloc by default
    assert p.stdout.split() == [expected_prefix(mode), "trimalloc", pythonmalloc], argv


def pool_on_trimalloc(pid, n):
    kids = children_of(pid)
    return len(kids) >= n and all(maps_trimalloc(k) for k in kids) and kids


def test_readme_celery_line_starts_a_worker_on_trimalloc(mode, tmp_path, redis_url):  # noqa: F811
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "celery.py").write_text(python_block("# proj/celery.py"))
    argv, env = command(run_line("celery"), mode, tmp_path)
    env["CELERY_BROKER_URL"] = redis_url
    log = tmp_path / "celery.log"
    w = spawn_server(argv, env, log, cwd=str(tmp_path))
    try:
        def up():
            assert not zombie_or_gone(w.pid), "the worker exited:\n" + log.read_text()
            return pool_on_trimalloc(w.pid, 2)  # the default pool: prefork, one per CPU

        pool = wait_for("the worker's pool processes on trimalloc", up, timeout=120)
        assert maps_trimalloc(w.pid)
        for pid in [w.pid] + pool:
            environ = os.fsdecode(Path("/proc/%d/environ" % pid).read_bytes()).split("\0")
            assert not [e for e in environ if e.startswith("PYTHONMALLOC=")]  # pymalloc by default
            path = [e for e in environ if e.startswith("PATH=")]
            if mode != "system":  # the venv's interpreter found itself through PATH
                assert path[0].startswith("PATH=%s:" % VENV_BIN), path
        assert "Traceback" not in log.read_text(), log.read_text()
    finally:
        stop_group(w, grace=5)


def test_readme_gunicorn_line_serves_on_trimalloc(mode, tmp_path):
    (tmp_path / "gunicorn.conf.py").write_text(python_block("# gunicorn.conf.py"))
    (tmp_path / "app.py").write_text(
        "import os, sys, trimalloc\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [('%s %s %d' % (sys.prefix, trimalloc.backend(), os.getpid())).encode()]\n")
    argv, env = command(run_line("gunicorn"), mode, tmp_path)
    port = free_port()
    env["GUNICORN_CMD_ARGS"] = "--bind 127.0.0.1:%d --workers 2" % port
    log = tmp_path / "gunicorn.log"
    s = spawn_server(argv, env, log, cwd=str(tmp_path))
    try:
        wait_listening("gunicorn", s.pid, port, log.read_text)
        booted = lambda: re.findall(r"trimalloc: worker (\d+) runs on (\w+)", log.read_text())
        workers = wait_for("2 workers' post_worker_init lines", lambda: len(booted()) >= 2 and booted())
        assert sorted(w[1] for w in workers) == ["trimalloc", "trimalloc"], log.read_text()
        import http.client
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        c.request("GET", "/")
        prefix, backend, pid = c.getresponse().read().decode().split()
        c.close()
        assert (prefix, backend) == (expected_prefix(mode), "trimalloc")
        assert pid in [w[0] for w in workers]
        assert "trimalloc: warning" not in log.read_text(), log.read_text()
    finally:
        stop_group(s)
