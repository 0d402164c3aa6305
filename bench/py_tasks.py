"""Python tasks in one process, with a trim after each task or without.

Runs `--tasks` tasks (40) one after the other; each builds 20..50 MiB of
Python objects and drops them (bench/py_work.py, the same work as the Celery
benchmark's tasks). Meant for PYTHONMALLOC=malloc (bench/run sets it), where
every Python object comes from the allocator. After each task:
    --trim none         nothing
    --trim malloc_trim  glibc's malloc_trim(0) through ctypes, as users write it
                        (ctypes.CDLL("libc.so.6").malloc_trim)
    --trim trimalloc    trimalloc.trim() from the Python package (on PYTHONPATH)
A thread reads RSS from /proc/self/statm every 10 ms while the tasks run (the
mean of those samples is the figure "mean RSS"). Then gc.collect (and the trim),
and `--idle-ms` (2000) of sleep.
    python3 py_tasks.py [--tasks N] [--trim none|malloc_trim|trimalloc] [--idle-ms MS]
Reports RSS (bytes): baseline, mean over the tasks, peak (VmHWM), end (after
the tasks, the collection and the trim), idle (after the sleep); wall time, CPU
time and minor faults of the task loop."""
import ctypes
import gc
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import alloc  # noqa: E402
import py_work  # noqa: E402

TASKS = alloc.opt("--tasks", 40)
IDLE_MS = alloc.opt("--idle-ms", 2000)
TRIM = sys.argv[sys.argv.index("--trim") + 1] if "--trim" in sys.argv else "none"
PAGE = os.sysconf("SC_PAGESIZE")


def trim_function():
    if TRIM == "none":
        return "none", None
    if TRIM == "malloc_trim":
        f = ctypes.CDLL("libc.so.6").malloc_trim
        f.restype, f.argtypes = ctypes.c_int, [ctypes.c_size_t]
        return "ctypes libc.so.6 malloc_trim(0)", lambda: f(0)
    if TRIM == "trimalloc":
        import trimalloc
        return "trimalloc.trim() (backend %s)" % trimalloc.backend(), trimalloc.trim
    raise SystemExit("py_tasks.py: unknown --trim %r" % TRIM)


class Sampler(threading.Thread):
    def __init__(self, every_s):
        super().__init__(daemon=True)
        self.every_s, self.samples, self.stop = every_s, [], threading.Event()
        self.fd = os.open("/proc/self/statm", os.O_RDONLY)

    def rss(self):
        return int(os.pread(self.fd, 128, 0).split()[1]) * PAGE

    def run(self):
        while not self.stop.wait(self.every_s):
            self.samples.append(self.rss())


def vm_hwm():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def main():
    trim_name, trim = trim_function()
    gc.collect()
    baseline = alloc.rss()
    sampler = Sampler(0.01)
    f0, c0, t0 = alloc.minflt(), time.process_time(), time.perf_counter()
    sampler.start()
    check = 0
    for i in range(TASKS):
        check += py_work.build(py_work.task_mib(i), i)
        if trim is not None:
            trim()
    sampler.stop.set()
    sampler.join()
    gc.collect()
    if trim is not None:
        trim()
    t1, c1, f1 = time.perf_counter(), time.process_time(), alloc.minflt()
    end = sampler.rss()
    time.sleep(IDLE_MS / 1000.0)
    idle = sampler.rss()
    samples = sampler.samples or [end]
    alloc.report("py-tasks", trim_fn=trim_name, tasks=TASKS, check=check, baseline=baseline,
                 rss_mean=sum(samples) / len(samples), samples=len(samples), peak=vm_hwm(),
                 rss_end=end, rss_idle=idle, idle_ms=IDLE_MS,
                 wall_work_s=t1 - t0, cpu_work_s=c1 - c0, minflt_work=f1 - f0)


main()
