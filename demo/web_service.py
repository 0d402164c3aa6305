"""Scenario 3: an aiohttp service under gunicorn with an hourly sync job.

The setup of the report this project started from: an aiohttp service run by
gunicorn (`-k aiohttp.GunicornWebWorker`, here 2 workers), serving small
requests; once an hour an outside scheduler sends one HTTP request that runs
a data sync between two databases in whichever worker accepts it. That worker
jumps to its peak and, on glibc, stays there for good.

Small requests (/item) look an item up in a catalogue the worker loads at
start, render a small JSON answer and remember the visit in a bounded cache of
recent sessions (the long-lived, slowly replaced data). The job (/job) fetches
`rows` rows from the "source" and as many from the "target" (dicts parsed
from CSV, a page of 1,000 rows at a time, the worker serving other requests
between pages as it would while an async driver waits), compares them by key
and builds the list of changes to apply, then drops it all and answers a
small summary, with the CPU its own code used (job_cpu).

Started by the demo (runner.py) as a user would:
    gunicorn -c gunicorn.conf.py -k aiohttp.GunicornWebWorker 'web_service:make_app()'
Environment: DEMO_JOB_ROWS (rows a side, default 100,000), DEMO_FLOOR_DIR
(each worker writes its floor, live_bytes.python_live_bytes, there as
<pid>.json when it stops). gunicorn.conf.py holds the rest.

The client loop (client(), run by the demo's runner, outside the measured
processes) sends the small requests from two threads and the job twice, and
follows the job's worker: its RSS before the job, at the response and 1 s later.
"""
import asyncio
import collections
import csv
import http.client
import io
import json
import os
import random
import threading
import time

from live_bytes import python_live_bytes

CATALOGUE_ITEMS = 20_000
SESSIONS_KEPT = 20_000
PAGE_ROWS = 1_000
COLUMNS = ["order", "customer", "item", "quantity", "price", "country", "updated"]


def rss_of(pid):
    with open("/proc/%d/statm" % pid) as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def cpu_of(pid):
    """Seconds of CPU (user + system) the process has used."""
    with open("/proc/%d/stat" % pid, "rb") as f:
        fields = f.read().rsplit(b")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


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
        self.jobs = []

    def item(self, n):
        item = self.catalogue[n % CATALOGUE_ITEMS]
        related = [self.catalogue[(n * 31 + k) % CATALOGUE_ITEMS]["name"] for k in range(5)]
        session = {"user": "user-%d" % (n % 50_000), "last_item": item["name"],
                   "seen_at": time.time(), "trail": related[:3]}
        self.sessions[session["user"]] = session
        self.sessions.move_to_end(session["user"])
        while len(self.sessions) > SESSIONS_KEPT:
            self.sessions.popitem(last=False)
        return {"item": item, "related": related, "sessions": len(self.sessions)}

    async def fetch(self, seed, rows, cpu):
        """One side's table, fetched as an async database driver fetches it: a
        page of PAGE_ROWS rows at a time (CSV text, parsed into dicts), the
        worker serving other requests while it waits for the next page. cpu[0]
        adds up the CPU this thread spends on the job (not on the others)."""
        rng = random.Random(seed)
        table = {}
        for start in range(0, rows, PAGE_ROWS):
            t = time.thread_time()
            out = io.StringIO()
            w = csv.writer(out)
            for i in range(start, min(rows, start + PAGE_ROWS)):
                w.writerow([i, "customer-%d" % rng.randrange(200_000), rng.randrange(CATALOGUE_ITEMS),
                            rng.randrange(1, 10), "%.2f" % (rng.random() * 100),
                            "country-%d" % rng.randrange(60), "2026-12-%02d" % rng.randrange(1, 29)])
            for r in csv.DictReader(io.StringIO(out.getvalue()), fieldnames=COLUMNS):
                table[r["order"]] = r
            del out, w
            cpu[0] += time.thread_time() - t
            await asyncio.sleep(0)  # the next page is on its way
        return table

    async def job(self):
        """The hourly sync: both sides fetched, compared by key, the changes listed."""
        t0, cpu = time.monotonic(), [0.0]
        source = await self.fetch(len(self.jobs), self.job_rows, cpu)
        target = await self.fetch(len(self.jobs) + 1000, self.job_rows, cpu)
        t = time.thread_time()
        changes = [(key, row) for key, row in source.items()
                   if target.get(key, {}).get("updated") != row["updated"]]
        by_country = collections.Counter(row["country"] for _, row in changes)
        summary = {"rows": len(source), "changes": len(changes), "countries": len(by_country)}
        del source, target, changes, by_country
        cpu[0] += time.thread_time() - t
        summary.update(seconds=round(time.monotonic() - t0, 3), job_cpu=round(cpu[0], 3))
        self.jobs.append(summary)
        return summary


def make_app():
    from aiohttp import web

    service = Service(int(os.environ.get("DEMO_JOB_ROWS", "100000")))

    async def item(request):
        return web.json_response(service.item(int(request.query.get("id", "0"))))

    async def job(request):
        pid = os.getpid()
        before, cpu0 = rss_of(pid), cpu_of(pid)
        summary = await service.job()
        summary.update(pid=pid, rss_before=before, rss_at_response=rss_of(pid),
                       cpu_before=cpu0, cpu_at_response=cpu_of(pid))
        return web.json_response(summary)

    async def write_floor(app):
        d = os.environ.get("DEMO_FLOOR_DIR")
        if d:
            with open(os.path.join(d, "%d.json" % os.getpid()), "w") as f:
                json.dump({"pid": os.getpid(), "role": "worker", "floor": python_live_bytes()}, f)

    app = web.Application()
    app.router.add_get("/item", item)
    app.router.add_get("/job", job)
    app.on_cleanup.append(write_floor)
    return app


# -- the client loop (runs in the demo's runner, not in the service) ---------------

def get(port, path, timeout=300.0):
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


def run_job(port):
    """The hourly job's request; then the job's worker followed for 1 s more:
    its RSS and CPU 1 s after the response are added to the job's summary."""
    job = get(port, "/job")
    time.sleep(1.0)
    try:
        job["rss_1s"], job["cpu_1s"] = rss_of(job["pid"]), cpu_of(job["pid"])
    except OSError:  # the worker is gone
        job["rss_1s"] = job["cpu_1s"] = None
    return job


def client(port, requests, jobs_at=(0.2, 0.6), threads=2):
    """Send `requests` small requests from `threads` threads; start the job
    (in a thread of its own) when the count passes each fraction of jobs_at.
    Returns the jobs' summaries; raises on the first failed request."""
    counter = iter(range(requests))
    lock = threading.Lock()
    job_marks = sorted(int(f * requests) for f in jobs_at)
    job_threads, job_results, errors = [], [], []

    def one_job():
        try:
            job_results.append(run_job(port))
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
                    t = threading.Thread(target=one_job)
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
