"""What the Celery benchmark drivers (celery_run.py on Redis, celery_rabbit.py
on RabbitMQ) and their apps (celery_app.py, celery_rabbit_app.py) share:
reading a process's RSS and peak from /proc, waiting for a condition,
stopping a process (SIGTERM, then SIGKILL), starting a prefork worker
(concurrency 2, optionally through `trimalloc run`) and waiting until it is
ready, and, in the app, the trim after each task that BENCH_CELERY_TRIM asks
for."""
import ctypes
import json
import os
import signal
import subprocess
import sys
import time

PY = "/usr/bin/python3"
PAGE = os.sysconf("SC_PAGESIZE")


def wait_until(cond, timeout, step=0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(step)
    return cond()


def rss_of(pid):
    try:
        with open("/proc/%d/statm" % pid) as f:
            return int(f.read().split()[1]) * PAGE
    except OSError:
        return 0


def hwm_of(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def stop(proc, sig, timeout=15.0):
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def start_worker(app_module, node, queue, env, tmp, launcher=False, launcher_opts=()):
    """Starts `celery -A app_module worker` (prefork, concurrency 2, -Q queue),
    through `python3 -m trimalloc run [launcher_opts] --` when `launcher`, and
    waits up to 60 s for its " ready." line. Returns the process; raises
    RuntimeError with the log's last lines when it did not start."""
    cmd = [PY, "-m", "celery", "-A", app_module, "worker", "-P", "prefork", "-c", "2", "-l", "info",
           "-n", node, "-Q", queue, "--without-heartbeat", "--without-gossip", "--without-mingle"]
    if launcher:
        cmd = [PY, "-m", "trimalloc", "run"] + list(launcher_opts) + ["--"] + cmd
    log_path = os.path.join(tmp, "worker.log")
    with open(log_path, "w") as log:
        worker = subprocess.Popen(cmd, env=env, cwd=tmp, stdout=log, stderr=subprocess.STDOUT)

    def ready():
        if worker.poll() is not None:
            return True
        with open(log_path) as f:
            return " ready." in f.read()

    wait_until(ready, 60)
    if worker.poll() is not None or not ready():
        with open(log_path) as f:
            tail = f.read().strip().splitlines()[-3:]
        stop(worker, signal.SIGTERM)
        raise RuntimeError("the worker did not start: %s" % " | ".join(tail))
    return worker


def install_trim(app, who):
    """In an app: what runs after each task, from BENCH_CELERY_TRIM:
        none         nothing
        malloc_trim  a task_postrun handler calling glibc's malloc_trim(0)
                     through ctypes, as users write it
        trimalloc    trimalloc.celery.install(app), as the package's README
                     says, with the keyword arguments of the JSON object in
                     BENCH_CELERY_INSTALL (e.g. {"min_interval": 0})"""
    from celery import signals

    mode = os.environ.get("BENCH_CELERY_TRIM", "none")
    if mode == "malloc_trim":
        malloc_trim = ctypes.CDLL("libc.so.6").malloc_trim
        malloc_trim.restype, malloc_trim.argtypes = ctypes.c_int, [ctypes.c_size_t]

        @signals.task_postrun.connect(weak=False)
        def _trim_after_task(**kwargs):
            malloc_trim(0)
    elif mode == "trimalloc":
        import trimalloc.celery

        trimalloc.celery.install(app, **json.loads(os.environ.get("BENCH_CELERY_INSTALL", "{}")))
    elif mode != "none":
        sys.exit("%s: unknown BENCH_CELERY_TRIM %r" % (who, mode))
    return mode


def trim_counts(mode):
    """In a task: trimalloc.celery's counts in this process so far (the
    tasks before this one, its trims and the ones its refault budget held
    back) and the fault cost that budget uses; None without the hook."""
    if mode != "trimalloc":
        return None
    import trimalloc.celery
    from trimalloc import _trimalloc

    c = trimalloc.celery.stats()
    p = _trimalloc.policy_stats()
    return {"events": c["events"], "trims": c["trims"], "refault_skips": c.get("refault_skips", 0),
            "deferred": p["deferred"], "fault_ns": p.get("fault_ns")}
