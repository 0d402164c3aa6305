"""trimalloc.aiohttp: the middleware in a real aiohttp server in this process,
gunicorn's post_worker_init reaching the application of a worker class that
never calls post_request, and real servers: gunicorn with
`-k aiohttp.GunicornWebWorker` (2 workers, the README's gunicorn config) and
aiohttp's web.run_app, on trimalloc through `trimalloc run` and through the
preload line, each worker building and dropping 120 MiB in one request."""
import asyncio
import re
import sys

import pytest

web = pytest.importorskip("aiohttp.web")

import trimalloc  # noqa: E402
import trimalloc.aiohttp  # noqa: E402
import trimalloc.gunicorn  # noqa: E402
from trimalloc import _trimalloc  # noqa: E402
from conftest import (FIXTURES, check_async_workers, children_of, fresh_rate_limit,  # noqa: E402
                      free_port, maps_trimalloc, run_py, wait_for)

BOOTED = re.compile(r"Booting worker with pid: (\d+)")


# ---- the middleware in this process ----

def serve_and(app, client):
    """Runs app on a free port in a new event loop in this thread and
    `await client(port)`; returns what it returns."""
    async def main():
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]
        try:
            return await client(port)
        finally:
            await runner.cleanup()
    return asyncio.run(main())


async def fetch(port, path="/"):
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(("GET %s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % path).encode())
    data = await reader.read()
    writer.close()
    return data


def test_middleware_trims_after_the_response_is_sent_and_off_the_event_loop():
    # The trim waits at a gate: the first response has reached the client
    # already, and the loop serves another request while the trim is held.
    fresh_rate_limit()
    app = web.Application()

    async def handle(request):
        return web.Response(text="ok")

    app.router.add_get("/", handle)
    mw = trimalloc.aiohttp.install(app, every=1, min_free=None, min_interval=0)

    async def client(port):
        _trimalloc._test_gate(True)
        try:
            first = await fetch(port)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, wait_for, "the trim at the gate",
                                       lambda: _trimalloc._test_gate_state() == 2, 10)
            second = await fetch(port)  # served while the trim waits
            during = mw.stats()
        finally:
            _trimalloc._test_gate_open()
        # the second trim ran at the gate's time (coalesced) or after it
        await loop.run_in_executor(None, wait_for, "the trims",
                                   lambda: mw.trims + mw.stats()["coalesced"] == 2, 10)
        return first, second, during

    first, second, during = serve_and(app, client)
    assert first.endswith(b"ok") and second.endswith(b"ok")
    assert during["events"] == 2 and during["trims"] == 0  # the first trim still at the gate
    assert mw.trims >= 1 and mw.stats()["events"] == 2, mw.stats()


def test_middleware_counts_every_response_and_trims_every_n():
    fresh_rate_limit()
    app = web.Application()

    async def ok(request):
        return web.Response(text="ok")

    async def missing(request):
        raise web.HTTPNotFound()

    async def broken(request):
        raise RuntimeError("handler failed")

    async def streamed(request):
        resp = web.StreamResponse()
        await resp.prepare(request)
        await resp.write(b"chunk")
        await resp.write_eof()
        return resp

    for path, h in (("/", ok), ("/missing", missing), ("/broken", broken), ("/streamed", streamed)):
        app.router.add_get(path, h)
    mw = trimalloc.aiohttp.install(app, every=2, min_free=None, min_interval=0)

    async def client(port):
        out = []
        loop = asyncio.get_running_loop()
        for i, path in enumerate(("/", "/missing", "/broken", "/streamed", "/", "/nowhere"), 1):
            out.append(await fetch(port, path))
            # counted when sent; each trim (off the loop) done before the next request
            await loop.run_in_executor(
                None, wait_for, "request %d counted" % i,
                lambda: mw.requests == i and mw.trims + mw.stats()["coalesced"] == i // 2, 10)
        return out

    answers = serve_and(app, client)
    assert [a.split(b" ", 2)[1] for a in answers] == [b"200", b"404", b"500", b"200", b"200", b"404"]
    assert answers[3].endswith(b"chunk\r\n0\r\n\r\n")
    s = mw.stats()
    assert (s["events"], s["trims"], s["coalesced"]) == (6, 3, 0), s
    assert mw.trimmed_bytes == s["trimmed_bytes"]


def test_middleware_arguments():
    with pytest.raises(ValueError, match="0"):
        trimalloc.aiohttp.TrimMiddleware(every=0)
    with pytest.raises(TypeError, match="'many'"):
        trimalloc.aiohttp.TrimMiddleware(every="many")
    with pytest.raises(ValueError, match="both None"):
        trimalloc.aiohttp.TrimMiddleware(every=None, min_free=None)
    with pytest.raises(TypeError, match="42"):
        trimalloc.aiohttp.install(42)
    default = trimalloc.aiohttp.TrimMiddleware()
    want = trimalloc._trimalloc.DEFAULTS["request"]  # core/bind/bind_facts.c
    assert (default.every, default.min_free, default.min_interval) == (
        want["every"], want["min_free"], want["min_interval"])
    app = web.Application()
    app.freeze()
    with pytest.raises(ValueError, match="frozen"):
        trimalloc.aiohttp.install(app)


def test_the_sync_hooks_do_not_load_asyncio():
    # asyncio costs `import trimalloc` 90 ms: only the async hooks use it, where it is loaded.
    run_py("import sys, trimalloc, trimalloc.gc, trimalloc.wsgi, trimalloc.gunicorn\n"
           "assert 'asyncio' not in sys.modules, sorted(sys.modules)")


# ---- gunicorn's post_worker_init, with worker classes that never call post_request ----

class Log:
    def __init__(self):
        self.lines = []

    def info(self, msg):
        self.lines.append(("info", msg))

    def warning(self, msg):
        self.lines.append(("warning", msg))


class Cfg:
    post_request = trimalloc.gunicorn.post_request


def a_worker(module, name, wsgi, cfg=Cfg):
    cls = type(name, (), {"__module__": module})
    w = cls()
    w.pid, w.log, w.wsgi, w.cfg = 4242, Log(), wsgi, cfg()
    return w


def test_post_worker_init_puts_post_requests_policy_into_an_aiohttp_application():
    app = web.Application()
    w = a_worker("aiohttp.worker", "GunicornWebWorker", app)
    trimalloc.gunicorn.post_worker_init(w)
    mw = trimalloc.aiohttp.installed(app)
    assert mw is not None and app.middlewares[0] is mw
    assert mw.trimmer is trimalloc.gunicorn.post_request.trimmer.trimmer  # its counters
    assert w.log.lines[1] == ("info", "trimalloc: worker 4242: aiohttp.worker.GunicornWebWorker "
                              "never calls post_request; trimalloc.aiohttp's middleware trims "
                              "instead, with post_request's policy and counters"), w.log.lines
    assert len(w.log.lines) == 2
    # an application that has the middleware already keeps just that one
    w2 = a_worker("aiohttp.worker", "GunicornWebWorker", app)
    trimalloc.gunicorn.post_worker_init(w2)
    assert sum(isinstance(m, trimalloc.aiohttp.TrimMiddleware) for m in app.middlewares) == 1
    assert "has trimalloc.aiohttp's middleware already" in w2.log.lines[1][1]


def test_post_worker_init_reaches_an_application_an_async_factory_makes():
    app = web.Application()

    async def factory():
        return app

    w = a_worker("aiohttp.worker", "GunicornWebWorker", factory)
    trimalloc.gunicorn.post_worker_init(w)
    assert len(w.log.lines) == 1 and w.wsgi is not factory
    assert asyncio.run(w.wsgi()) is app
    assert trimalloc.aiohttp.installed(app) is not None
    assert w.log.lines[1][0] == "info" and "middleware trims instead" in w.log.lines[1][1]
    # a factory that returns an application already started: a warning, the worker goes on
    started = web.Application()
    started.freeze()

    async def late():
        return started

    w = a_worker("aiohttp.worker", "GunicornWebWorker", late)
    trimalloc.gunicorn.post_worker_init(w)
    assert asyncio.run(w.wsgi()) is started
    assert w.log.lines[1][0] == "warning" and "frozen" in w.log.lines[1][1], w.log.lines
    assert "trimalloc.aiohttp.install(app)" in w.log.lines[1][1]


def test_post_worker_init_warns_once_where_it_cannot_reach_the_application():
    for module, name, wsgi in (("gunicorn.workers.gtornado", "TornadoWorker", object()),
                               ("aiohttp.worker", "GunicornWebWorker", web.Application())):
        if isinstance(wsgi, web.Application):
            wsgi.freeze()  # started already
        w = a_worker(module, name, wsgi)
        trimalloc.gunicorn.post_worker_init(w)
        assert len(w.log.lines) == 2, w.log.lines
        level, line = w.log.lines[1]
        assert level == "warning"
        assert line.startswith("trimalloc: worker 4242: %s.%s never calls post_request; " % (module, name))
        assert "post_request will not trim" in line and "trimalloc.aiohttp.install(app)" in line
        assert "trimalloc.asgi.TrimMiddleware" in line


def test_post_worker_init_leaves_workers_that_call_post_request_and_other_configs_alone():
    app = web.Application()
    sync = a_worker("gunicorn.workers.sync", "SyncWorker", app)
    trimalloc.gunicorn.post_worker_init(sync)

    class OwnHook:
        def post_request(self, *a):
            pass

    other = a_worker("aiohttp.worker", "GunicornWebWorker", app, cfg=OwnHook)
    trimalloc.gunicorn.post_worker_init(other)
    assert len(sync.log.lines) == 1 and len(other.log.lines) == 1  # only the backend line
    assert trimalloc.aiohttp.installed(app) is None


# ---- real servers ----

def gunicorn_cmd(worker_class, app, launcher):
    cmd = [sys.executable, "-m", "gunicorn", "-c", str(FIXTURES / "gunicorn.conf.py"),
           "-k", worker_class, app]
    return [sys.executable, "-m", "trimalloc", "run", "--"] + cmd if launcher else cmd


def booted(s, n=2):
    wait_for("%d workers booted" % n, lambda: len(BOOTED.findall(s.log())) >= n, timeout=120)
    workers = sorted(int(p) for p in BOOTED.findall(s.log()))
    assert len(workers) == n and sorted(children_of(s.pid)) == workers, s.log()
    return workers


def check_gunicorn_log(s, workers, worker_class):
    log = s.log()
    for w in workers:
        assert log.count("trimalloc: worker %d runs on trimalloc (" % w) == 1, log
        assert log.count("trimalloc: worker %d: %s never calls post_request; trimalloc."
                         % (w, worker_class)) == 1, log
    assert "post_request will not trim" not in log and "RuntimeWarning" not in log, log
    assert log.count("Listening at:") == 1 and sorted(int(p) for p in BOOTED.findall(log)) == workers


@pytest.mark.parametrize("how", ["launcher", "preload line"])
def test_gunicorn_aiohttp_workers_with_the_readme_config_trim_after_a_burst(server_cmd, how):
    port = free_port()
    s = server_cmd(gunicorn_cmd("aiohttp.GunicornWebWorker", "probe_async:make_aiohttp_app()",
                                how == "launcher"),
                   port, TA_PORT=str(port), TA_HOOK="gunicorn",
                   TA_PRELOAD_IN="gunicorn.conf.py" if how == "preload line" else "")
    workers = booted(s)
    assert maps_trimalloc(s.pid)
    infos = check_async_workers(port, workers)
    for i in infos:
        assert i["ppid"] == s.pid
    check_gunicorn_log(s, workers, "aiohttp.worker.GunicornWebWorker")


@pytest.mark.parametrize("how", ["launcher", "preload line"])
def test_aiohttp_run_app_with_the_middleware_trims_after_a_burst(server_cmd, how):
    port = free_port()
    cmd = [sys.executable, str(FIXTURES / "probe_async.py"), str(port)]
    if how == "launcher":
        cmd = [sys.executable, "-m", "trimalloc", "run", "--"] + cmd
    s = server_cmd(cmd, port, TA_HOOK="aiohttp",
                   TA_PRELOAD_IN="probe_async.py" if how == "preload line" else "")
    assert maps_trimalloc(s.pid)  # the same pid, re-executed on trimalloc
    check_async_workers(port, [s.pid])
    assert "RuntimeWarning" not in s.log(), s.log()
