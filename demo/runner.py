"""trimalloc's demo: three situations trimalloc exists for, each run under several
allocators side by side, sampled from /proc, shown as tables and a chart.

Run by script/demo (which installs the gem and the Python package first):
    python runner.py --gem-home DIR --venv DIR [--out demo-report] [--quick] [--check]

For each configuration of each scenario the demo starts the program in a
session of its own, samples the RSS of its process tree every `interval`
seconds, drives the work (the Celery tasks and the web requests come from this
process, outside the measured tree), keeps the process alive and idle for
`idle` seconds once the work is done, then stops it. Figures:
    peak  the highest RSS sampled
    avg   the mean of the samples, from start to stop (the idle tail included)
    end   the RSS after the idle tail, just before the process is stopped
    live  the floor: the bytes the program's live data holds at the end
    wall  seconds from the start of the process to the end of the work
"""
import argparse
import datetime
import json
import os
import platform
import queue
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

import sampler  # noqa: E402
from sampler import MIB, Process  # noqa: E402

RUBY = "/usr/bin/ruby"
SCRUB_PREFIXES = ("LD_PRELOAD", "MALLOC_", "PYTHONMALLOC", "TRIMALLOC_", "MIMALLOC_", "JE_MALLOC_CONF",
                  "GLIBC_TUNABLES", "RUBY_GC_", "RUBYOPT", "RUBYLIB", "PYTHONPATH", "PYTHONHOME",
                  "PYTHONSTARTUP", "PYTHONDEVMODE", "PYTHONTRACEMALLOC", "GEM_")
SCRUB_EXACT = ("MALLOC_CONF",)


class Interrupted(BaseException):
    pass


def on_signal(signum, frame):
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(s, signal.SIG_IGN)  # the cleanup must not be interrupted
    raise Interrupted(signum)


def jemalloc_path():
    """libjemalloc.so.2 from Debian's libjemalloc2, found through the package."""
    try:
        out = subprocess.run(["dpkg-query", "-L", "libjemalloc2"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if os.path.basename(line) == "libjemalloc.so.2" and os.path.exists(line):
                return line
    except OSError:
        pass
    import sysconfig
    arch = sysconfig.get_config_var("MULTIARCH") or ""
    for d in ("/usr/lib/" + arch, "/usr/lib", "/lib/" + arch):
        p = os.path.join(d, "libjemalloc.so.2")
        if os.path.exists(p):
            return p
    raise SystemExit("demo: libjemalloc.so.2 not found (apt-get install libjemalloc2)")


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Settings:
    def __init__(self, args):
        self.quick = args.quick
        self.out = os.path.abspath(args.out)
        self.logs = os.path.join(self.out, "logs")
        self.gem_home = os.path.abspath(args.gem_home)
        self.venv = os.path.abspath(args.venv)
        self.python = os.path.join(self.venv, "bin", "python")
        self.py_trimalloc = os.path.join(self.venv, "bin", "trimalloc")
        self.rb_trimalloc = os.path.join(self.gem_home, "bin", "trimalloc")
        self.jemalloc = jemalloc_path()
        self.interval = 0.05 if self.quick else 0.1
        self.idle = args.idle if args.idle is not None else (0.5 if self.quick else 5.0)
        # Workload sizes: the full run is what the README shows; --quick is a smoke run.
        self.ruby_threads = 8
        self.ruby_iters = 2_500 if self.quick else 40_000
        self.ruby_keep = 1_000
        self.celery_tasks = 10 if self.quick else 200
        self.celery_mb = (10, 40)
        self.celery_recycle = 20
        self.web_requests = 600 if self.quick else 12_000
        self.web_job_rows = 20_000 if self.quick else 100_000

    def env(self, **extra):
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(SCRUB_PREFIXES) and k not in SCRUB_EXACT}
        env["GEM_HOME"] = self.gem_home
        env["GEM_PATH"] = self.gem_home
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env.update({k: str(v) for k, v in extra.items()})
        return env


class Config:
    """One way to run a scenario: how the command is launched, with what env."""

    def __init__(self, key, label, allocator, how, launcher=None, env=None, args=(), color="k",
                 style="-"):
        self.key, self.label, self.allocator, self.how = key, label, allocator, how
        self.launcher = launcher  # None, "ruby-gem" or "python-venv"
        self.env = env or {}
        self.args = list(args)
        self.color, self.style = color, style

    def argv(self, s, cmd):
        if self.launcher == "ruby-gem":
            return [s.rb_trimalloc, "run", "--"] + cmd
        if self.launcher == "python-venv":
            return [s.py_trimalloc, "run", "--"] + cmd
        return cmd

    def environ(self, s, **extra):
        env = dict(self.env)
        if env.get("LD_PRELOAD") == "jemalloc":
            env["LD_PRELOAD"] = s.jemalloc
        env.update(extra)
        return s.env(**env)


class Result:
    def __init__(self, scenario, config):
        self.scenario, self.config = scenario, config
        self.samples = []
        self.exit_code = None
        self.error = None
        self.wall = None
        self.done_at = None
        self.floor = None
        self.floor_parts = None
        self.allocators = {}
        self.info = {}

    @property
    def rss(self):
        return [r for _, r, _ in self.samples]

    def figure(self, name):
        rss = self.rss
        if not rss:
            return None
        if name == "peak":
            return max(rss)
        if name == "avg":
            return sum(rss) / len(rss)
        if name == "end":
            return rss[-1]
        if name == "floor":
            return self.floor
        if name == "wall":
            return self.wall
        raise KeyError(name)

    def problems(self):
        p = []
        if self.error:
            p.append(self.error)
        if not self.samples:
            p.append("no RSS samples")
        if self.exit_code != 0:
            p.append("exit status %s" % self.exit_code)
        if self.floor is None:
            p.append("no floor reported")
        want = self.config.allocator
        for pid, found in sorted(self.allocators.items()):
            others = found - {want}
            if (want != "glibc" and want not in found) or others:
                p.append("pid %d runs on %s, not %s" % (pid, "+".join(sorted(found)) or "glibc", want))
        return p

    def ok(self):
        return not self.problems()

    def as_json(self):
        return {
            "scenario": self.scenario.key, "config": self.config.key, "label": self.config.label,
            "allocator": self.config.allocator, "exit_code": self.exit_code, "error": self.error,
            "wall_s": self.wall, "done_at_s": self.done_at, "floor_bytes": self.floor,
            "floor_parts": self.floor_parts,
            "allocators": {str(k): sorted(v) for k, v in self.allocators.items()},
            "peak_bytes": self.figure("peak"), "avg_bytes": self.figure("avg"),
            "end_bytes": self.figure("end"), "info": self.info,
            "samples": [[round(t, 3), r, n] for t, r, n in self.samples],
        }


# -- running one configuration -----------------------------------------------------

class LineReader:
    """Reads a process's stdout lines on a thread; wait_for(prefix) returns the rest."""

    def __init__(self, stream, log_path):
        self.q = queue.Queue()
        self.log_path = log_path

        def loop():
            with open(log_path, "a") as log:
                for raw in iter(stream.readline, b""):
                    line = raw.decode(errors="replace").rstrip("\n")
                    log.write(line + "\n")
                    log.flush()
                    self.q.put(line)
            self.q.put(None)

        threading.Thread(target=loop, daemon=True).start()

    def wait_for(self, prefix, timeout):
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError("timed out waiting for %r" % prefix)
            try:
                line = self.q.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            if line is None:
                raise RuntimeError("the program ended before printing %r" % prefix)
            if line.startswith(prefix):
                return line[len(prefix):].strip()


def check_allocators(res, members):
    for pid in members:
        res.allocators[pid] = sampler.mapped_allocators(pid)


def idle_tail(s, proc):
    """Keep the process alive and idle; the last sample is the "end" figure."""
    time.sleep(s.idle)
    proc.stop_sampling()  # nothing sampled while the process is being stopped
    return proc.sample()


def run_ruby(s, scen, cfg, res, log):
    cmd = [RUBY, os.path.join(HERE, "ruby_threads.rb"), "--iters", str(s.ruby_iters),
           "--threads", str(s.ruby_threads), "--keep", str(s.ruby_keep)] + cfg.args
    proc = Process(scen.key + "-" + cfg.key, cfg.argv(s, cmd), cfg.environ(s), cwd=HERE, log_path=log,
                   stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        proc.start_sampling(s.interval)
        reader = LineReader(proc.popen.stdout, log)
        done = json.loads(reader.wait_for("demo-done ", 600))
        res.done_at = res.wall = time.monotonic() - proc.t0
        check_allocators(res, proc.sample())
        res.floor = done["floor"]
        res.info = {k: v for k, v in done.items() if k != "floor"}
        idle_tail(s, proc)
        proc.popen.stdin.close()  # the program exits when its stdin closes
        res.exit_code = proc.wait(60)
    finally:
        proc.stop_sampling()
        res.samples = list(proc.samples)
        if proc.alive():
            proc.stop()
        if res.exit_code is None:
            res.exit_code = proc.wait()


class Redis:
    """A redis-server of our own on 127.0.0.1, a free port, no persistence."""

    def __init__(self, s):
        import redis
        last = None
        for _ in range(5):
            self.port = free_port()
            self.proc = Process("redis", ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                          "--save", "", "--appendonly", "no", "--daemonize", "no",
                                          "--protected-mode", "yes"],
                                s.env(), log_path=os.path.join(s.logs, "redis-server.log"))
            self.client = redis.Redis(host="127.0.0.1", port=self.port)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and self.proc.alive():
                try:
                    self.client.ping()
                    return
                except redis.exceptions.ConnectionError as e:
                    last = e
                    time.sleep(0.05)
            self.proc.stop(grace=3)
        raise RuntimeError("redis-server did not start: %s" % last)

    @property
    def url(self):
        return "redis://127.0.0.1:%d/0" % self.port

    def stop(self):
        self.client.close()
        return self.proc.stop(grace=5)


def send_tasks(s, app_module, proc):
    """Send the tasks, wait for every result; returns (sizes in MB, records built)."""
    import random
    rng = random.Random(2024)
    sizes = [rng.randint(*s.celery_mb) for _ in range(s.celery_tasks)]
    pending = [app_module.build_report.delay(n, 1000 + n, mb) for n, mb in enumerate(sizes)]
    records = 0
    try:
        for r in pending:
            if not proc.alive():
                raise RuntimeError("the worker exited (status %s)" % proc.popen.poll())
            records += r.get(timeout=300)["records"]
    finally:
        # Let go of the results while redis-server still runs (AsyncResult.__del__
        # talks to the result backend).
        del pending[:]
        r = None
        import gc
        gc.collect()
    return sizes, records


def run_celery(s, scen, cfg, res, log, ctx):
    redis_server, app_module = ctx["redis"], ctx["app"]
    redis_server.client.flushall()
    floor_dir = tempfile.mkdtemp(prefix="floor-", dir=ctx["tmp"])
    cmd = [s.python, "-m", "celery", "-A", "celery_worker", "worker", "--pool", "prefork",
           "--concurrency", "2", "--loglevel", "WARNING", "--without-gossip", "--without-mingle",
           "--without-heartbeat", "--hostname", "demo-%s@127.0.0.1" % cfg.key] + cfg.args
    env = cfg.environ(s, DEMO_BROKER=redis_server.url, DEMO_FLOOR_DIR=floor_dir)
    proc = Process(scen.key + "-" + cfg.key, cfg.argv(s, cmd), env, cwd=HERE, log_path=log)
    try:
        proc.start_sampling(s.interval)
        sizes, records = send_tasks(s, app_module, proc)
        res.done_at = res.wall = time.monotonic() - proc.t0
        check_allocators(res, proc.sample())
        res.info = {"tasks": len(sizes), "transient_mb_total": sum(sizes), "records": records}
        idle_tail(s, proc)
        end_members = set(proc.last_members)
        res.exit_code = proc.stop(signal.SIGTERM, grace=30)  # warm shutdown
        parts = {}
        for name in os.listdir(floor_dir):
            with open(os.path.join(floor_dir, name)) as f:
                d = json.load(f)
            if d["pid"] in end_members:
                parts[d["pid"]] = d
        missing = end_members - set(parts)
        if missing:
            res.error = "no floor from worker process(es) %s" % sorted(missing)
        else:
            res.floor = sum(d["floor"] for d in parts.values())
            res.floor_parts = {"%s %d" % (d["role"], pid): d["floor"] for pid, d in sorted(parts.items())}
    finally:
        proc.stop_sampling()
        res.samples = list(proc.samples)
        if proc.alive():
            proc.stop()
        if res.exit_code is None:
            res.exit_code = proc.wait()


def run_web(s, scen, cfg, res, log, ctx):
    import web_service
    port = free_port()
    floor_dir = tempfile.mkdtemp(prefix="floor-", dir=ctx["tmp"])
    cmd = [s.python, "-m", "gunicorn", "-c", os.path.join(HERE, "gunicorn.conf.py"),
           "-k", "aiohttp.GunicornWebWorker", "web_service:make_app()"] + cfg.args
    env = cfg.environ(s, DEMO_PORT=port, DEMO_JOB_ROWS=s.web_job_rows, DEMO_FLOOR_DIR=floor_dir)
    proc = Process(scen.key + "-" + cfg.key, cfg.argv(s, cmd), env, cwd=HERE, log_path=log)
    try:
        proc.start_sampling(s.interval)
        wait_listening(port, proc, 60)
        jobs = web_service.client(port, s.web_requests)
        res.done_at = res.wall = time.monotonic() - proc.t0
        check_allocators(res, proc.sample())
        res.info = {"requests": s.web_requests, "rows_a_side": s.web_job_rows, "jobs": jobs}
        idle_tail(s, proc)
        end_members = set(proc.last_members)
        res.exit_code = proc.stop(signal.SIGTERM, grace=30)
        parts = {}
        for name in os.listdir(floor_dir):
            with open(os.path.join(floor_dir, name)) as f:
                d = json.load(f)
            if d["pid"] in end_members:
                parts[d["pid"]] = d
        missing = end_members - set(parts)
        if missing:
            res.error = "no floor from process(es) %s" % sorted(missing)
        else:
            res.floor = sum(d["floor"] for d in parts.values())
            res.floor_parts = {"%s %d" % (d["role"], pid): d["floor"] for pid, d in sorted(parts.items())}
    finally:
        proc.stop_sampling()
        res.samples = list(proc.samples)
        if proc.alive():
            proc.stop()
        if res.exit_code is None:
            res.exit_code = proc.wait()


def wait_listening(port, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError("the server exited (status %s)" % proc.popen.poll())
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("nothing listens on port %d after %d s" % (port, timeout))


# -- the scenarios -----------------------------------------------------------------

class Scenario:
    def __init__(self, key, title, short, describe, floor_what, configs, run, extra=None):
        self.key, self.title, self.short = key, title, short
        self.describe, self.floor_what = describe, floor_what
        self.configs, self.run = configs, run
        self.extra = extra  # results -> lines of markdown after the table, or None


def job_worker_lines(results):
    """The web scenario: each job's worker, before the job and 1 s after its response."""
    out = ["The job's worker (RSS from /proc; job CPU: the CPU the job's own code used, in its "
           "handler):", "", "| configuration | job | before | at the response | 1 s later | "
           "1 s later / before | job CPU |", "|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for i, j in enumerate(r.info.get("jobs") or [], 1):
            if j.get("rss_1s") is None:
                continue
            out.append("| %s | %d | %.0f MiB | %.0f MiB | %.0f MiB | %.2fx | %.2f s |" % (
                r.config.label, i, j["rss_before"] / MIB, j["rss_at_response"] / MIB,
                j["rss_1s"] / MIB, j["rss_1s"] / j["rss_before"], j["job_cpu"]))
    return out


def scenarios(s):
    return [
        Scenario(
            "ruby", "1. Ruby: threads and strings", "Ruby threads + strings",
            lambda: ("%d Ruby threads each keep a working set of %d strings of random sizes "
                     "(log-uniform 32 B..32 KiB) and churn %d more (one in eight replaces a "
                     "kept one); then GC.start and %.0f s idle with the working set alive. "
                     "`demo/ruby_threads.rb`, Ruby's own GC settings. (Ruby 3.1 keeps an exited "
                     "thread's native thread for 3 s, for reuse: allocators that cache per thread "
                     "let go of those caches only then, which the idle tail covers.)"
                     % (s.ruby_threads, s.ruby_keep, s.ruby_iters, s.idle)),
            "`ObjectSpace.memsize_of_all` after `GC.start` at the end of the work (every live "
            "Ruby object, its malloc'd body included; the strings kept are most of it)",
            [
                Config("glibc", "glibc", "glibc", "plain `ruby`", color="#222222"),
                Config("arena2", "glibc, MALLOC_ARENA_MAX=2", "glibc", "`MALLOC_ARENA_MAX=2 ruby`",
                       env={"MALLOC_ARENA_MAX": "2"}, color="#1f77b4", style="--"),
                Config("glibc-gc", "glibc + Trimalloc::GC.enable", "glibc",
                       "`Trimalloc::GC.enable` on glibc (malloc_trim after major GCs)",
                       args=["--gc-trim"], color="#17becf", style="-."),
                Config("jemalloc", "jemalloc", "jemalloc", "`LD_PRELOAD=libjemalloc.so.2`",
                       env={"LD_PRELOAD": "jemalloc"}, color="#9467bd"),
                Config("trimalloc", "trimalloc (trimalloc run)", "trimalloc",
                       "`trimalloc run -- ruby ...` (the gem's launcher)", launcher="ruby-gem",
                       color="#7fc97f", style="--"),
                Config("trimalloc-gc", "trimalloc + Trimalloc::GC.enable", "trimalloc",
                       "`trimalloc run` and `Trimalloc::GC.enable`", launcher="ruby-gem",
                       args=["--gc-trim"], color="#1a7f1a"),
            ],
            run_ruby,
        ),
        Scenario(
            "celery", "2. Celery worker (prefork, 2 processes)", "Celery worker",
            lambda: ("A real Celery %s worker (prefork pool, concurrency 2) and a real "
                     "redis-server broker on 127.0.0.1; %d tasks, each building a transient "
                     "list of dicts of %d..%d MB, aggregating it and returning a small result; "
                     "then %.0f s idle. RSS is the sum over the worker's processes (main + pool). "
                     "`demo/celery_worker.py`."
                     % (celery_version(), s.celery_tasks, s.celery_mb[0], s.celery_mb[1], s.idle)),
            "estimated bytes of live Python objects (`demo/live_bytes.py`: sys.getsizeof over "
            "the objects the GC tracks and the ones they refer to), summed over the worker's "
            "processes, measured as each one shuts down",
            [
                Config("glibc", "glibc", "glibc", "plain `celery worker`", color="#222222"),
                Config("recycle", "glibc, max_tasks_per_child=%d" % s.celery_recycle, "glibc",
                       "`--max-tasks-per-child %d` (Celery's workaround: recycle pool processes)"
                       % s.celery_recycle,
                       args=["--max-tasks-per-child", str(s.celery_recycle)], color="#ff7f0e",
                       style="--"),
                Config("glibc-trim", "glibc + trimalloc.celery (malloc_trim)", "glibc",
                       "`trimalloc.celery.install(app, min_interval=0)` without the launcher: "
                       "malloc_trim(0) after every task",
                       env={"DEMO_CELERY_TRIM": "1"}, color="#17becf", style="-."),
                Config("jemalloc", "jemalloc", "jemalloc", "`LD_PRELOAD=libjemalloc.so.2`",
                       env={"LD_PRELOAD": "jemalloc"}, color="#9467bd"),
                Config("trimalloc", "trimalloc (trimalloc run)", "trimalloc",
                       "`trimalloc run -- python3 -m celery ...` (PYTHONMALLOC=malloc, the launcher's default)",
                       launcher="python-venv", color="#7fc97f", style="--"),
                Config("trimalloc-celery", "trimalloc + trimalloc.celery", "trimalloc",
                       "`trimalloc run` and `trimalloc.celery.install(app, min_interval=0)`",
                       launcher="python-venv", env={"DEMO_CELERY_TRIM": "1"}, color="#1a7f1a"),
            ],
            None,  # run_celery, with the redis-server context
        ),
        Scenario(
            "web", "3. aiohttp service under gunicorn with an hourly job", "aiohttp + hourly job",
            lambda: ("An aiohttp service under gunicorn (`-k aiohttp.GunicornWebWorker`, 2 workers; "
                     "`demo/gunicorn.conf.py`), each worker with a catalogue of 20,000 items and a "
                     "cache of the last 20,000 sessions, serves %d small requests from a client "
                     "loop (2 threads); after 20%% and 60%% of them one request runs the \"hourly "
                     "job\" in whichever worker accepts it: a sync of two databases, %d rows a "
                     "side loaded from CSV exports into dicts, compared and dropped. Then %.0f s "
                     "idle. RSS is the sum over gunicorn's processes (master + workers). "
                     "`demo/web_service.py`." % (s.web_requests, s.web_job_rows, s.idle)),
            "estimated bytes of live Python objects (`demo/live_bytes.py`), summed over "
            "gunicorn's processes, measured as each one stops",
            [
                Config("glibc", "glibc", "glibc", "plain `gunicorn`", color="#222222"),
                Config("jemalloc", "jemalloc", "jemalloc", "`LD_PRELOAD=libjemalloc.so.2`",
                       env={"LD_PRELOAD": "jemalloc"}, color="#9467bd"),
                Config("trimalloc-gunicorn", "trimalloc + the README's gunicorn config", "trimalloc",
                       "`trimalloc run -- gunicorn ...` (PYTHONMALLOC=malloc) and "
                       "`from trimalloc.gunicorn import post_request, post_worker_init` in "
                       "gunicorn.conf.py", launcher="python-venv", env={"DEMO_TRIM": "1"},
                       color="#1a7f1a"),
            ],
            run_web,
            job_worker_lines,
        ),
    ]


def celery_version():
    try:
        import celery
        return celery.__version__
    except ImportError:
        return "?"


# -- machine and versions --------------------------------------------------------------

def sh(*cmd):
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
        return (out.stdout or out.stderr).strip()
    except (OSError, subprocess.TimeoutExpired) as e:
        return "unavailable (%s)" % e


def deb(pkg):
    v = sh("dpkg-query", "-W", "-f", "${Version}", pkg)
    return v if v and "no packages" not in v else "not installed"


def machine_and_versions(s):
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = "%.1f GiB" % (int(line.split()[1]) / 1024.0 / 1024.0)
    debian = open("/etc/debian_version").read().strip() if os.path.exists("/etc/debian_version") else "?"
    import matplotlib
    machine = [
        ("cores (nproc)", sh("nproc")),
        ("CPU", cpu),
        ("memory", mem),
        ("kernel", platform.release()),
        ("OS", "Debian %s" % debian),
        ("date", datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")),
    ]
    versions = [
        ("glibc (libc6)", deb("libc6")),
        ("jemalloc (libjemalloc2)", "%s, %s" % (deb("libjemalloc2"), s.jemalloc)),
        ("mimalloc (libmimalloc2.0)", "%s (installed, not in these scenarios)" % deb("libmimalloc2.0")),
        ("trimalloc gem", sh(s.rb_trimalloc, "--version")),
        ("trimalloc Python package", sh(s.py_trimalloc, "--version")),
        ("ruby", sh(RUBY, "--version")),
        ("python", "%s (%s)" % (platform.python_version(), sys.executable)),
        ("celery (python3-celery)", "%s (Debian %s)" % (celery_version(), deb("python3-celery"))),
        ("redis-py (python3-redis)", deb("python3-redis")),
        ("redis-server", deb("redis-server")),
        ("aiohttp (python3-aiohttp)", deb("python3-aiohttp")),
        ("gunicorn", deb("gunicorn")),
        ("matplotlib", matplotlib.__version__),
    ]
    return machine, versions


# -- tables ------------------------------------------------------------------------

FIGURES = [("peak", "peak RSS"), ("avg", "avg RSS"), ("end", "end RSS"), ("floor", "live (floor)"),
           ("wall", "wall")]


def fmt_cell(res, name, base):
    v = res.figure(name) if res.samples else None
    if v is None:
        return "-"
    text = "%.1f s" % v if name == "wall" else "%.0f MiB" % (v / MIB)
    b = base.figure(name) if (base is not None and base.samples) else None
    if name != "floor" and b:
        text += " (%.2fx)" % (v / b)
    return text


def table_rows(results):
    base = results[0] if results and results[0].config.key == "glibc" and results[0].ok() else None
    header = ["configuration"] + [h for _, h in FIGURES] + ["status"]
    rows = []
    for r in results:
        status = "ok" if r.ok() else "FAILED: " + "; ".join(r.problems())
        rows.append([r.config.label] + [fmt_cell(r, n, base) for n, _ in FIGURES] + [status])
    return header, rows


def text_table(results):
    header, rows = table_rows(results)
    widths = [max(len(x[i]) for x in [header] + rows) for i in range(len(header) - 1)]
    lines = []
    for row in [header] + rows:
        cells = [row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:-1], widths[1:])]
        lines.append("  ".join(cells) + "  " + row[-1])
    return "\n".join(lines)


def md_table(results):
    header, rows = table_rows(results)
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 2) + ["---"]) + "|"]
    for row in rows:
        out.append("| " + " | ".join(row) + " |")
    return "\n".join(out)


def verdict(scen, results):
    """Plain facts: where trimalloc's best configuration stands against the others."""
    ok = [r for r in results if r.ok()]
    tri = [r for r in ok if r.config.allocator == "trimalloc"]
    other = [r for r in ok if r.config.allocator != "trimalloc"]
    if not tri or not other:
        return "not enough configurations ran to compare."
    lines = []
    for name, what in (("end", "end RSS"), ("avg", "average RSS"), ("peak", "peak RSS"), ("wall", "wall time")):
        bt = min(tri, key=lambda r: r.figure(name))
        bo = min(other, key=lambda r: r.figure(name))
        unit = (lambda v: "%.1f s" % v) if name == "wall" else (lambda v: "%.0f MiB" % (v / MIB))
        won = bt.figure(name) <= bo.figure(name)
        lines.append("- %s: %s — trimalloc's best, %s, %s; the best other, %s, %s." % (
            what, "trimalloc wins" if won else "**trimalloc loses**",
            bt.config.label, unit(bt.figure(name)), bo.config.label, unit(bo.figure(name))))
    return "\n".join(lines)


# -- report and chart ------------------------------------------------------------------

def write_report(s, scens, all_results, machine, versions, command, chart_ok):
    L = ["# trimalloc demo report", ""]
    L.append("Command: `%s`%s. Every figure below was measured in this run." % (
        command, " (a short smoke run: its numbers are not the ones to quote)" if s.quick else ""))
    L.append("")
    L.append("Figures: **peak** = highest RSS sampled; **avg** = mean of the samples from start "
             "to stop (idle tail included); **end** = RSS after the work and %.0f s idle, just "
             "before the process is stopped; **live (floor)** = the bytes the program's live data "
             "holds at the end, which no allocator can go below (defined per scenario); **wall** = "
             "seconds from the process start to the end of the work. RSS is sampled from /proc "
             "every %.2f s and summed over the process tree. In brackets: the ratio to glibc "
             "(lower is better)." % (s.idle, s.interval))
    L += ["", "## Machine", ""] + ["- %s: %s" % kv for kv in machine]
    L += ["", "## Versions", ""] + ["- %s: %s" % kv for kv in versions]
    for scen in scens:
        results = all_results.get(scen.key, [])
        L += ["", "## " + scen.title, "", scen.describe(), "", md_table(results), ""]
        L.append("Floor: " + scen.floor_what + ".")
        L += ["", "Configurations:", ""]
        for c in scen.configs:
            L.append("- %s: %s" % (c.label, c.how))
        if scen.extra is not None:
            L += [""] + scen.extra(results)
        L += ["", "Where trimalloc stands:", "", verdict(scen, results)]
    L += ["", "## RSS over time", ""]
    L.append("![RSS over time, one panel per scenario](rss.png)" if chart_ok else "(the chart could not be drawn)")
    L.append("")
    with open(os.path.join(s.out, "report.md"), "w") as f:
        f.write("\n".join(L))


def draw_chart(s, scens, all_results):
    import chart
    panels = []
    for scen in scens:
        lines = []
        results = all_results.get(scen.key, [])
        for r in results:
            if r.samples:
                lines.append({"label": r.config.label, "color": r.config.color, "style": r.config.style,
                              "t": [t for t, _, _ in r.samples], "mib": [x / MIB for x in r.rss],
                              "end": r.figure("end") / MIB, "done_at": r.done_at,
                              "emphasis": r.config.allocator == "trimalloc"})
        base = next((r for r in results if r.config.key == "glibc" and r.floor), None)
        panels.append({"title": scen.title, "lines": lines,
                       "floor": base.floor / MIB if base else None})
    chart.draw(panels, os.path.join(s.out, "rss.png"),
               "trimalloc demo: RSS over time (lower is better)%s" % (" [--quick]" if s.quick else ""))


# -- main ------------------------------------------------------------------------------

def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gem-home", required=True)
    ap.add_argument("--venv", required=True)
    ap.add_argument("--out", default=os.path.join(ROOT, "demo-report"))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--check", action="store_true")
    ap.add_argument("--idle", type=float, default=None,
                    help="seconds each process stays alive and idle after its work (default 5, --quick 0.5)")
    ap.add_argument("--only", default="", help="comma-separated scenarios (ruby,celery,web) or scenario:config (celery:recycle)")
    args = ap.parse_args()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)

    s = Settings(args)
    for p in (os.path.join(s.out, "report.md"), os.path.join(s.out, "rss.png"),
              os.path.join(s.out, "results.json")):
        if os.path.exists(p):
            os.unlink(p)
    shutil.rmtree(s.logs, ignore_errors=True)
    os.makedirs(s.logs, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix="trimalloc-demo-run-")
    scens = scenarios(s)
    if args.only:
        # "ruby,web" keeps whole scenarios; "celery:recycle" one configuration
        keep = args.only.split(",")
        scens = [x for x in scens if x.key in keep or any(k.startswith(x.key + ":") for k in keep)]
        for x in scens:
            if x.key not in keep:
                x.configs = [c for c in x.configs if x.key + ":" + c.key in keep]
    total = sum(len(x.configs) for x in scens)
    all_results = {}
    command = "script/demo" + (" --quick" if s.quick else "") + (" --check" if args.check else "")
    t_start = time.monotonic()
    interrupted = None
    n = 0
    redis_server = None
    try:
        for scen in scens:
            ctx = {"tmp": tmp}
            results = all_results.setdefault(scen.key, [])
            try:
                if scen.key == "celery":
                    redis_server = Redis(s)
                    os.environ["DEMO_BROKER"] = redis_server.url
                    import celery_worker
                    celery_worker.app.conf.broker_url = redis_server.url
                    celery_worker.app.conf.result_backend = redis_server.url
                    ctx.update(redis=redis_server, app=celery_worker)
                for cfg in scen.configs:
                    n += 1
                    res = Result(scen, cfg)
                    results.append(res)
                    log = os.path.join(s.logs, "%s-%s.log" % (scen.key, cfg.key))
                    print("[%2d/%d] %-24s %-40s " % (n, total, scen.short, cfg.label), end="", flush=True)
                    try:
                        if scen.key == "celery":
                            run_celery(s, scen, cfg, res, log, ctx)
                        elif scen.key == "web":
                            run_web(s, scen, cfg, res, log, ctx)
                        else:
                            scen.run(s, scen, cfg, res, log)
                    except Interrupted:
                        raise
                    except Exception as e:
                        res.error = "%s: %s" % (type(e).__name__, e)
                    if res.samples:
                        print("peak %5.0f  end %5.0f  live %5s MiB  %5.1f s  %s" % (
                            res.figure("peak") / MIB, res.figure("end") / MIB,
                            "%.0f" % (res.floor / MIB) if res.floor is not None else "-",
                            res.wall or 0.0, "ok" if res.ok() else "FAILED: " + "; ".join(res.problems())),
                            flush=True)
                    else:
                        print("FAILED: " + "; ".join(res.problems()) + " (log: %s)" % log, flush=True)
            finally:
                if redis_server is not None:
                    redis_server.stop()
                    redis_server = None
    except Interrupted as e:
        interrupted = e.args[0]
        print("\ndemo: interrupted by signal %d, stopping what it started" % interrupted, flush=True)
    finally:
        sampler.stop_all()
        shutil.rmtree(tmp, ignore_errors=True)
    if interrupted:
        return 128 + interrupted

    elapsed = time.monotonic() - t_start
    machine, versions = machine_and_versions(s)
    print()
    for scen in scens:
        print(scen.title)
        print(text_table(all_results[scen.key]))
        if scen.extra is not None:
            print("\n".join(scen.extra(all_results[scen.key])))
        print()
    chart_ok = True
    try:
        draw_chart(s, scens, all_results)
    except Exception as e:
        chart_ok = False
        print("demo: the chart could not be drawn: %s: %s" % (type(e).__name__, e))
    write_report(s, scens, all_results, machine, versions, command, chart_ok)
    with open(os.path.join(s.out, "results.json"), "w") as f:
        json.dump({"command": command, "machine": dict(machine), "versions": dict(versions),
                   "interval_s": s.interval, "idle_s": s.idle, "elapsed_s": elapsed,
                   "results": [r.as_json() for k in all_results for r in all_results[k]]}, f, indent=1)
    started = float(os.environ.get("DEMO_STARTED") or 0)
    print("report: %s, chart: %s (scenarios: %.0f s%s)" % (
        os.path.relpath(os.path.join(s.out, "report.md")), os.path.relpath(os.path.join(s.out, "rss.png")),
        elapsed, ", script/demo in all: %.0f s" % (time.time() - started) if started else ""))

    results = [r for k in all_results for r in all_results[k]]
    passed = sum(1 for r in results if r.ok())
    failed = len(results) - passed
    if args.check:
        missing = [p for p in ("report.md", "rss.png") if not os.path.getsize(os.path.join(s.out, p))] \
            if all(os.path.exists(os.path.join(s.out, p)) for p in ("report.md", "rss.png")) \
            else [p for p in ("report.md", "rss.png") if not os.path.exists(os.path.join(s.out, p))]
        for p in missing:
            print("demo: check: %s is missing or empty" % os.path.join(os.path.relpath(s.out), p))
        for r in results:
            if not r.ok():
                print("demo: check: %s / %s: %s" % (r.scenario.key, r.config.key, "; ".join(r.problems())))
        if total != len(results):
            print("demo: check: %d configurations planned, %d ran" % (total, len(results)))
        print("demo: %d passed, %d failed" % (passed, failed + (total - len(results))))
        return 0 if not failed and not missing and total == len(results) else 1
    return 0 if not failed else 1


if __name__ == "__main__":
    sys.exit(main())
