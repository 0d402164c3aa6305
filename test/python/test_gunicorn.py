"""A real gunicorn (Debian's, 2 sync workers, fixtures/gunicorn.conf.py, the
app fixtures/probe_app.py) on loopback, with the gunicorn helper or the WSGI
middleware, made to run on trimalloc each way the README gives, and once the
way it warns against. Each test checks that the server came up once (one
master, each worker booted once, no respawn), what every worker runs on (each
answers /info, through the probe app's barrier), that the hook fires in every
worker, and that every worker's RSS falls well below its peak after a burst
of 100 MiB. The same behaviour names as test/ruby/puma_cluster_test.rb."""
import re
import sys
from pathlib import Path

import pytest

from conftest import (MiB, child_env, children_of, free_port, maps_trimalloc, on_each_worker,
                      proc_status, spawn_server, stop_group, wait_for, wait_listening)

FIXTURES = Path(__file__).resolve().parent / "fixtures"
CONF = FIXTURES / "gunicorn.conf.py"
WORKERS = 2
BURST_MIB = 100
# The core's own return of idle memory (its background purger, its delayed
# purge) is held off: what returns the burst here is the hook's trim.
HOLD = {"TRIMALLOC_BACKGROUND": "0", "TRIMALLOC_PURGE_DELAY_MS": "600000"}
BOOTED = re.compile(r"Booting worker with pid: (\d+)")
WARNING = re.compile(r"^.*RuntimeWarning: trimalloc\.preload: .*$", re.M)

pytestmark = pytest.mark.parametrize("hook", ["gunicorn", "wsgi"])


class Server:
    def __init__(self, proc, port, log):
        self.proc, self.port, self.log_path = proc, port, log

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        return self.log_path.read_text()

    def workers(self):
        return sorted(int(p) for p in BOOTED.findall(self.log()))


@pytest.fixture
def server(tmp_path):
    started = []

    def start(hook, launcher=False, preload_in=None, preload_app=False):
        port = free_port()
        env = child_env(False, TA_PORT=str(port), TA_BARRIER_DIR=str(tmp_path), TA_HOOK=hook,
                        TA_PRELOAD_IN=preload_in or "", TA_PRELOAD_APP="1" if preload_app else "0",
                        PYTHONPATH=str(FIXTURES), **HOLD)
        cmd = [sys.executable, "-m", "gunicorn", "-c", str(CONF), "probe_app:application"]
        if launcher:
            cmd = [sys.executable, "-m", "trimalloc", "run", "--"] + cmd
        log = tmp_path / "gunicorn.log"
        s = Server(spawn_server(cmd, env, log), port, log)
        started.append(s)
        wait_listening("gunicorn", s.pid, port, s.log)
        wait_for("%d workers booted:\n%s" % (WORKERS, s.log()), lambda: len(s.workers()) >= WORKERS,
                 timeout=120)
        return s

    yield start
    for s in started:
        stop_group(s.proc)


def check_server(s, backend, hook):
    """What every test checks; returns the workers' /info answers."""
    workers = s.workers()
    assert len(workers) == WORKERS, s.log()
    assert sorted(children_of(s.pid)) == workers

    infos = on_each_worker(s.port, "/info", WORKERS)
    assert sorted(i["pid"] for i in infos) == workers  # every worker answered
    for i in infos:
        assert i["ppid"] == s.pid
        assert (i["active"], i["backend"], i["stats"]["backend"]) == (
            backend == "trimalloc", backend, backend), i
    if hook == "gunicorn":  # post_worker_init's line, once per worker
        for w in workers:
            line = "trimalloc: worker %d runs on %s (" % (w, backend)
            assert s.log().count(line) == 1, s.log()
            if backend == "glibc":
                assert s.log().count(line + "trimalloc is not preloaded") == 1, s.log()

    bursts = on_each_worker(s.port, "/burst?mib=%d" % BURST_MIB, WORKERS)
    assert sorted(b["pid"] for b in bursts) == workers
    for b in bursts:
        before = next(i for i in infos if i["pid"] == b["pid"])
        assert b["rss"] - before["rss"] >= 70 * MiB, ("the burst was resident at its end", b)
    # The hook trims once the response is closed (the middleware) or sent
    # (post_request): the RSS falls then, well below the peak.
    for w in workers:
        def fell():
            st = proc_status(w)
            return st["hwm"] - st["rss"] >= 60 * MiB
        wait_for("worker %d's RSS to fall after the burst (%s)" % (w, proc_status(w)), fell)
    after = on_each_worker(s.port, "/info", WORKERS)
    for i in after:
        h = i["hook"]
        assert h["trims"] >= 1, (i["pid"], h)
        assert h["trimmed_bytes"] >= 60 * MiB, ("the hook's trim returned the burst", i["pid"], h)
        assert i["stats"]["trims"] >= h["trims"]

    log = s.log()
    assert log.count("Starting gunicorn") == 1 and log.count("Listening at:") == 1, log  # one master
    assert s.workers() == workers, log  # each worker booted once, none replaced
    assert "Worker failed to boot" not in log and "Connection in use" not in log, log
    assert sorted(children_of(s.pid)) == workers
    return infos


def test_gunicorn_on_the_launcher_runs_every_worker_on_trimalloc_and_trims_after_a_burst(server, hook):
    s = server(hook, launcher=True)
    assert maps_trimalloc(s.pid)  # the master too
    check_server(s, "trimalloc", hook)
    assert not WARNING.findall(s.log())


def test_gunicorn_with_the_preload_line_in_its_config_runs_every_worker_on_trimalloc(server, hook):
    s = server(hook, preload_in="gunicorn.conf.py")
    assert maps_trimalloc(s.pid)  # the master re-executed itself on trimalloc
    check_server(s, "trimalloc", hook)
    assert not WARNING.findall(s.log())


def test_gunicorn_with_the_preload_line_in_the_app_comes_up_once_on_glibc_and_warns_once(server, hook):
    # Without --preload each worker imports the application module after the
    # fork, where a re-exec would start a second master. Each worker warns
    # once, at the import line, naming the right place, and serves on glibc;
    # the hook still trims (malloc_trim).
    s = server(hook, preload_in="probe_app.py")
    assert not maps_trimalloc(s.pid)
    check_server(s, "glibc", hook)
    warnings = WARNING.findall(s.log())
    assert len(warnings) == WORKERS, s.log()  # one per worker
    for w in warnings:
        assert w.startswith(str(FIXTURES / "probe_app.py") + ":"), w  # at the import line
        assert "fork of one running the same program" in w
        assert "first in gunicorn.conf.py" in w  # names the right place
        assert w.endswith("continuing on glibc"), w


def test_gunicorn_with_the_preload_line_in_the_app_and_preload_runs_every_worker_on_trimalloc(server, hook):
    # With --preload the master imports the application module before it
    # forks (and before it binds): the line re-executes the master there.
    s = server(hook, preload_in="probe_app.py", preload_app=True)
    assert maps_trimalloc(s.pid)
    check_server(s, "trimalloc", hook)
    assert not WARNING.findall(s.log())
