"""The hourly job of the demo's aiohttp service, measured in the job's worker.

gunicorn with `-k aiohttp.GunicornWebWorker` (2 workers, demo/gunicorn.conf.py,
demo/web_service.py) under each allocator, started as a user would:
  glibc      plain gunicorn
  jemalloc   LD_PRELOAD=libjemalloc.so.2
  trimalloc  `python -m trimalloc run -- gunicorn ...` with the README's line
             (`from trimalloc.gunicorn import post_request, post_worker_init`)
After 300 small requests, two jobs (`--rows` rows a side), one after the
other, while a client thread keeps sending small requests. For each job, in
the worker that ran it: RSS before the job, at the response, 1 s and 5 s
after it (from /proc), its peak (VmHWM after the job), and the CPU the job's own code used (thread CPU time,
measured in the handler: the trim, which runs in another thread after the
response, is not in it). Runs are interleaved (each repetition runs every
allocator once, the order rotated); figures are medians over `--repeat`.

    /usr/bin/python3 bench/aiohttp_job.py [--python VENV/bin/python] [--rows 100000] [--repeat 3]

`--python` must have trimalloc installed (script/test-python's venv, or
`pip install --no-build-isolation --no-index .` into a venv with
--system-site-packages for aiohttp and gunicorn from Debian).
"""
import argparse
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
DEMO = os.path.join(os.path.dirname(HERE), "demo")
sys.path.insert(0, DEMO)

import web_service  # noqa: E402

MIB = 1 << 20
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(python, allocator, rows, log):
    port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LD_PRELOAD", "MALLOC_", "PYTHONMALLOC", "TRIMALLOC_", "DEMO_"))}
    env.update(DEMO_PORT=str(port), DEMO_JOB_ROWS=str(rows), PYTHONDONTWRITEBYTECODE="1")
    cmd = [python, "-m", "gunicorn", "-c", os.path.join(DEMO, "gunicorn.conf.py"),
           "-k", "aiohttp.GunicornWebWorker", "web_service:make_app()"]
    if allocator == "jemalloc":
        env["LD_PRELOAD"] = JEMALLOC
    elif allocator == "trimalloc":
        env["DEMO_TRIM"] = "1"
        cmd = [python, "-m", "trimalloc", "run", "--"] + cmd
    p = subprocess.Popen(cmd, env=env, cwd=DEMO, stdout=log, stderr=subprocess.STDOUT,
                         stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return p, port
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("gunicorn (%s) did not listen" % allocator)


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()


def hwm_of(pid):
    """The process's peak RSS so far (VmHWM), bytes."""
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def maps(pid, name):
    with open("/proc/%d/maps" % pid) as f:
        return name in f.read()


def one_run(python, allocator, rows, log):
    p, port = start(python, allocator, rows, log)
    try:
        for n in range(300):
            web_service.get(port, "/item?id=%d" % (n * 7919))
        stop_small = threading.Event()

        def small():
            n = 0
            while not stop_small.is_set():
                web_service.get(port, "/item?id=%d" % (n * 104729))
                n += 1

        t = threading.Thread(target=small)
        t.start()
        jobs = []
        try:
            for _ in range(2):
                job = web_service.get(port, "/job")
                t0 = time.monotonic()
                pid = job["pid"]
                lib = {"glibc": None, "jemalloc": "libjemalloc", "trimalloc": "libtrimalloc"}[allocator]
                if lib and not maps(pid, lib):
                    raise RuntimeError("worker %d is not on %s" % (pid, allocator))
                time.sleep(max(0.0, 1.0 - (time.monotonic() - t0)))
                job["rss_1s"] = web_service.rss_of(pid)
                job["hwm"] = hwm_of(pid)
                time.sleep(max(0.0, 5.0 - (time.monotonic() - t0)))
                job["rss_5s"] = web_service.rss_of(pid)
                jobs.append(job)
        finally:
            stop_small.set()
            t.join()
        return jobs
    finally:
        stop(p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--python", default=sys.executable)
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--allocators", default="glibc,jemalloc,trimalloc")
    ap.add_argument("--log", default="/dev/null")
    args = ap.parse_args()
    allocs = args.allocators.split(",")
    runs = {a: [] for a in allocs}
    with open(args.log, "ab") as log:
        for r in range(args.repeat):
            order = allocs[r % len(allocs):] + allocs[:r % len(allocs)]
            for a in order:
                jobs = one_run(args.python, a, args.rows, log)
                runs[a].append(jobs)
                print("run %d %-9s " % (r + 1, a) + "  ".join(
                    "job%d pid %d: %.0f -> peak %.0f, %.0f -> 1 s %.0f, 5 s %.0f MiB, cpu %.2f s"
                    % (i + 1, j["pid"], j["rss_before"] / MIB, j["hwm"] / MIB, j["rss_at_response"] / MIB,
                       j["rss_1s"] / MIB, j["rss_5s"] / MIB, j["job_cpu"]) for i, j in enumerate(jobs)),
                    file=sys.stderr, flush=True)
    med = statistics.median
    base_cpu = [med(j[i]["job_cpu"] for j in runs[allocs[0]]) for i in range(2)]
    print("rows a side: %d; medians over %d runs (min..max); RSS of the job's worker, MiB"
          % (args.rows, args.repeat))
    print("%-10s %-4s %8s %8s %10s %8s %8s %16s %18s %14s" % (
        "allocator", "job", "before", "peak", "response", "+1 s", "+5 s", "+1 s / before", "job CPU s",
        "CPU / " + allocs[0]))
    for a in allocs:
        for i in range(2):
            js = [run[i] for run in runs[a]]
            ratio = [j["rss_1s"] / j["rss_before"] for j in js]
            cpu = [j["job_cpu"] for j in js]
            print("%-10s %-4d %8.0f %8.0f %10.0f %8.0f %8.0f %8.2f (%.2f..%.2f) %8.2f (%.2f..%.2f) %14s" % (
                a, i + 1, med(j["rss_before"] for j in js) / MIB, med(j["hwm"] for j in js) / MIB,
                med(j["rss_at_response"] for j in js) / MIB,
                med(j["rss_1s"] for j in js) / MIB, med(j["rss_5s"] for j in js) / MIB,
                med(ratio), min(ratio), max(ratio), med(cpu), min(cpu), max(cpu),
                "%.2fx" % (med(cpu) / base_cpu[i])))


if __name__ == "__main__":
    main()
