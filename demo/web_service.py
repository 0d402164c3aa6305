"""Scenario 3: a web service with an hourly job.

A WSGI service (the standard library's wsgiref server, one thread per request)
serves small requests: each looks an item up in a catalogue the service loads
at start, renders a small JSON answer and remembers the visit in a bounded
cache of recent sessions (the service's long-lived, slowly replaced data).
Once in a while a request to /job runs the "hourly job": it loads a large
data set (a CSV export parsed into dicts, ~100+ MB of Python objects),
aggregates it and drops it, while the small requests go on in other threads.

    python web_service.py serve [--trim-middleware] [--job-rows N]
prints "demo-listening PORT" on stdout once it listens on 127.0.0.1:PORT (a
free port chosen by the kernel), and serves until SIGTERM (exit status 0).
--trim-middleware wraps the app in trimalloc.wsgi.TrimMiddleware (its
defaults: a trim every 100 requests, or earlier when 64 MiB are free).

The client loop (client(), run by the demo's runner, outside the measured
process) sends the small requests from two threads and triggers the job
twice; /floor answers the service's floor (live_bytes.python_live_bytes).
"""
import collections
import csv
import http.client
import io
import json
import random
import signal
import socketserver
import sys
import threading
import time
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

from live_bytes import python_live_bytes

CATALOGUE_ITEMS = 20_000
SESSIONS_KEPT = 20_000


class Service:
    def __init__(self, job_rows):
        self.job_rows = job_rows
        rng = random.Random(7)
        self.catalogue = {
            i: {"id": i, "name": "item %d" % i, "price": round(rng.random() * 100, 2),
                "tags": ["tag-%d" % rng.randrange(100) for _ in range(3)]}
            for i in range(CATALOGUE_ITEMS)
        }
        self.sessions = collections.OrderedDict()
        self.lock = threading.Lock()
        self.jobs = []

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "/")
        query = environ.get("QUERY_STRING", "")
        if path == "/item":
            body = self.item(query)
        elif path == "/job":
            body = self.job()
        elif path == "/floor":
            body = {"floor": python_live_bytes(), "sessions": len(self.sessions), "jobs": self.jobs}
        else:
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found\n"]
        data = json.dumps(body).encode()
        start_response("200 OK", [("Content-Type", "application/json"),
                                  ("Content-Length", str(len(data)))])
        return [data]

    def item(self, query):
        n = int(query.partition("=")[2] or 0)
        item = self.catalogue[n % CATALOGUE_ITEMS]
        related = [self.catalogue[(n * 31 + k) % CATALOGUE_ITEMS]["name"] for k in range(5)]
        session = {"user": "user-%d" % (n % 50_000), "last_item": item["name"],
                   "seen_at": time.time(), "trail": related[:3]}
        with self.lock:
            self.sessions[session["user"]] = session
            self.sessions.move_to_end(session["user"])
            while len(self.sessions) > SESSIONS_KEPT:
                self.sessions.popitem(last=False)
        return {"item": item, "related": related, "sessions": len(self.sessions)}

    def job(self):
        # The hourly job: load an export (CSV text -> list of dicts), aggregate, drop.
        t0 = time.monotonic()
        rng = random.Random(len(self.jobs))
        out = io.StringIO()
        w = csv.writer(out)
        w.writerow(["order", "customer", "item", "quantity", "price", "country", "note"])
        for i in range(self.job_rows):
            w.writerow([i, "customer-%d" % rng.randrange(200_000), rng.randrange(CATALOGUE_ITEMS),
                        rng.randrange(1, 10), "%.2f" % (rng.random() * 100),
                        "country-%d" % rng.randrange(60), "note %x" % rng.getrandbits(64)])
        text = out.getvalue()
        del out
        rows = list(csv.DictReader(io.StringIO(text)))
        del text
        by_country = collections.defaultdict(float)
        for r in rows:
            by_country[r["country"]] += int(r["quantity"]) * float(r["price"])
        summary = {"rows": len(rows), "countries": len(by_country),
                   "total": round(sum(by_country.values()), 2),
                   "seconds": round(time.monotonic() - t0, 3)}
        del rows, by_country
        self.jobs.append(summary)
        return summary


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format, *args):
        pass


class ThreadingWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 64


def serve(argv):
    job_rows = int(argv[argv.index("--job-rows") + 1]) if "--job-rows" in argv else 150_000
    app = Service(job_rows)
    if "--trim-middleware" in argv:
        from trimalloc.wsgi import TrimMiddleware

        app = TrimMiddleware(app)
    server = ThreadingWSGIServer(("127.0.0.1", 0), QuietHandler)
    server.set_app(app)

    def on_term(signum, frame):
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    print("demo-listening %d" % server.server_address[1], flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
    return 0


# -- the client loop (runs in the demo's runner, not in the service) ---------------

def get(port, path, timeout=120.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError("GET %s: HTTP %d" % (path, resp.status))
        return json.loads(data)
    finally:
        conn.close()


def client(port, requests, jobs_at=(0.2, 0.6), threads=2):
    """Send `requests` small requests from `threads` threads; start the job
    (in a thread of its own) when the count passes each fraction of jobs_at.
    Returns the jobs' summaries; raises on the first failed request."""
    counter = iter(range(requests))
    lock = threading.Lock()
    job_marks = sorted(int(f * requests) for f in jobs_at)
    job_threads, job_results, errors = [], [], []

    def run_job():
        try:
            job_results.append(get(port, "/job"))
        except Exception as e:  # reported by the caller
            errors.append(e)

    def worker():
        while not errors:
            with lock:
                n = next(counter, None)
                if n is None:
                    return
                if job_marks and n >= job_marks[0]:
                    job_marks.pop(0)
                    t = threading.Thread(target=run_job)
                    t.start()
                    job_threads.append(t)
            try:
                get(port, "/item?id=%d" % (n * 7919))
            except Exception as e:
                errors.append(e)

    ws = [threading.Thread(target=worker) for _ in range(threads)]
    for t in ws:
        t.start()
    for t in ws:
        t.join()
    for t in list(job_threads):
        t.join()
    if errors:
        raise errors[0]
    return job_results


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        sys.exit(serve(sys.argv[2:]))
    sys.exit("usage: web_service.py serve [--trim-middleware] [--job-rows N]")
