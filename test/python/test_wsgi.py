"""The WSGI middleware under wsgiref's server, and the gunicorn hooks."""
import threading
import urllib.request
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

import trimalloc.gunicorn
from trimalloc import _trimalloc
from trimalloc.wsgi import RequestTrimmer, TrimMiddleware
from conftest import fresh_rate_limit, wait_until


class QuietHandler(WSGIRequestHandler):
    def log_message(self, *args):  # keep pytest's output clean
        pass


def app(environ, start_response):
    # Allocate and drop 4 MiB in 4000-byte pieces, with a pin allocated after
    # them that lives until the response is closed.
    size = 4000
    junk = [b"x" * size for _ in range(1024)]
    pin = b"p" * size
    del junk
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok ", pin[:1]]


@pytest.fixture
def serve():
    servers = []

    def start(wsgi_app):
        httpd = make_server("127.0.0.1", 0, wsgi_app, handler_class=QuietHandler)
        t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
        t.start()
        servers.append((httpd, t))
        return "http://127.0.0.1:%d/" % httpd.server_port

    yield start
    for httpd, t in servers:
        httpd.shutdown()
        t.join(10)
        httpd.server_close()


def get(url):
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only
    with opener.open(url, timeout=10) as r:
        return r.read()


def test_middleware_trims_every_n_requests(serve):
    fresh_rate_limit()
    mw = TrimMiddleware(app, every=3, min_free=None, min_interval=0)
    url = serve(mw)
    before = trimalloc.stats()["trims"]
    for _ in range(7):
        assert get(url) == b"ok p"
    assert wait_until(lambda: mw.requests == 7, timeout=10)
    assert mw.trims == 2  # after requests 3 and 6
    assert trimalloc.stats()["trims"] - before == 2


def test_middleware_trims_past_the_free_threshold(serve):
    fresh_rate_limit()
    never = TrimMiddleware(app, every=None, min_free=1 << 60, min_interval=0)
    url = serve(never)
    for _ in range(3):
        get(url)
    assert wait_until(lambda: never.requests == 3, timeout=10)
    assert never.trims == 0
    # Each request leaves MiBs free but resident (the pin keeps glibc from shrinking its heap).
    eager = TrimMiddleware(app, every=None, min_free=1 << 20, min_interval=0)
    url = serve(eager)
    for _ in range(3):
        # The free figure is sampled at most once per 10 ms (a request must not
        # read it every time): move the clock past that, so each request reads
        # it afresh however fast the machine serves them.
        fresh_rate_limit()
        get(url)
    assert wait_until(lambda: eager.requests == 3, timeout=10)
    assert eager.trims >= 1


def test_middleware_counts_requests_whose_app_raises():
    def broken(environ, start_response):
        raise RuntimeError("app failed")

    fresh_rate_limit()
    mw = TrimMiddleware(broken, every=1, min_free=None, min_interval=0)
    with pytest.raises(RuntimeError):
        mw({}, lambda *a: None)
    assert mw.requests == 1 and mw.trims == 1


def test_middleware_closes_the_app_body():
    closed = []

    class Body(list):
        def close(self):
            closed.append(True)

    fresh_rate_limit()
    mw = TrimMiddleware(lambda e, s: Body([b"a"]), every=1, min_free=None, min_interval=0)
    body = mw({}, lambda *a: None)
    assert list(body) == [b"a"] and mw.requests == 0  # counted at close, not before
    body.close()
    assert closed == [True] and mw.requests == 1 and mw.trims == 1


def test_middleware_arguments():
    with pytest.raises(ValueError, match="0"):
        TrimMiddleware(app, every=0)
    with pytest.raises(TypeError, match="'many'"):
        TrimMiddleware(app, every="many")
    with pytest.raises(ValueError, match="both None"):
        TrimMiddleware(app, every=None, min_free=None)
    with pytest.raises(TypeError, match="42"):
        TrimMiddleware(42)


def test_gunicorn_post_request_trims_every_n():
    fresh_rate_limit()
    hook = trimalloc.gunicorn.make_post_request(every=2, min_free=None, min_interval=0)
    for _ in range(5):
        hook(None, None, {}, None)
    assert hook.trimmer.requests == 5 and hook.trimmer.trims == 2
    # the ready-made hook has the documented defaults
    default = trimalloc.gunicorn.post_request.trimmer
    want = _trimalloc.DEFAULTS["request"]  # core/bind/bind_facts.c
    assert (default.every, default.min_free, default.min_interval) == (
        want["every"], want["min_free"], want["min_interval"])


def test_gunicorn_post_worker_init_logs_the_backend():
    lines = []

    class Log:
        def info(self, msg):
            lines.append(msg)

    class Worker:
        pid = 4242
        log = Log()

    trimalloc.gunicorn.post_worker_init(Worker())
    assert len(lines) == 1 and lines[0].startswith("trimalloc: worker 4242 runs on glibc ("), lines
    assert "trimalloc run --" in lines[0] and "gunicorn.conf.py" in lines[0]  # how to change it


def test_middleware_keeps_the_servers_file_wrapper(tmp_path):
    """gunicorn sends a wsgi.file_wrapper body with sendfile: the middleware
    must hand the same kind of object back, and still count the request."""
    class FileWrapper:  # as gunicorn's: a plain class the server recognises by type
        def __init__(self, filelike, blksize=8192):
            self.filelike = filelike

        def __iter__(self):
            return iter(lambda: self.filelike.read(8192), b"")

        def close(self):
            self.filelike.close()

    path = tmp_path / "f.bin"
    path.write_bytes(b"z" * 100)

    def files(environ, start_response):
        start_response("200 OK", [])
        return environ["wsgi.file_wrapper"](open(str(path), "rb"))

    fresh_rate_limit()
    mw = TrimMiddleware(files, every=1, min_free=None, min_interval=0)
    body = mw({"wsgi.file_wrapper": FileWrapper}, lambda *a: None)
    assert isinstance(body, FileWrapper)  # sendfile still possible
    assert b"".join(body) == b"z" * 100 and mw.requests == 0
    body.close()
    assert body.filelike.closed and mw.requests == 1 and mw.trims == 1
