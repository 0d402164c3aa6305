"""A job that builds an export the way a web app's hourly report does."""
import json


def load_customers(n):
    return [{"id": i, "name": "customer-%d" % i, "email": "c%d@example.com" % i} for i in range(n)]


def render_rows(customers):
    return ["%(id)d,%(name)s,%(email)s" % c for c in customers]


def export_json(customers):
    return json.dumps(customers)


def cache_blobs(n):
    return [bytes(64 << 10) for _ in range(n)]


customers = load_customers(120_000)
rows = render_rows(customers)
doc = export_json(customers)
blobs = cache_blobs(300)

from trimalloc import profile  # noqa: E402  (run under `trimalloc run --profile DIR`)

profile.dump("report.pb.gz")
