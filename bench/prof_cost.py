#!/usr/bin/python3
"""What the heap profiler costs: a workload under the preloaded trimalloc with
sampling off and on at several intervals, rounds interleaved (off, 128K,
512K, 2M, off, ...), each run's CPU time and peak RSS from its BENCH line
and the samples it took from the core's stats at exit (TRIMALLOC_SHOW_STATS:
prof_sampled). Prints, per setting, the median CPU and peak RSS and their
ratios to off, samples per CPU second, and ns per sample ((CPU on - CPU off)
/ samples, from the medians: noisy when the difference is small).

    bench/prof_cost.py [--rounds N] [--lib PATH] [--intervals 131072,524288,2097152] \\
        [--env K=V ...] -- CMD ARGS...

The workload prints one `BENCH {json}` line (bench/alloc.py, bench/alloc.rb)
with cpu_work_s or loop_s (CPU time of the measured part, or wall time when
that is all there is: ruby_churn.rb's loop_s) and peak (VmHWM bytes) when it
has them."""
import json
import os
import re
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def parse(argv):
    rounds, lib, env = 5, os.path.join(HERE, "..", "core", "build", "libtrimalloc.so"), {}
    intervals = [131072, 524288, 2097152]
    cut = argv.index("--")
    opts, cmd = argv[:cut], argv[cut + 1:]
    i = 0
    while i < len(opts):
        o, v = opts[i], opts[i + 1]
        if o == "--rounds":
            rounds = int(v)
        elif o == "--lib":
            lib = v
        elif o == "--intervals":
            intervals = [int(x) for x in v.split(",")]
        elif o == "--env":
            k, val = v.split("=", 1)
            env[k] = val
        else:
            raise SystemExit("prof_cost.py: unknown option %r" % o)
        i += 2
    return rounds, os.path.abspath(lib), intervals, env, cmd


def run_once(lib, interval, env, cmd):
    e = dict(os.environ, LD_PRELOAD=lib, TRIMALLOC_SHOW_STATS="1", **env)
    if interval:
        e.update(TRIMALLOC_PROF="1", TRIMALLOC_PROF_INTERVAL=str(interval))
    else:
        e.pop("TRIMALLOC_PROF", None)
    t0 = os.times()
    p = subprocess.run(cmd, env=e, capture_output=True, text=True)
    t1 = os.times()
    if p.returncode != 0:
        raise SystemExit("failed (%d): %s\n%s" % (p.returncode, " ".join(cmd), p.stderr[-2000:]))
    bench = [json.loads(l[6:]) for l in p.stdout.splitlines() if l.startswith("BENCH ")]
    stats = [json.loads(m.group(1)) for m in re.finditer(r"trimalloc: stats (\{.*\})", p.stderr)]
    b = bench[-1] if bench else {}
    cpu = b.get("cpu_work_s")
    if cpu is None:  # the whole child's CPU time
        cpu = (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system)
    peak = b.get("peak") or 0
    sampled = max((s.get("prof_sampled", 0) for s in stats), default=0)
    return cpu, peak, sampled


def main():
    rounds, lib, intervals, env, cmd = parse(sys.argv[1:])
    settings = [0] + intervals
    res = {s: [] for s in settings}
    for r in range(rounds):
        for s in settings:
            res[s].append(run_once(lib, s, env, cmd))
    print("command: %s%s" % (" ".join("%s=%s" % kv for kv in env.items()) + (" " if env else ""), " ".join(cmd)))
    print("library: %s; %d rounds, interleaved; medians" % (lib, rounds))
    print("%-9s %9s %7s %12s %7s %10s %10s %9s" % ("interval", "CPU (s)", "ratio", "peak RSS MB", "ratio",
                                                  "samples", "samples/s", "ns/sample"))
    cpu0 = statistics.median(x[0] for x in res[0])
    peak0 = statistics.median(x[1] for x in res[0])
    for s in settings:
        cpu = statistics.median(x[0] for x in res[s])
        peak = statistics.median(x[1] for x in res[s])
        n = statistics.median(x[2] for x in res[s])
        per = (cpu - cpu0) / n * 1e9 if s and n else float("nan")
        print("%-9s %9.3f %7.4f %12.1f %7.4f %10d %10.0f %9.0f" % (
            "off" if not s else "%dK" % (s // 1024), cpu, cpu / cpu0, peak / 1e6, peak / peak0 if peak0 else 0,
            n, n / cpu if cpu else 0, per))
    print("all runs (cpu s, peak bytes, samples):")
    for s in settings:
        print("  %-6s %s" % ("off" if not s else "%dK" % (s // 1024), res[s]))


main()
