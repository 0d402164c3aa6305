"""A Celery prefork worker (concurrency 2) on a Redis broker: what do its pool
processes hold while they run tasks, and once they idle?

This driver runs on glibc itself: it starts redis-server on a free loopback
port (--save '' --appendonly no), a worker on bench/celery_app.py with the
allocator under test, waits until the worker is ready, sends `--tasks` tasks
(40) that each build 20..50 MiB of Python objects and drop them, collects the
results, lets the pool idle `--idle-ms` ms (2000), stops the worker and the
server, and prints one BENCH line. Every 50 ms it reads the RSS of the two
pool processes (/proc/PID/statm); CPU time (utime + stime) and minor faults
come from /proc/PID/stat of the pool processes, read before the first task is
sent and at the end of the idle time.
    python3 celery_run.py [--tasks N] [--idle-ms MS] [--preload LIB] [--launcher]
                          [--trim none|malloc_trim|trimalloc] [--pkg DIR]
--preload LIB   LD_PRELOAD=LIB for the worker
--launcher      start the worker with `python3 -m trimalloc run -- python3 -m
                celery ...` (the package's launcher: preloads its bundled
                library and sets PYTHONMALLOC=malloc, its default)
--launcher-opt X  an option for the launcher (repeatable), e.g.
                --no-pythonmalloc
--trim MODE     what the app does after each task (see celery_app.py)
--pkg DIR       put DIR (holding the trimalloc Python package) on the worker's
                PYTHONPATH
Reports (bytes, the sum over the pool processes): baseline (before the
tasks), mean RSS over the 50 ms samples from the first task sent to the last
result, peak (the highest sample; and the sum of the processes' VmHWM), end
(250 ms after the last result: the last task_postrun handlers have run), idle
(`--idle-ms` after the last result); wall time from the first task sent to the
last result; CPU time and minor faults of the pool processes. "allocator" is
what every pool process said serves its malloc, "pythonmalloc" their
PYTHONMALLOC."""
import gc
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

from celery_bench import hwm_of, rss_of, start_worker, stop, wait_until  # noqa: E402 (bench/ is sys.path[0])

HERE = os.path.dirname(os.path.abspath(__file__))
TICK = float(os.sysconf("SC_CLK_TCK"))


def arg(name, default=None):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


TASKS = int(arg("--tasks", "40"))
IDLE_MS = int(arg("--idle-ms", "2000"))
PRELOAD = arg("--preload")
LAUNCHER = "--launcher" in sys.argv
LAUNCHER_OPTS = [sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--launcher-opt"]
TRIM = arg("--trim", "none")
PKG = arg("--pkg")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                st = f.read()
        except OSError:
            continue
        if int(st.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(d))
    return sorted(out)


def stat_of(pid):
    """(cpu seconds, minor faults) of a process, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as f:
        v = f.read().rsplit(")", 1)[1].split()
    # after ")": state(3) ppid ... minflt is field 10, utime 14, stime 15 (1-based)
    return (int(v[11]) + int(v[12])) / TICK, int(v[7])


class Sampler(threading.Thread):
    """Sums the pool processes' RSS every 50 ms."""

    def __init__(self, pids):
        super().__init__(daemon=True)
        self.pids, self.samples, self.halt = pids, [], threading.Event()

    def run(self):
        while not self.halt.wait(0.05):
            self.samples.append((time.perf_counter(), sum(rss_of(p) for p in self.pids)))


def main():
    tmp = tempfile.mkdtemp(prefix="trimalloc-bench-celery.")
    env0 = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC", "PYTHONPATH")}
    port = free_port()
    redis = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                              "--appendonly", "no", "--dir", tmp],
                             env=env0, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    pool = []
    try:
        def redis_up():
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                return True
            except OSError:
                return False

        if not wait_until(redis_up, 20):
            raise SystemExit("celery_run: redis-server did not start")
        url = "redis://127.0.0.1:%d/0" % port
        env = dict(env0, BENCH_REDIS_URL=url, BENCH_CELERY_TRIM=TRIM,
                   PYTHONPATH=os.pathsep.join([HERE] + ([PKG] if PKG else [])))
        if PRELOAD:
            env["LD_PRELOAD"] = PRELOAD
        try:
            worker = start_worker("celery_app", "bench@localhost", "bench", env, tmp, LAUNCHER, LAUNCHER_OPTS)
        except RuntimeError as e:
            raise SystemExit("celery_run: %s" % e)
        wait_until(lambda: len(children_of(worker.pid)) >= 2, 20)
        pool = children_of(worker.pid)

        import celery  # the client, on glibc in this process
        client = celery.Celery("client", broker=url, backend=url)
        client.send_task("bench.ping", queue="bench").get(timeout=60)  # connections up
        time.sleep(0.2)
        base_rss = sum(rss_of(p) for p in pool)
        s0 = {p: stat_of(p) for p in pool}
        sampler = Sampler(pool)
        sampler.start()
        t0 = time.perf_counter()
        results = [client.send_task("bench.work", args=[i], queue="bench") for i in range(TASKS)]
        got = [r.get(timeout=300) for r in results]
        t1 = time.perf_counter()
        time.sleep(0.25)
        end = sum(rss_of(p) for p in pool)
        time.sleep(max(0.0, IDLE_MS / 1000.0 - 0.25))
        idle = sum(rss_of(p) for p in pool)
        sampler.halt.set()
        sampler.join()
        s1 = {p: stat_of(p) for p in pool}
        hwm = sum(hwm_of(p) for p in pool)
        del results
        gc.collect()  # drop the AsyncResults while the broker still answers
        client.close()

        pids = {g[0] for g in got}
        allocs = sorted({g[1] for g in got})
        if not pids <= set(pool):
            raise SystemExit("celery_run: tasks ran in processes %s, not in the pool %s" % (sorted(pids), pool))
        work = [v for t, v in sampler.samples if t <= t1] or [end]
        alloc_name = allocs[0] if len(allocs) == 1 else "mixed:" + ",".join(allocs)
        line = {"workload": "celery", "allocator": alloc_name, "tasks": TASKS, "trim": TRIM,
                "launcher": LAUNCHER, "pythonmalloc": ",".join(sorted({g[3] for g in got})),
                "check": sum(g[2] for g in got), "pool": len(pool),
                "pool_used": len(pids), "baseline": base_rss, "rss_mean": sum(work) / len(work),
                "samples": len(work), "peak": max(v for _, v in sampler.samples + [(0, end)]),
                "peak_hwm": hwm, "rss_end": end, "rss_idle": idle, "idle_ms": IDLE_MS,
                "wall_work_s": t1 - t0,
                "cpu_work_s": sum(s1[p][0] - s0[p][0] for p in pool),
                "minflt_work": sum(s1[p][1] - s0[p][1] for p in pool)}
        counts = {}  # pid -> trimalloc.celery's counts at the start of its last task
        for g in got:
            if len(g) > 4 and g[4] and g[4]["events"] >= counts.get(g[0], {"events": -1})["events"]:
                counts[g[0]] = g[4]
        if counts:
            for k in ("trims", "refault_skips", "deferred"):
                line[k] = sum(c[k] for c in counts.values())
            line["hook_trims"] = line["trims"]
            line["trims"] += line["deferred"]  # the policy's background trims too
            line["fault_ns"] = [c["fault_ns"] for c in counts.values()]
        print("BENCH " + json.dumps(line), flush=True)
    finally:
        if worker is not None:
            # The figures are taken: the pool processes are killed (by pid), then
            # the worker is stopped (a warm shutdown takes over a second).
            for pid in pool:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            stop(worker, signal.SIGQUIT)
        stop(redis, signal.SIGTERM)
        shutil.rmtree(tmp, ignore_errors=True)


main()
