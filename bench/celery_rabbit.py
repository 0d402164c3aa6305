"""A Celery prefork worker (concurrency 2) on a RabbitMQ broker, running a
stream of thousands of small-to-large tasks whose memory accumulates (the
shape of the seed report "Celery workers and jemalloc"): what do its pool
processes hold while they run them, and once they idle?

This driver runs on glibc itself. It starts a private rabbitmq-server (not the
system service: its own node name, data, log and config in a temp dir, AMQP on
a free loopback port, its own epmd on another free port, no plugins), a worker
on bench/celery_rabbit_app.py with the allocator under test (`-Q` a private
queue, --without-heartbeat --without-gossip --without-mingle,
worker_prefetch_multiplier=1, results through rpc://), waits until the worker
is ready, sends `--tasks` tasks (3000) in a stream with at most 8 in flight,
collects the results, lets the pool idle `--idle-ms` ms (2000), stops the
worker and the server, and prints one BENCH line. Task i builds 0.5-60 MiB of
Python objects (70% 0.5-2 MiB, 25% 5-15, 5% 30-60: 5.4 MiB and some 20 ms of
CPU on average, ~12 ms for a small one, 100-250 ms for a large one), renders
part of them to JSON, drops them, and leaves small objects in a cache of at
most 5,000 entries per pool process (see celery_rabbit_app.py).
    python3 celery_rabbit.py [--tasks N] [--idle-ms MS] [--preload LIB]
                             [--launcher [--launcher-opt X]...] [--pkg DIR]
                             [--trim none|malloc_trim|trimalloc]
                             [--max-tasks-per-child N]
--preload LIB   LD_PRELOAD=LIB for the worker
--launcher      start the worker with `python3 -m trimalloc run [X...] --
                python3 -m celery ...` (the package's launcher: preloads its
                bundled library and sets PYTHONMALLOC=malloc, its default);
                each --launcher-opt X is passed to `trimalloc run`
--trim MODE     what the app does after each task (see celery_rabbit_app.py)
--pkg DIR       put DIR (holding the trimalloc Python package) on the worker's
                PYTHONPATH
--max-tasks-per-child N
                worker_max_tasks_per_child=N (0, the default: off): Celery
                replaces each pool process after N tasks, its own workaround
                for workers that grow
Every 50 ms a sampler thread lists the pool processes (the children of the
worker's main process: with --max-tasks-per-child they come and go), sums
their RSS (/proc/PID/statm), and keeps, for every pool process it has seen
(by pid and start time), the last CPU time (utime + stime) and minor faults
read from its /proc/PID/stat. CPU and minor faults are the sum of those last
values over every pool process that ever existed, less the values before the
first task was sent; a process replaced between two samples loses its last
<50 ms (and one that lived less than 50 ms is missed: "pool_missed" counts
the pids that ran tasks but were never sampled). The warm-up ping sent before
the figures are taken counts as one task of one pool process.
Reports (bytes, the sum over the pool processes alive at the time): baseline
(before the tasks), mean RSS over the 50 ms samples from the first task sent
to the last result, peak (the highest sample; peak_hwm: the highest sum of
the live processes' VmHWM), end (250 ms after the last result), idle
(`--idle-ms` after the last result); wall time from the first task sent to the
last result; CPU time and minor faults of the pool processes (above); task
times as the tasks measured them. "allocator" is what every pool process said
serves its malloc, "pythonmalloc" their PYTHONMALLOC. Beyond celery_run.py's
keys: pool_seen (pool processes sampled), pool_missed, mib_tasks (the tasks'
sizes summed), cache_max (the largest cache a task saw), task_ms_mean / p50 /
p99 / max. If rabbitmq-server cannot be started, a one-line error on stderr
and exit status 2."""
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
IN_FLIGHT = 8  # tasks sent and not yet collected, at most


def arg(name, default=None):
    return sys.argv[sys.argv.index(name) + 1] if name in sys.argv else default


TASKS = int(arg("--tasks", "3000"))
IDLE_MS = int(arg("--idle-ms", "2000"))
PRELOAD = arg("--preload")
LAUNCHER = "--launcher" in sys.argv
LAUNCHER_OPTS = [sys.argv[i + 1] for i, a in enumerate(sys.argv[:-1]) if a == "--launcher-opt"]
TRIM = arg("--trim", "none")
PKG = arg("--pkg")
MAX_TASKS_PER_CHILD = int(arg("--max-tasks-per-child", "0"))


def fail(msg, status=1):
    """One line on stderr, exit status `status` (the finally blocks still
    stop what was started)."""
    sys.stderr.write("celery_rabbit: %s\n" % msg)
    sys.stderr.flush()
    raise SystemExit(status)


def free_ports(n):
    """n distinct free loopback ports (the sockets are held until all are
    chosen, so that the kernel does not hand out one twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def pool_stats(parent):
    """The children of `parent` (the pool processes): {(pid, start time):
    (cpu seconds, minor faults, system cpu seconds)}, from /proc/PID/stat
    (zombies included: their figures are final)."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % d) as f:
                v = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # after ")": state(3) ppid(4) ... minflt(10) utime(14) stime(15)
        # starttime(22), 1-based field numbers
        if int(v[1]) == parent:
            out[(int(d), int(v[19]))] = ((int(v[11]) + int(v[12])) / TICK, int(v[7]), int(v[12]) / TICK)
    return out


def pool_rss(parent):
    return sum(rss_of(pid) for pid, _ in pool_stats(parent))


class Sampler(threading.Thread):
    """Every 50 ms: lists the pool processes, sums their RSS and VmHWM, and
    keeps the last (cpu, minflt) seen of each pool process ever seen."""

    def __init__(self, parent):
        super().__init__(daemon=True)
        self.parent, self.samples, self.halt = parent, [], threading.Event()
        self.last = {}  # (pid, start time) -> (cpu seconds, minor faults, system cpu seconds)
        self.hwm = 0

    def sample(self):
        stats = pool_stats(self.parent)
        self.last.update(stats)
        pids = [pid for pid, _ in stats]
        self.hwm = max(self.hwm, sum(hwm_of(p) for p in pids))
        return sum(rss_of(p) for p in pids)

    def run(self):
        while not self.halt.wait(0.05):
            self.samples.append((time.perf_counter(), self.sample()))


class Rabbit:
    """A private rabbitmq-server: node bench<pid>@localhost, AMQP on a free
    loopback port, Erlang distribution and epmd on two more, everything it
    writes (mnesia, logs, pid file, Erlang cookie) in `tmp`, no plugins."""

    def __init__(self, tmp, env0):
        self.dir = os.path.join(tmp, "rabbit")
        os.makedirs(self.dir)
        self.port, self.dist_port, self.epmd_port = free_ports(3)
        self.url = "amqp://guest:guest@127.0.0.1:%d//" % self.port
        self.log_path = os.path.join(self.dir, "stdout.log")
        self.proc = None

        def path(name, text=None):
            p = os.path.join(self.dir, name)
            if text is not None:
                with open(p, "w") as f:
                    f.write(text)
            return p

        self.env = {k: v for k, v in env0.items() if not k.startswith(("RABBITMQ_", "ERL_"))}
        self.env.update(
            HOME=self.dir,  # the Erlang cookie goes there
            RABBITMQ_NODENAME="bench%d@localhost" % os.getpid(),
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            ERL_EPMD_PORT=str(self.epmd_port),  # a private epmd, killed at the end
            ERL_EPMD_ADDRESS="127.0.0.1",
            # the distribution listener on loopback too
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-kernel inet_dist_use_interface {127,0,0,1}",
            RABBITMQ_MNESIA_BASE=path("mnesia"),
            RABBITMQ_LOG_BASE=path("log"),
            RABBITMQ_PID_FILE=path("rabbit.pid"),
            RABBITMQ_CONF_ENV_FILE=path("rabbitmq-env.conf", ""),  # not /etc/rabbitmq's
            RABBITMQ_CONFIG_FILE=path("rabbitmq.conf", "log.file.level = warning\n"),
            RABBITMQ_ADVANCED_CONFIG_FILE=path("advanced.config"),  # absent
            # no management or prometheus listeners
            RABBITMQ_ENABLED_PLUGINS_FILE=path("enabled_plugins", "[].\n"),
        )

    @staticmethod
    def server_script():
        """/usr/lib/rabbitmq/bin/rabbitmq-server, or the one on PATH (Debian's
        /usr/sbin one is a wrapper that su's to the rabbitmq user and logs to
        /var/log: the script next to the wrapper is taken instead)."""
        found = shutil.which("rabbitmq-server")
        cands = ["/usr/lib/rabbitmq/bin/rabbitmq-server"]
        if found:
            cands.append(os.path.join(os.path.dirname(os.path.realpath(found)), "rabbitmq-server"))
        for c in cands:
            if os.access(c, os.X_OK):
                return c
        return None

    def amqp_up(self):
        import amqp  # py-amqp, kombu's transport
        try:
            conn = amqp.Connection("127.0.0.1:%d" % self.port, userid="guest", password="guest",
                                   connect_timeout=1)
            conn.connect()
            conn.close()
            return True
        except Exception:
            return False

    def start(self, timeout=60):
        script = self.server_script()
        if script is None:
            fail("rabbitmq-server not found (apt-get install rabbitmq-server)", 2)
        with open(self.log_path, "w") as log:
            # its own session: on a stuck stop the whole group is killed
            self.proc = subprocess.Popen([script], env=self.env, cwd=self.dir, stdout=log,
                                         stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        if not wait_until(lambda: self.proc.poll() is not None or self.amqp_up(), timeout, 0.25) \
                or self.proc.poll() is not None:
            with open(self.log_path, errors="replace") as f:
                tail = [ln.strip() for ln in f.read().splitlines() if ln.strip()][-2:]
            state = "exited with status %s" % self.proc.returncode if self.proc.poll() is not None \
                else "accepted no AMQP connection on 127.0.0.1:%d within %d s" % (self.port, timeout)
            fail("rabbitmq-server %s: %s" % (state, " | ".join(tail) or "(no output)"), 2)

    def stop(self, timeout=30.0):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)  # the script stops the node and waits
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(self.proc.pid, signal.SIGKILL)  # our session: the script and beam
                except ProcessLookupError:
                    pass
                self.proc.wait()
        # The epmd erl started on our private port (it detaches from the
        # session, so it is stopped through its port).
        epmd = shutil.which("epmd")
        if self.proc is not None and epmd:
            subprocess.run([epmd, "-port", str(self.epmd_port), "-kill"], env=self.env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10)


def main():
    tmp = tempfile.mkdtemp(prefix="trimalloc-bench-celery-rabbit.")
    env0 = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", "PYTHONMALLOC", "PYTHONPATH")}
    rabbit = worker = None
    try:
        rabbit = Rabbit(tmp, env0)
        rabbit.start()
        queue = "bench%d" % os.getpid()
        env = dict(env0, BENCH_AMQP_URL=rabbit.url, BENCH_QUEUE=queue, BENCH_CELERY_TRIM=TRIM,
                   BENCH_MAX_TASKS_PER_CHILD=str(MAX_TASKS_PER_CHILD),
                   PYTHONPATH=os.pathsep.join([HERE] + ([PKG] if PKG else [])))
        if PRELOAD:
            env["LD_PRELOAD"] = PRELOAD
        try:
            worker = start_worker("celery_rabbit_app", "bench%d@localhost" % os.getpid(), queue, env, tmp,
                                  LAUNCHER, LAUNCHER_OPTS)
        except RuntimeError as e:
            fail(str(e))
        wait_until(lambda: len(pool_stats(worker.pid)) >= 2, 20)

        import celery  # the client, on glibc in this process
        client = celery.Celery("client", broker=rabbit.url, backend="rpc://")
        client.send_task("bench.ping", queue=queue).get(timeout=60)  # connections up
        time.sleep(0.2)
        sampler = Sampler(worker.pid)
        base_rss = sampler.sample()
        s0 = dict(sampler.last)  # the pool before the first task
        pool0 = len(s0)
        sampler.start()
        done = []  # the AsyncResults, in the order their results came back

        def wait_for(n, timeout=300):
            """Processes the reply messages until n results are back. (Not
            AsyncResult.get: it waits for one given task, and in Celery 5.2,
            for a result that came back before get() was called, it waits up
            to 1 s for a further message.)"""
            deadline = time.monotonic() + timeout
            while len(done) < n:
                if time.monotonic() > deadline:
                    fail("%d of %d results back after %d s" % (len(done), n, timeout))
                try:
                    client.backend.result_consumer.drain_events(timeout=1)
                except socket.timeout:
                    pass

        t0 = time.perf_counter()
        for i in range(TASKS):
            wait_for(i - IN_FLIGHT + 1)  # at most IN_FLIGHT - 1 still out
            # then(): registered with the rpc backend now, its result is
            # stored in it as it comes, and done.append is called with it
            client.send_task("bench.work", args=[i], queue=queue).then(done.append)
        wait_for(TASKS)
        t1 = time.perf_counter()
        time.sleep(0.25)
        end = pool_rss(worker.pid)
        time.sleep(max(0.0, IDLE_MS / 1000.0 - 0.25))
        idle = pool_rss(worker.pid)
        sampler.halt.set()
        sampler.join()
        sampler.sample()  # the last CPU and fault figures of the live pool
        got = [r.get(timeout=10) for r in done]  # stored: no waiting (a task's error is raised)
        done.clear()
        gc.collect()  # drop the AsyncResults while the broker still answers
        client.close()

        # pid, allocator, checksum, PYTHONMALLOC, task ms, cache length, MiB
        pids = {g[0] for g in got}
        seen = {pid for pid, _ in sampler.last}
        missed = pids - seen
        if missed and not MAX_TASKS_PER_CHILD:
            fail("tasks ran in processes %s, not in the pool %s" % (sorted(missed), sorted(seen)))
        allocs = sorted({g[1] for g in got})
        ms = sorted(g[4] for g in got) or [0.0]
        work = [v for t, v in sampler.samples if t <= t1] or [end]
        alloc_name = allocs[0] if len(allocs) == 1 else "mixed:" + ",".join(allocs)
        line = {"workload": "celery-rabbit", "allocator": alloc_name, "tasks": TASKS, "trim": TRIM,
                "launcher": LAUNCHER, "pythonmalloc": ",".join(sorted({g[3] for g in got})),
                "broker": "rabbitmq", "max_tasks_per_child": MAX_TASKS_PER_CHILD,
                "check": sum(g[2] for g in got), "pool": pool0, "pool_used": len(pids),
                "pool_seen": len(sampler.last), "pool_missed": len(missed),
                "baseline": base_rss, "rss_mean": sum(work) / len(work),
                "samples": len(work), "peak": max(v for _, v in sampler.samples + [(0, end)]),
                "peak_hwm": sampler.hwm, "rss_end": end, "rss_idle": idle, "idle_ms": IDLE_MS,
                "wall_work_s": t1 - t0,
                "cpu_work_s": sum(v[0] - s0.get(k, (0.0, 0))[0] for k, v in sampler.last.items()),
                "minflt_work": sum(v[1] - s0.get(k, (0.0, 0))[1] for k, v in sampler.last.items()),
                # the kernel's part of cpu_work_s: faults and madvise, mostly
                "cpu_sys_work_s": sum(v[2] - s0.get(k, (0.0, 0, 0.0))[2] for k, v in sampler.last.items()),
                "mib_tasks": sum(g[6] for g in got), "cache_max": max((g[5] for g in got), default=0),
                "task_ms_mean": sum(ms) / len(ms), "task_ms_p50": ms[len(ms) // 2],
                "task_ms_p99": ms[min(len(ms) - 1, len(ms) * 99 // 100)], "task_ms_max": ms[-1]}
        print("BENCH " + json.dumps(line), flush=True)
    finally:
        if worker is not None:
            # The figures are taken: the pool processes are killed (by pid), then
            # the worker is stopped (a warm shutdown takes over a second).
            for pid, _ in pool_stats(worker.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            stop(worker, signal.SIGQUIT)
        if rabbit is not None:
            rabbit.stop()
        shutil.rmtree(tmp, ignore_errors=True)


main()
