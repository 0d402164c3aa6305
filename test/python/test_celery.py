"""trimalloc.celery with a real Celery 5 worker (prefork pool) and a real redis-server broker."""
import gc
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import MiB, children_of, free_port, rss_of, stop_process, wait_until

import celery  # Debian python3-celery: a missing package fails the suite, not skips it
FIXTURES = Path(__file__).resolve().parent / "fixtures"
TASKS, TASK_MIB = 16, 40


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


def run_worker(redis_url, tmp_path, name, on_trimalloc):
    """Starts a worker, runs TASKS churn tasks, returns (pool pids -> RSS, log, hook stats)."""
    env = dict(os.environ, TA_REDIS_URL=redis_url, PYTHONPATH=str(FIXTURES),
               TA_INTEGRATION="1" if on_trimalloc else "0")
    for k in ("LD_PRELOAD", "PYTHONMALLOC", "TRIMALLOC_PRELOAD_GUARD"):
        env.pop(k, None)
    cmd = [sys.executable, "-m", "celery", "-A", "celery_app", "worker", "-P", "prefork",
           "-c", "2", "-l", "info", "-n", "%s@localhost" % name, "-Q", name,
           "--without-heartbeat", "--without-gossip", "--without-mingle"]
    if on_trimalloc:
        cmd = [sys.executable, "-m", "trimalloc", "run", "--"] + cmd
    log_path = tmp_path / ("%s.log" % name)
    client = celery.Celery("client", broker=redis_url, backend=redis_url)
    with open(log_path, "w") as log:
        worker = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
    pool = []
    try:
        results = [client.send_task("celery_app.churn", args=[TASK_MIB], queue=name)
                   for _ in range(TASKS)]
        task_pids = {r.get(timeout=120) for r in results}
        stats = client.send_task("celery_app.hook_stats", queue=name).get(timeout=60)
        del results
        pool = children_of(worker.pid)
        assert task_pids <= set(pool) and len(task_pids) == 2, (task_pids, pool)
        time.sleep(1.0)  # let the last task_postrun handlers finish
        rss = {pid: rss_of(pid) for pid in pool}
    finally:
        stop_process(worker)
        for pid in pool:  # pool processes outliving their parent: stop them by pid
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        gc.collect()  # drop AsyncResults while the broker still answers
        client.close()
    return rss, log_path.read_text(), stats


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
