"""The request and job hooks tag only while the heap profiler samples.

With the profiler off (the default: this suite's own process runs on glibc,
where it is never on) the WSGI, ASGI, aiohttp, Celery and gunicorn hooks make
no tag calls and put no Tagged wrapper around a handler; `_hooks.profiling`
patched to answer "on" shows the same hooks still tagging as before. The
children (on trimalloc, as test_profile.py's) switch the real profiler on
and off in the middle of requests: a tag set at a request's start is gone
at its end whatever happened to the profiler, and a request that began
while it was off runs untagged while the next one is tagged."""
import asyncio
import sys
import types

import pytest

from trimalloc import _hooks, profile
from trimalloc import asgi as ta_asgi
from trimalloc import gunicorn as ta_gunicorn
from trimalloc import wsgi as ta_wsgi

from conftest import MiB
from test_profile import child_json

NEVER = dict(every=None, min_free=1 << 40)  # no trim: only the tagging is looked at


@pytest.fixture
def calls(monkeypatch):
    """The tags the hooks hand to the core, in order; and Tagged's constructions."""
    seen = {"set": [], "tagged": []}

    def set_tag(tag):
        seen["set"].append(tag)

    class Tagged(_hooks.Tagged):
        __slots__ = ()

        def __init__(self, awaitable, tag):
            seen["tagged"].append(tag)
            super().__init__(awaitable, tag)

    monkeypatch.setattr(_hooks, "_set_tag", set_tag)
    monkeypatch.setattr(_hooks, "Tagged", Tagged)
    assert profile.interval() == 0  # glibc: the profiler is off
    yield seen
    _hooks._cell()[0] = None


@pytest.fixture
def on(monkeypatch):
    """The hooks told that the profiler samples."""
    monkeypatch.setattr(_hooks, "profiling", lambda: 1 << 19)


def wsgi_request(app, path):
    def wsgi_app(environ, start_response):
        start_response("200 OK", [])
        return [b"ok"]

    mw = ta_wsgi.TrimMiddleware(wsgi_app, **NEVER)
    body = mw({"PATH_INFO": path}, lambda *a: None)
    assert list(body) == [b"ok"]
    body.close()
    return mw


def test_wsgi_off_makes_no_tag_call(calls):
    mw = wsgi_request(None, "/users/1")
    assert calls["set"] == []
    assert mw.stats()["events"] == 1  # the request still counts


def test_wsgi_on_tags_the_request_until_its_body_closes(calls, on):
    wsgi_request(None, "/users/1")
    assert calls["set"] == ["/users/1", None]


def asgi_request(path):
    """An ASGI request through the middleware; the frame that ran the
    application's coroutine (its caller's code name and file)."""
    ran_by = []

    async def app(scope, receive, send):
        f = sys._getframe().f_back
        ran_by.append((f.f_code.co_name, f.f_code.co_filename))
        await asyncio.sleep(0)  # a suspension: a wrapper would step it again
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(message):
        pass

    mw = ta_asgi.TrimMiddleware(app, **NEVER)
    asyncio.run(mw({"type": "http", "path": path}, receive, send))
    assert mw.stats()["events"] == 1
    return ran_by[0]


def test_asgi_off_awaits_the_application_s_coroutine_itself(calls):
    name, file = asgi_request("/items")
    assert (name, file) == ("__call__", ta_asgi.__file__)  # no Tagged between them
    assert calls == {"set": [], "tagged": []}


def test_asgi_on_runs_the_application_under_tagged(calls, on):
    name, file = asgi_request("/items")
    assert (name, file) == ("__next__", _hooks.__file__)
    assert calls["tagged"] == ["/items"]
    assert calls["set"] == ["/items", None, "/items", None]  # two steps


def aiohttp_request():
    web = pytest.importorskip("aiohttp.web")
    from trimalloc import aiohttp as ta_aiohttp
    ran_by = []

    async def handler(request):
        f = sys._getframe().f_back
        ran_by.append((f.f_code.co_name, f.f_code.co_filename))
        await asyncio.sleep(0)
        return web.Response(text="ok")

    request = types.SimpleNamespace(path="/users/7", match_info=types.SimpleNamespace(
        route=types.SimpleNamespace(resource=types.SimpleNamespace(canonical="/users/{id}"))))
    resp = asyncio.run(ta_aiohttp.TrimMiddleware(**NEVER)(request, handler))
    assert resp.text == "ok"
    return ran_by[0], ta_aiohttp.__file__


def test_aiohttp_off_awaits_the_handler_s_coroutine_itself(calls):
    (name, file), mw_file = aiohttp_request()
    assert (name, file) == ("__call__", mw_file)
    assert calls == {"set": [], "tagged": []}


def test_aiohttp_on_runs_the_handler_under_tagged_with_the_route(calls, on):
    (name, file), _ = aiohttp_request()
    assert (name, file) == ("__next__", _hooks.__file__)
    assert calls["tagged"] == ["/users/{id}"]


def gunicorn_and_celery():
    pytest.importorskip("celery")
    from trimalloc import celery as ta_celery
    worker = types.SimpleNamespace(log=types.SimpleNamespace(debug=lambda *a: None))
    req = types.SimpleNamespace(method="GET", path="/reports/daily")
    ta_gunicorn.pre_request(worker, req)
    ta_gunicorn.make_post_request(**NEVER)(worker, req, {}, None)
    task = types.SimpleNamespace(name="app.tasks.report")
    ta_celery._task_prerun(task)
    ta_celery._task_postrun(task)


def test_gunicorn_and_celery_hooks_off_make_no_tag_call(calls):
    gunicorn_and_celery()
    assert calls["set"] == []


def test_gunicorn_and_celery_hooks_on_tag_and_clear(calls, on):
    gunicorn_and_celery()
    assert calls["set"] == ["/reports/daily", None, "app.tasks.report", None]


# ---- the real profiler, switched in the middle of requests ----

def test_stopping_the_profiler_mid_request_leaves_no_tag_behind():
    out = child_json(
        "import asyncio, json, types, prof_app\n"
        "from trimalloc import profile, _hooks, celery as tc, gunicorn as tg\n"
        "from trimalloc.wsgi import TrimMiddleware as W\n"
        "from trimalloc.asgi import TrimMiddleware as A\n"
        "left = {}\n"
        "def stopping(environ, start_response):\n"
        "    profile.stop()\n"
        "    start_response('200 OK', [])\n"
        "    return [b'ok']\n"
        "profile.start(64 << 10)\n"
        "body = W(stopping, every=None, min_free=1 << 40)({'PATH_INFO': '/w'}, lambda *a: None)\n"
        "left['wsgi, body open'] = _hooks.current_tag()\n"
        "list(body); body.close()\n"
        "left['wsgi'] = _hooks.current_tag()\n"
        "async def app(scope, receive, send):\n"
        "    await asyncio.sleep(0)\n"
        "    profile.stop()\n"
        "    await asyncio.sleep(0)\n"
        "    left['asgi, in the app'] = _hooks.current_tag()\n"
        "    await send({'type': 'http.response.body', 'body': b''})\n"
        "async def main():\n"
        "    async def receive(): return {'type': 'http.request'}\n"
        "    async def send(m): pass\n"
        "    profile.start(64 << 10)\n"
        "    await A(app, every=None, min_free=1 << 40)({'type': 'http', 'path': '/a'}, receive, send)\n"
        "    left['asgi'] = _hooks.current_tag()\n"
        "asyncio.run(main())\n"
        "worker = types.SimpleNamespace(log=types.SimpleNamespace(debug=lambda *a: None))\n"
        "req = types.SimpleNamespace(method='GET', path='/g')\n"
        "profile.start(64 << 10)\n"
        "tg.pre_request(worker, req)\n"
        "profile.stop()\n"
        "tg.post_request(worker, req, {}, None)\n"
        "left['gunicorn'] = _hooks.current_tag()\n"
        "task = types.SimpleNamespace(name='app.tasks.t')\n"
        "profile.start(64 << 10)\n"
        "tc._task_prerun(task)\n"
        "profile.stop()\n"
        "tc._task_postrun(task)\n"
        "left['celery'] = _hooks.current_tag()\n"
        "profile.start(64 << 10)\n"
        "prof_app.after_stop(2)  # the core's tag: none left behind\n"
        "print(json.dumps({'left': left, 'rows': profile.top(0)}))\n")
    assert out["left"] == {"wsgi, body open": "/w", "wsgi": None, "asgi, in the app": "/a",
                           "asgi": None, "gunicorn": None, "celery": None}, out["left"]
    after = [r for r in out["rows"] if any(f.startswith("prof_app.after_stop (") for f in r["frames"])]
    assert after and all(r["tag"] is None for r in after), after


def test_a_request_in_flight_when_the_profiler_starts_runs_untagged_and_the_next_is_tagged():
    rows = child_json(
        "import asyncio, json, prof_app\n"
        "from trimalloc import profile\n"
        "from trimalloc.wsgi import TrimMiddleware as W\n"
        "from trimalloc.asgi import TrimMiddleware as A\n"
        "def starting(environ, start_response):\n"
        "    profile.start(64 << 10)\n"
        "    prof_app.while_on(2)\n"
        "    start_response('200 OK', [])\n"
        "    return [b'ok']\n"
        "def next_one(environ, start_response):\n"
        "    prof_app.make_bytes(3)\n"
        "    start_response('200 OK', [])\n"
        "    return [b'ok']\n"
        "for app, path in ((starting, '/first'), (next_one, '/next')):\n"
        "    body = W(app, every=None, min_free=1 << 40)({'PATH_INFO': path}, lambda *a: None)\n"
        "    list(body); body.close()\n"
        "profile.stop()\n"
        "async def asgi_app(scope, receive, send):\n"
        "    await asyncio.sleep(0)\n"
        "    if scope['path'] == '/a-first':\n"
        "        profile.start(64 << 10)\n"
        "        await asyncio.sleep(0)\n"
        "        prof_app.before_start(2)\n"
        "    else:\n"
        "        prof_app.make_json(20000)\n"
        "    await send({'type': 'http.response.body', 'body': b''})\n"
        "async def main():\n"
        "    async def receive(): return {'type': 'http.request'}\n"
        "    async def send(m): pass\n"
        "    mw = A(asgi_app, every=None, min_free=1 << 40)\n"
        "    for path in ('/a-first', '/a-next'):\n"
        "        await mw({'type': 'http', 'path': path}, receive, send)\n"
        "asyncio.run(main())\n"
        "print(json.dumps(profile.top(0)))\n")

    def tags_of(fn):
        return {r["tag"] for r in rows if any(f.startswith("prof_app.%s (" % fn) for f in r["frames"])}

    assert tags_of("while_on") == {None}, rows[:5]  # in flight when it started
    assert tags_of("make_bytes") == {"/next"}
    assert tags_of("before_start") == {None}
    assert tags_of("make_json") == {"/a-next"}
    held = sum(r["inuse_space"] for r in rows if any(f.startswith("prof_app.make_bytes (")
                                                      for f in r["frames"]))
    assert 3 * MiB <= held <= 3 * MiB * 1.13, held
