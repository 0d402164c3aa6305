"""What each Python request/job hook costs per request with the heap profiler
off (the default) or, with --on, sampling at a 1 GiB interval (on, almost
never sampling): WSGI (call, iterate, close), ASGI (an app with 0 and with 3
suspensions, driven by send(None) without a loop), aiohttp's middleware
(called directly with a stand-in request; the handler suspends once), Celery's
task_prerun+task_postrun and gunicorn's pre_request+post_request. Every
policy counter-only (every=10**12, min_free=None: no trim), so what is timed
is the hook itself. Each variant (bare, mw) is timed in every round (order
rotated); prints JSON: per group the median ns per request of each and the
median of (mw - bare) in the same round. Issue 16 ran it alternately on the
package before and after the hooks learnt to skip tagging while the profiler
is off, on trimalloc (LD_PRELOAD of the bundled library).
    python3 tag_off_cost.py [--requests 200000] [--rounds 5] [--on]
--only GROUP [--bare]: that group's middleware (or bare app) once, N
requests, nothing printed: for instruction counts, as (Ir at 2N - Ir at N) / N
with valgrind --tool=cachegrind --cache-sim=no."""
import gc
import json
import statistics
import sys
import time
import types

def opt(name, default):
    return int(sys.argv[sys.argv.index(name) + 1]) if name in sys.argv else default

N = opt("--requests", 200000)
ROUNDS = opt("--rounds", 5)
import trimalloc
from trimalloc import profile, _trimalloc
from trimalloc.wsgi import TrimMiddleware as W
from trimalloc.asgi import TrimMiddleware as A
from trimalloc import celery as tcel, gunicorn as tgun
try:
    from trimalloc.aiohttp import TrimMiddleware as H
except ImportError:
    H = None
if "--on" in sys.argv:
    profile.start(1 << 30)  # on, almost never samples
perf = time.perf_counter_ns
HEADERS = [("Content-Type", "text/plain")]
ENV = {"REQUEST_METHOD": "GET", "PATH_INFO": "/users/42", "QUERY_STRING": ""}

def wsgi_app(environ, start_response):
    start_response("200 OK", HEADERS)
    return [b"ok"]

def sr(status, headers, exc_info=None):
    return None

def run_wsgi(app):
    def run(n):
        t0 = perf()
        for _ in range(n):
            body = app(ENV, sr)
            for c in body:
                pass
            close = getattr(body, "close", None)
            if close is not None:
                close()
        return (perf() - t0) / n
    return run

class Yield:
    def __await__(self):
        yield

Y = Yield()
SCOPE = {"type": "http", "path": "/users/42"}
START = {"type": "http.response.start", "status": 200, "headers": []}
BODY = {"type": "http.response.body", "body": b"ok"}

async def receive():
    return {"type": "http.request", "body": b""}

async def send(m):
    pass

def asgi_app(steps):
    async def app(scope, receive, send):
        await receive()
        for _ in range(steps):
            await Y  # a suspension: the driver resumes it
        await send(START)
        await send(BODY)
    return app

def drive(make):
    """A timer of n coroutines made by make(), each stepped to its end by hand
    (no event loop: the hook's own cost)."""
    def run(n):
        t0 = perf()
        for _ in range(n):
            co = make()
            try:
                while True:
                    co.send(None)
            except StopIteration:
                pass
        return (perf() - t0) / n
    return run

def run_asgi(app):
    return drive(lambda: app(SCOPE, receive, send))

class Req:
    path = "/users/42"
    match_info = types.SimpleNamespace(route=types.SimpleNamespace(
        resource=types.SimpleNamespace(canonical="/users/{id}")))

RESP = object()  # not a StreamResponse: counted at once

async def handler(request):
    await Y
    return RESP

def run_aiohttp(mw):
    req = Req()
    return drive((lambda: handler(req)) if mw is None else (lambda: mw(req, handler)))

class Task:
    name = "app.tasks.report"

def run_celery(on):
    t = Task()
    def run(n):
        t0 = perf()
        for _ in range(n):
            if on:
                tcel._task_prerun(t)
                tcel._task_postrun(t)
        return (perf() - t0) / n
    return run

def run_gunicorn(on):
    log = types.SimpleNamespace(debug=lambda *a: None)
    worker = types.SimpleNamespace(log=log)
    req = types.SimpleNamespace(method="GET", path="/users/42")
    post = tgun.make_post_request(every=10 ** 12, min_free=None)
    def run(n):
        t0 = perf()
        for _ in range(n):
            if on:
                tgun.pre_request(worker, req)
                post(worker, req, None, None)
        return (perf() - t0) / n
    return run

kw = dict(every=10 ** 12, min_free=None)
GROUPS = {
    "wsgi": [("bare", run_wsgi(wsgi_app)), ("mw", run_wsgi(W(wsgi_app, **kw)))],
    "asgi0": [("bare", run_asgi(asgi_app(0))), ("mw", run_asgi(A(asgi_app(0), **kw)))],
    "asgi3": [("bare", run_asgi(asgi_app(3))), ("mw", run_asgi(A(asgi_app(3), **kw)))],
    "celery": [("bare", run_celery(False)), ("mw", run_celery(True))],
    "gunicorn": [("bare", run_gunicorn(False)), ("mw", run_gunicorn(True))],
}
if H is not None:
    GROUPS["aiohttp"] = [("bare", run_aiohttp(None)), ("mw", run_aiohttp(H(**kw)))]
if "--only" in sys.argv:  # one group's middleware, N requests once (for instruction counts)
    g = sys.argv[sys.argv.index("--only") + 1]
    dict(GROUPS[g])["bare" if "--bare" in sys.argv else "mw"](N)
    sys.exit(0)
out = {"backend": trimalloc.backend(), "interval": profile.interval()}
for g, variants in GROUPS.items():
    for _, f in variants:
        f(N // 10)
    gc.collect()
    per, extra = {}, []
    for r in range(ROUNDS):
        k = r % len(variants)
        got = {name: f(N) for name, f in variants[k:] + variants[:k]}
        for name, ns in got.items():
            per.setdefault(name, []).append(ns)
        extra.append(got["mw"] - got["bare"])
    out[g] = {"bare": statistics.median(per["bare"]), "mw": statistics.median(per["mw"]),
              "extra": statistics.median(extra)}
print(json.dumps(out))
