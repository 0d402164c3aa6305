"""What a request through the Python package's WSGI middleware costs, in process.

The Python half of bench/run's `middleware-cost` (bench/middleware_cost.rb is
the Rack half, with the same variants and figures). A trivial WSGI app
(start_response("200 OK", [("Content-Type", "text/plain")]); return [b"ok"])
is called `--requests` times (200,000) per round, as a server does (PEP 3333):
call, iterate the body, call its close() if it has one (the middleware's trim
decision runs in that close). The variants, in two phases, each timed in every
round of its phase (`--rounds`, 7; the order rotated from round to round), with
the bare app timed in every round too:
  phase 1, before any trim in the process (a server between trims, with less
  than min_free free: the check reads the sampled free-bytes figure):
    bare            the app alone
    counter only    TrimMiddleware(app, every=10**12, min_free=None) (the
                    decision is one counter: what the wrapping costs)
    min_free only   every=None, min_free=64 << 20
  phase 2, trims happening (the first is due at once; then the process-wide
  rate limit defers the rest to the policy's background thread, one a second):
    bare
    default         every=100, min_free=64 << 20, min_interval=1.0 (the
                    README's line and the middleware's defaults)
    no min_free     every=100, min_free=None
    min_free 0      every=None, min_free=0 (a trim due after every request)
Reports, per variant, the median over the rounds of the ns per request, and of
the extra ns per request over the bare app measured in the same round; the
middleware's counters (events, trims), and the policy's free-bytes reads and
deferred trims. Needs the package on PYTHONPATH (bench/run builds it into
bench/build/py). Python's default allocator setup (pymalloc) is kept.
    python3 middleware_cost.py [--requests 200000] [--rounds 7]"""
import gc
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import alloc  # noqa: E402

import trimalloc  # noqa: E402
from trimalloc.wsgi import TrimMiddleware  # noqa: E402

REQUESTS = alloc.opt("--requests", 200000)
ROUNDS = alloc.opt("--rounds", 7)
MIB64 = 64 << 20
HEADERS = [("Content-Type", "text/plain")]


def app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [b"ok"]


PHASES = [
    [("bare", app),
     ("counter_only", TrimMiddleware(app, every=10 ** 12, min_free=None, min_interval=1.0)),
     ("min_free_only", TrimMiddleware(app, every=None, min_free=MIB64, min_interval=1.0))],
    [("bare", app),
     ("default", TrimMiddleware(app, every=100, min_free=MIB64, min_interval=1.0)),
     ("no_min_free", TrimMiddleware(app, every=100, min_free=None, min_interval=1.0)),
     ("min_free_0", TrimMiddleware(app, every=None, min_free=0, min_interval=1.0))],
]


def environ():
    return {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "QUERY_STRING": "", "SERVER_NAME": "localhost",
            "SERVER_PORT": "80", "SERVER_PROTOCOL": "HTTP/1.1", "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http", "wsgi.multithread": False, "wsgi.multiprocess": False,
            "wsgi.run_once": False}


def start_response(status, headers, exc_info=None):
    return None


def run(wsgi_app, env, n):
    """n requests as a server makes them; returns ns per request."""
    nbytes = 0
    perf = time.perf_counter_ns
    t0 = perf()
    for _ in range(n):
        body = wsgi_app(env, start_response)
        for chunk in body:
            nbytes += len(chunk)
        close = getattr(body, "close", None)
        if close is not None:
            close()
    t1 = perf()
    if nbytes != 2 * n:
        raise SystemExit("middleware_cost.py: wrong body")
    return (t1 - t0) / n


def main():
    from trimalloc import _trimalloc
    env = environ()
    per, extra, reads = {}, {}, []
    c0 = time.process_time()
    for variants in PHASES:
        reads0 = _trimalloc.policy_stats()["free_reads"]
        for _, a in variants:
            run(a, env, max(REQUESTS // 10, 1000))  # warm-up
        gc.collect()
        for r in range(ROUNDS):
            k = r % len(variants)
            got = {name: run(a, env, REQUESTS) for name, a in variants[k:] + variants[:k]}
            for name, ns in got.items():
                per.setdefault(name, []).append(ns)
                if name != "bare":
                    extra.setdefault(name, []).append(ns - got["bare"])
        reads.append(_trimalloc.policy_stats()["free_reads"] - reads0)
    c1 = time.process_time()
    mws = [(name, a) for variants in PHASES for name, a in variants if name != "bare"]
    fields = {"requests": REQUESTS, "rounds": ROUNDS, "language": "python", "backend": trimalloc.backend(),
              "free_source": _trimalloc.free_source(), "cpu_s": c1 - c0,
              "free_reads_phase1": reads[0], "free_reads_phase2": reads[1],
              "deferred": _trimalloc.policy_stats()["deferred"], "bare_ns": statistics.median(per["bare"]),
              "trims_middleware": sum(a.stats()["trims"] for _, a in mws)}
    for name, a in mws:
        st = a.stats()
        fields[name + "_ns"] = statistics.median(per[name])
        fields["extra_%s_ns" % name] = statistics.median(extra[name])
        fields["trims_" + name] = st["trims"]
        fields["events_" + name] = st["events"]
    alloc.report("middleware-cost", **fields)


if __name__ == "__main__":
    main()
