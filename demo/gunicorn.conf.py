"""gunicorn.conf.py of the demo's web scenario (web_service.py): 2 aiohttp
workers on 127.0.0.1:DEMO_PORT. DEMO_TRIM=1 adds the README's line; the
master writes its floor into DEMO_FLOOR_DIR when it exits (each worker writes
its own, web_service.py)."""
import json
import os

bind = "127.0.0.1:%s" % os.environ["DEMO_PORT"]
workers = 2
timeout = 300
graceful_timeout = 15
loglevel = "info"
errorlog = "-"

if os.environ.get("DEMO_TRIM") == "1":
    from trimalloc.gunicorn import post_request, post_worker_init  # noqa: F401  (the README's line)


def on_exit(server):
    d = os.environ.get("DEMO_FLOOR_DIR")
    if d:
        from live_bytes import python_live_bytes

        with open(os.path.join(d, "%d.json" % os.getpid()), "w") as f:
            json.dump({"pid": os.getpid(), "role": "master", "floor": python_live_bytes()}, f)
