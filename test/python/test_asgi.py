"""trimalloc.asgi: the middleware driven as an ASGI server drives it, under
Starlette, and in real servers: uvicorn (Debian's python3-uvicorn, 2 worker
processes) through `trimalloc run` and through the preload line, and gunicorn
with `-k uvicorn.workers.UvicornWorker` and the README's gunicorn config, each
worker building and dropping 120 MiB in one request."""
import asyncio
import re
import sys

import pytest

pytest.importorskip("uvicorn")

from trimalloc import _trimalloc  # noqa: E402
from trimalloc.asgi import TrimMiddleware  # noqa: E402
from conftest import (FIXTURES, check_async_workers, children_of, free_port,  # noqa: E402
                      fresh_rate_limit, maps_trimalloc, wait_for)

STARTED = re.compile(r"Started server process \[(\d+)\]")
BOOTED = re.compile(r"Booting worker with pid: (\d+)")


def request(app, scope_type="http", on_send=None):
    """One request through app as a server sends it; returns the messages the
    app sent (on_send(message) is called as each is sent)."""
    out = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        out.append(message)
        if on_send is not None:
            on_send(message)

    async def main():
        await app({"type": scope_type, "method": "GET", "path": "/", "query_string": b"", "headers": []},
                  receive, send)

    asyncio.run(main())
    return out


async def streaming(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"a", "more_body": True})
    await send({"type": "http.response.body", "body": b"b"})


def test_middleware_counts_a_request_once_its_last_body_is_sent():
    fresh_rate_limit()
    mw = TrimMiddleware(streaming, every=1, min_free=None, min_interval=0)
    seen = []
    msgs = request(mw, on_send=lambda m: seen.append(mw.requests))
    assert [m.get("body") for m in msgs] == [None, b"a", b"b"]
    assert seen == [0, 0, 0]  # nothing counted before the last body was sent
    wait_for("the trim", lambda: mw.trims == 1, 10)
    assert mw.requests == 1


def test_middleware_trims_off_the_event_loop():
    # The trim waits at a gate; meanwhile the loop runs another request.
    fresh_rate_limit()
    mw = TrimMiddleware(streaming, every=1, min_free=None, min_interval=0)

    async def main():
        async def receive():
            return {"type": "http.request"}

        async def send(message):
            pass

        scope = {"type": "http", "path": "/"}
        _trimalloc._test_gate(True)
        try:
            await mw(scope, receive, send)
            loop = asyncio.get_running_loop()
            await loop.run_in_executor(None, wait_for, "the trim at the gate",
                                       lambda: _trimalloc._test_gate_state() == 2, 10)
            await mw(scope, receive, send)  # served while the trim waits
            during = mw.stats()
        finally:
            _trimalloc._test_gate_open()
        await loop.run_in_executor(None, wait_for, "the trims",
                                   lambda: mw.trims + mw.stats()["coalesced"] == 2, 10)
        return during

    during = asyncio.run(main())
    assert during["events"] == 2 and during["trims"] == 0


def test_middleware_counts_a_request_whose_app_raises_and_passes_other_scopes():
    async def broken(scope, receive, send):
        if scope["type"] == "http":
            raise RuntimeError("app failed")

    fresh_rate_limit()
    mw = TrimMiddleware(broken, every=1, min_free=None, min_interval=0)
    with pytest.raises(RuntimeError, match="app failed"):
        request(mw)
    wait_for("the trim", lambda: mw.trims == 1, 10)
    request(mw, "lifespan")
    request(mw, "websocket")
    assert mw.requests == 1


def test_middleware_arguments():
    with pytest.raises(TypeError, match="42"):
        TrimMiddleware(42)
    with pytest.raises(ValueError, match="0"):
        TrimMiddleware(streaming, every=0)
    with pytest.raises(ValueError, match="both None"):
        TrimMiddleware(streaming, every=None, min_free=None)
    d = TrimMiddleware(streaming)
    want = _trimalloc.DEFAULTS["request"]  # core/bind/bind_facts.c
    assert (d.every, d.min_free, d.min_interval) == (want["every"], want["min_free"], want["min_interval"])


def test_starlette_add_middleware():
    starlette = pytest.importorskip("starlette.applications")
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def hello(request):
        return PlainTextResponse("hello")

    fresh_rate_limit()
    app = starlette.Starlette(routes=[Route("/", hello)])
    app.add_middleware(TrimMiddleware, every=1, min_free=None, min_interval=0)
    msgs = request(app)
    assert msgs[0]["status"] == 200 and msgs[-1]["body"] == b"hello"
    mw = app.middleware_stack
    while not isinstance(mw, TrimMiddleware):
        mw = mw.app
    wait_for("the trim", lambda: mw.trims == 1, 10)


# ---- real servers ----

def started(s, n):
    wait_for("%d uvicorn workers started" % n, lambda: len(STARTED.findall(s.log())) >= n, timeout=120)
    workers = sorted(int(p) for p in STARTED.findall(s.log()))
    assert len(workers) == n, s.log()
    return workers


@pytest.mark.parametrize("how", ["launcher", "preload line"])
def test_uvicorn_workers_with_the_middleware_trim_after_a_burst(server_cmd, how):
    port = free_port()
    if how == "launcher":
        cmd = [sys.executable, "-m", "trimalloc", "run", "--", sys.executable, "-m", "uvicorn",
               "--workers", "2", "--host", "127.0.0.1", "--port", str(port), "probe_async:asgi_app"]
    else:
        cmd = [sys.executable, str(FIXTURES / "serve_uvicorn.py"), str(port)]
    s = server_cmd(cmd, port, TA_HOOK="asgi")
    workers = started(s, 2)
    assert maps_trimalloc(s.pid)  # the parent too (the same pid, re-executed by the line)
    assert set(workers) <= set(children_of(s.pid))
    check_async_workers(port, workers)
    assert "RuntimeWarning" not in s.log() and "Traceback" not in s.log(), s.log()


def test_gunicorn_uvicorn_workers_with_the_readme_config_trim_after_a_burst(server_cmd):
    port = free_port()
    cmd = [sys.executable, "-m", "trimalloc", "run", "--", sys.executable, "-m", "gunicorn",
           "-c", str(FIXTURES / "gunicorn.conf.py"), "-k", "uvicorn.workers.UvicornWorker",
           "probe_async:asgi_app"]
    s = server_cmd(cmd, port, TA_PORT=str(port), TA_HOOK="gunicorn")
    wait_for("2 workers booted", lambda: len(BOOTED.findall(s.log())) >= 2, timeout=120)
    workers = sorted(int(p) for p in BOOTED.findall(s.log()))
    check_async_workers(port, workers)
    log = s.log()
    for w in workers:
        assert log.count("trimalloc: worker %d: uvicorn.workers.UvicornWorker never calls "
                         "post_request; trimalloc.asgi's middleware trims instead" % w) == 1, log


def test_uvicorn_workers_with_the_preload_line_in_the_app_come_up_on_glibc_and_warn_once(server_cmd):
    # uvicorn spawns each worker (`python -c ...`), which imports the
    # application module: the line there refuses (one warning per worker) and
    # the worker serves on glibc; the middleware still trims (malloc_trim).
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "--workers", "2", "--host", "127.0.0.1", "--port",
           str(port), "probe_async:asgi_app"]
    s = server_cmd(cmd, port, TA_HOOK="asgi", TA_PRELOAD_IN="probe_async.py")
    workers = started(s, 2)
    assert not maps_trimalloc(s.pid)
    check_async_workers(port, workers, backend="glibc")
    log = s.log()
    assert log.count("RuntimeWarning: trimalloc.preload: the program came from -c") == 2, log
    assert "Traceback" not in log and len(STARTED.findall(log)) == 2, log
