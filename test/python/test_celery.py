"""trimalloc.celery with a real Celery 5 worker (prefork pool, 2 processes)
and a real redis-server broker (started by the test on a free loopback port,
no persistence). A task counts as done once its task_postrun handlers ran
(the app's marker), so nothing here waits a fixed time. The same behaviour
names as test/ruby/sidekiq_test.rb."""
import contextlib
import gc
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from conftest import (MiB, child_env, children_of, free_port, maps_trimalloc, proc_status, rss_of,
                      spawn_server, stop_group, stop_process, wait_for, wait_until)

import celery  # Debian python3-celery: a missing package fails the suite, not skips it
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TASKS, TASK_MIB = 16, 40
POOL = 2
BURST_MIB = 100
# The core's own return of idle memory (its background purger, its delayed
# purge) is held off where what returns the burst must be the hook's trim.
HOLD = {"TRIMALLOC_BACKGROUND": "0", "TRIMALLOC_PURGE_DELAY_MS": "600000"}


@pytest.fixture(scope="module")
def redis_url(tmp_path_factory):
    port = free_port()
    cmd = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
           "--appendonly", "no", "--dir", str(tmp_path_factory.mktemp("redis"))]
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def up():
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return True
            except OSError:
                return False

        assert wait_until(up, timeout=20), "redis-server did not start"
        yield "redis://127.0.0.1:%d/0" % port
    finally:
        stop_process(server)


class Worker:
    """A celery worker (prefork, 2 pool processes) the test started, its log,
    a client, and the directory where the app marks finished tasks."""

    def __init__(self, proc, log_path, client, done_dir, queue):
        self.proc, self.log_path, self.client, self.done_dir, self.queue = (
            proc, log_path, client, done_dir, queue)

    @property
    def pid(self):
        return self.proc.pid

    def log(self):
        return self.log_path.read_text()

    def run(self, name, *args, **kwargs):
        """Sends a task; returns its AsyncResult."""
        return self.client.send_task("celery_app." + name, args=list(args), kwargs=kwargs,
                                     queue=self.queue)

    def done(self, results, timeout=120):
        """Waits for the results, then until every task's task_postrun
        handlers, trimalloc's trim included, have run (the app's marker)."""
        values = [r.get(timeout=timeout) for r in results]
        ids = [r.id for r in results]
        wait_for("task_postrun of %d tasks" % len(ids),
                 lambda: all((self.done_dir / i).exists() for i in ids), timeout=timeout)
        return values

    def on_each_pool_process(self, name, *args):
        """The same task once in each pool process (the app's barrier)."""
        barrier = uuid.uuid4().hex
        return self.done([self.run(name, *args, barrier=barrier, n=POOL) for _ in range(POOL)])


@contextlib.contextmanager
def celery_worker(redis_url, tmp_path, name, launcher=False, integration=False, preload_in=None,
                  hold=False, install="explicit"):
    done_dir = tmp_path / ("%s-done" % name)
    done_dir.mkdir()
    env = child_env(False, TA_REDIS_URL=redis_url, PYTHONPATH=str(FIXTURES), TA_DONE_DIR=str(done_dir),
                    TA_INTEGRATION="1" if integration else "0", TA_PRELOAD_IN=preload_in or "",
                    TA_INSTALL=install, **(HOLD if hold else {}))
    cmd = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", "prefork",
           "-c", str(POOL), "-l", "info", "-n", "%s@localhost" % name, "-Q", name,
           "--without-heartbeat", "--without-gossip", "--without-mingle"]
    if launcher:
        cmd = [sys.executable, "-m", "trimalloc", "run", "--"] + cmd
    log_path = tmp_path / ("%s.log" % name)
    client = celery.Celery("client", broker=redis_url, backend=redis_url)
    worker = spawn_server(cmd, env, log_path)
    try:
        yield Worker(worker, log_path, client, done_dir, name)
    finally:
        # Celery 5.2's warm shutdown takes 1.5 s, and now and then never ends
        # (on glibc too): a pool process waits for the main process to read its
        # last messages (billiard's _ensure_messages_consumed) while the main
        # process waits for it to exit (_flush_outqueue). Nothing is checked
        # after the tasks: 5 s, then the group is killed.
        stop_group(worker, grace=5)
        gc.collect()  # drop AsyncResults while the broker still answers
        client.close()


def run_worker(redis_url, tmp_path, name, on_trimalloc):
    """Starts a worker, runs TASKS churn tasks, returns (pool pids -> RSS, log, hook stats)."""
    with celery_worker(redis_url, tmp_path, name, launcher=on_trimalloc,
                       integration=on_trimalloc) as w:
        task_pids = set(w.done([w.run("churn", TASK_MIB) for _ in range(TASKS)]))
        stats, = w.done([w.run("hook_stats")])
        pool = children_of(w.pid)
        assert task_pids <= set(pool) and len(task_pids) == 2, (task_pids, pool)
        rss = {pid: rss_of(pid) for pid in pool}  # every task's trim has run
        return rss, w.log(), stats


def test_celery_worker_rss_lower_on_trimalloc_with_the_integration(redis_url, tmp_path):
    glibc_rss, glibc_log, glibc_stats = run_worker(redis_url, tmp_path, "glibc", False)
    trim_rss, trim_log, trim_stats = run_worker(redis_url, tmp_path, "trim", True)

    assert glibc_stats["backend"] == "glibc" and trim_stats["backend"] == "trimalloc"
    assert glibc_stats["celery"]["tasks"] == 0  # not installed there
    assert trim_stats["celery"]["trims"] >= 1  # task_postrun trimmed
    assert trim_stats["celery"]["trimmed_bytes"] > TASK_MIB * MiB // 2

    # one log line per pool process, saying which backend runs
    for pid in trim_rss:
        assert "trimalloc: pool process %d runs on trimalloc (" % pid in trim_log, trim_log
    assert "trimalloc: pool process" not in glibc_log

    # Each pool process ran several 40 MiB tasks. glibc keeps that garbage
    # resident; trimalloc + the task_postrun trim gives it back.
    glibc_total, trim_total = sum(glibc_rss.values()), sum(trim_rss.values())
    detail = "glibc %s, trimalloc %s (MiB)" % (
        sorted(v // MiB for v in glibc_rss.values()), sorted(v // MiB for v in trim_rss.values()))
    assert glibc_total - trim_total > TASK_MIB * MiB, detail  # one task's worth per process: ~80 MiB
    assert max(trim_rss.values()) < min(glibc_rss.values()) - TASK_MIB * MiB // 2, detail


def burst_then_fall(w, before, pool, when, timeout=60.0):
    """A 100 MiB burst in each pool process, resident at its end; then waits
    until each one's RSS is 60 MiB under its peak."""
    bursts = w.on_each_pool_process("burst", BURST_MIB)
    assert sorted(b["pid"] for b in bursts) == pool
    for b in bursts:
        start = next(i for i in before if i["pid"] == b["pid"])
        assert b["rss"] - start["rss"] >= 70 * MiB, ("the burst was resident at its end", b)
    for pid in pool:
        def fell():
            st = proc_status(pid)
            return st["hwm"] - st["rss"] >= 60 * MiB
        wait_for("pool process %d's RSS to fall %s (%s)" % (pid, when, proc_status(pid)), fell, timeout=timeout)


def check_burst(w):
    """What the launcher and preload tests check: every pool process runs on
    trimalloc, says so in the log once, the integration's trim after a
    100 MiB burst returns it, and the RSS falls well below the peak; one
    worker, its pool never replaced."""
    before = w.on_each_pool_process("hook_stats")
    assert maps_trimalloc(w.pid)  # the worker itself
    pool = sorted(children_of(w.pid))
    assert sorted(i["pid"] for i in before) == pool and len(pool) == POOL, (before, pool)
    for i in before:
        assert (i["ppid"], i["active"], i["backend"]) == (w.pid, True, "trimalloc"), i
        assert w.log().count("trimalloc: pool process %d runs on trimalloc (" % i["pid"]) == 1, w.log()

    burst_then_fall(w, before, pool, "after the burst")
    after = w.on_each_pool_process("hook_stats")
    for i in after:
        start = next(b for b in before if b["pid"] == i["pid"])
        c, c0 = i["celery"], start["celery"]
        assert c["trims"] > c0["trims"], (i["pid"], c)
        assert c["trimmed_bytes"] - c0["trimmed_bytes"] >= 60 * MiB, ("the trim returned the burst", c)
        assert i["stats"]["trims"] >= c["trims"]

    log = w.log()
    assert log.count("celery@%s ready." % w.queue) + log.count("%s@localhost ready." % w.queue) == 1, log
    assert sorted(children_of(w.pid)) == pool  # no pool process replaced
    assert "trimalloc.preload" not in log, log


def test_celery_on_the_launcher_runs_on_trimalloc_and_trims_after_a_burst(redis_url, tmp_path):
    with celery_worker(redis_url, tmp_path, "launcher", launcher=True, integration=True, hold=True) as w:
        check_burst(w)


def test_celery_with_the_preload_line_in_its_app_module_runs_on_trimalloc_and_trims_after_a_burst(
        redis_url, tmp_path):
    with celery_worker(redis_url, tmp_path, "preload", preload_in="celery_app.py", integration=True,
                       hold=True) as w:
        check_burst(w)


def test_celery_with_the_default_refault_budget_returns_a_burst_once_the_worker_idles(redis_url, tmp_path):
    """install(app) as the README writes it. The job hooks' refault budget
    may hold the trim after a 100 MiB burst back (on this project's VM a
    fault costs 25-35 us: 25,600 pages are far more than a tenth of the CPU
    the process has spent); the worker must still give the burst back once
    it goes idle, with no task and no purger (held off), within seconds."""
    from trimalloc import _trimalloc
    with celery_worker(redis_url, tmp_path, "budget", launcher=True, integration=True, hold=True,
                       install="defaults") as w:
        before = w.on_each_pool_process("hook_stats")
        share = _trimalloc.DEFAULTS["job"]["refault_share"]
        assert share > 0
        assert {i["refault_share"] for i in before} == {share}, before
        burst_then_fall(w, before, sorted(children_of(w.pid)), "once idle", timeout=20)
        def returned():
            # a trim gave the burst back (the purger is held off): the hook's
            # own after the burst, or the one the budget held back, run by the
            # policy's thread once the worker idled (it may still be counting
            # when the RSS has fallen: asked again)
            after = w.on_each_pool_process("hook_stats")
            got = {i["pid"]: i["stats"]["trimmed_bytes"] - next(
                b for b in before if b["pid"] == i["pid"])["stats"]["trimmed_bytes"] for i in after}
            return after if min(got.values()) >= 60 * MiB else None
        after = wait_for("the trims to count the burst", returned, timeout=20)
        print("refault budget: skips %s, idle trims %s, fault %s ns" % tuple(
            [i["policy"][k] for i in after] for k in ("refault_skips", "idle_trims", "fault_ns")))


def test_install_arguments():
    import trimalloc.celery
    with pytest.raises(ValueError, match="-1"):
        trimalloc.celery.install(min_interval=-1)
    with pytest.raises(TypeError, match="'lots'"):
        trimalloc.celery.install(min_free="lots")
    with pytest.raises(TypeError, match="42"):
        trimalloc.celery.install(app=42)


def test_task_postrun_handler_trims_rate_limited():
    import trimalloc.celery
    from celery import signals
    app = celery.Celery("unit")
    other = celery.Celery("other")
    trimalloc.celery.install(app, min_interval=0)
    try:
        class Task:
            pass

        mine, theirs = Task(), Task()
        mine.app, theirs.app = app, other
        before = trimalloc.celery.stats()
        signals.task_postrun.send(sender=mine, task_id="1", task=mine)
        signals.task_postrun.send(sender=theirs, task_id="2", task=theirs)  # another app: ignored
        mid = trimalloc.celery.stats()
        trimalloc.celery.install(app, min_interval=3600)
        signals.task_postrun.send(sender=mine, task_id="3", task=mine)  # rate-limited
        after = trimalloc.celery.stats()
    finally:
        trimalloc.celery.uninstall()
    assert mid["tasks"] == before["tasks"] + 1 and mid["trims"] == before["trims"] + 1
    assert after["tasks"] == mid["tasks"] + 1 and after["trims"] == mid["trims"]
    signals.task_postrun.send(sender=mine, task_id="4", task=mine)  # uninstalled
    assert trimalloc.celery.stats()["tasks"] == after["tasks"]
