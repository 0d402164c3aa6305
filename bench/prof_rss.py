#!/usr/bin/python3
"""What sampling adds to a process's memory, split: configurations run in
interleaved rounds (A B C ..., A B C ..., ...), each run's peak RSS (VmHWM)
and, at that peak, its RssAnon and RssFile (this script reads
/proc/PID/status every --poll-ms while the child runs and keeps the reading
with the highest VmRSS), the same at exit (the workload's `STATUS` line from
bench/status_at_exit.rb / .py), its CPU time (wait4: user + sys of the
whole process; and the BENCH line's cpu_work_s when there is one) and the
core's profiler counters at exit (TRIMALLOC_SHOW_STATS: prof_sampled,
prof_meta_bytes). Prints every run, then medians and the change of each
configuration against the one named by --base.

    bench/prof_rss.py [--rounds N] [--poll-ms MS] --config NAME=SPEC ... [--base NAME=OTHER ...]

SPEC is `ENV ... -- CMD ARGS`, split as a shell would (shlex), the ENV
words K=V; `--base on=off` prints on's medians against off's."""
import json
import os
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import time

KEYS = ("VmHWM", "VmRSS", "RssAnon", "RssFile")


def parse(argv):
    rounds, poll, configs, bases = 8, 5.0, [], []
    i = 0
    while i < len(argv):
        o, v = argv[i], argv[i + 1]
        if o == "--rounds":
            rounds = int(v)
        elif o == "--poll-ms":
            poll = float(v)
        elif o == "--config":
            name, spec = v.split("=", 1)
            words = shlex.split(spec)
            cut = words.index("--")
            env = dict(w.split("=", 1) for w in words[:cut])
            configs.append((name, env, words[cut + 1:]))
        elif o == "--base":
            bases.append(tuple(v.split("=", 1)))
        else:
            raise SystemExit("prof_rss.py: unknown option %r" % o)
        i += 2
    return rounds, poll / 1000, configs, bases


def status(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            d = {}
            for l in f:
                k, _, v = l.partition(":")
                if k in KEYS:
                    d[k] = int(v.split()[0])
            return d if len(d) == len(KEYS) else None
    except OSError:
        return None


def run_once(env, cmd, poll):
    e = dict(os.environ, TRIMALLOC_SHOW_STATS="1", **env)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        p = subprocess.Popen(cmd, env=e, stdout=out, stderr=err, text=True)
        peak = None
        while True:
            s = status(p.pid)
            if s and (peak is None or s["VmRSS"] > peak["VmRSS"]):
                peak = s
            pid, st, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                break
            time.sleep(poll)
        if os.waitstatus_to_exitcode(st) != 0:
            err.seek(0)
            raise SystemExit("failed: %s\n%s" % (" ".join(cmd), err.read()[-2000:]))
        out.seek(0), err.seek(0)
        stdout, stderr = out.read(), err.read()
    m = re.search(r"STATUS (.*)", stderr)
    at_exit = dict(zip(m.group(1).split()[0::2], map(int, m.group(1).split()[1::2]))) if m else {}
    stats = [json.loads(x.group(1)) for x in re.finditer(r"trimalloc: stats (\{.*\})", stderr)]
    bench = [json.loads(l[6:]) for l in stdout.splitlines() if l.startswith("BENCH ")]
    st = stats[-1] if stats else {}
    return {
        "hwm": at_exit.get("VmHWM:", 0), "anon_exit": at_exit.get("RssAnon:", 0),
        "file_exit": at_exit.get("RssFile:", 0), "peak_rss": peak["VmRSS"] if peak else 0,
        "anon_peak": peak["RssAnon"] if peak else 0, "file_peak": peak["RssFile"] if peak else 0,
        "cpu": ru.ru_utime + ru.ru_stime, "cpu_work": (bench[-1] if bench else {}).get("cpu_work_s", 0.0),
        "sampled": st.get("prof_sampled", 0), "meta": st.get("prof_meta_bytes", 0),
    }


COLS = ("hwm", "anon_peak", "file_peak", "anon_exit", "file_exit", "cpu", "cpu_work", "sampled", "meta")


def main():
    rounds, poll, configs, bases = parse(sys.argv[1:])
    res = {n: [] for n, _, _ in configs}
    for n, env, cmd in configs:
        print("config %s: %s -- %s" % (n, " ".join("%s=%s" % kv for kv in env.items()), " ".join(cmd)))
    print("every run (KiB; hwm = VmHWM at exit; anon/file_peak = RssAnon/RssFile at the highest VmRSS read; "
          "*_exit at exit; cpu = user+sys s; cpu_work = the BENCH line's; sampled; meta = prof_meta_bytes):")
    for r in range(rounds):
        for n, env, cmd in configs:
            x = run_once(env, cmd, poll)
            res[n].append(x)
            print("  %d %-12s " % (r + 1, n) + " ".join("%s %s" % (k, round(x[k], 3)) for k in COLS), flush=True)
    print("medians of %d rounds:" % rounds)
    print("  %-12s" % "" + "".join("%11s" % k for k in COLS))
    med = {n: {k: statistics.median(x[k] for x in v) for k in COLS} for n, v in res.items()}
    for n, m in med.items():
        print("  %-12s" % n + "".join("%11.3f" % m[k] if k.startswith("cpu") else "%11d" % m[k] for k in COLS))
    for a, b in bases:
        d = {k: med[a][k] - med[b][k] for k in COLS}
        print("  %s - %s: hwm %+d KiB (%+.2f%%), anon at peak %+d, file at peak %+d, anon at exit %+d, "
              "file at exit %+d, cpu %+.3f s (%+.2f%%), cpu_work %+.3f s" % (
                  a, b, d["hwm"], 100 * d["hwm"] / med[b]["hwm"], d["anon_peak"], d["file_peak"], d["anon_exit"],
                  d["file_exit"], d["cpu"], 100 * d["cpu"] / med[b]["cpu"], d["cpu_work"]))


main()
