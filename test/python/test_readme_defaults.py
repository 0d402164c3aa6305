"""The hook defaults README.md quotes, held to the one table they come from,
core/bind/bind_facts.c (read here through _trimalloc.DEFAULTS, as both
languages read it). The README keeps its numbers for its readers; a default
changed in bind_facts.c and not in the README, or the other way round, fails
here. Every quote must still be found: a reworded line is updated here too."""
import re
from pathlib import Path

import pytest

from trimalloc import _trimalloc

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
MiB = 1 << 20


def settings(text):
    """{name: value} of the `every`/`min_free`/`min_interval`/`refault_share`
    settings written in text, Ruby (`every: 100`) or Python (`every=100`);
    nil/None is None."""
    out = {}
    for name, value in re.findall(r"\b(every|min_free|min_interval|refault_share)\s*[:=]\s*([^,)`#\n]+)", text):
        value = value.strip()
        if value in ("nil", "None"):
            out[name] = None
        else:
            assert re.fullmatch(r"[\d.]+(\s*<<\s*\d+)?", value), (name, value)
            out[name] = eval(value, {"__builtins__": {}})  # a number or `64 << 20`
    assert out, "no setting in %r" % text
    return out


def once_a_second(text):
    return {"min_interval": 1.0}


def mib(field):
    return lambda text: {field: int(text) * MiB}


def rack_prose(text):
    every, free = text.split(",")
    return {"every": int(every), "min_free": int(free) * MiB}


# (where in the README, the hook whose defaults it quotes, how to read it)
QUOTES = [
    # Ruby
    (r"`Trimalloc\.trim_if_due\(([^)]*)\)`", "trimmer", settings),
    (r"Trimalloc::GC\.enable\(([^)]*)\)", "gc", settings),
    (r"Defaults: jobs `([^`]*)`", "job", settings),
    (r"requests `([^`]*)`\.", "request", settings),
    (r"\ntrimalloc (min_interval: [^#\n]*)# optional", "out_of_band", settings),
    (r"That is why Puma's `min_free`\s+is (\d+) MiB", "out_of_band", mib("min_free")),
    (r"trim after every (\d+)th response, or sooner when (\d+) MiB",
     "request", lambda t: rack_prose(t)),
    (r"use Trimalloc::Rack, ([^\n]*)", "request", settings),
    # Python
    (r"trimalloc\.gc\.enable\(\)\s+# after full \(generation 2\) collections, (at most once a second)",
     "gc", once_a_second),
    (r"trimalloc\.celery\.install\(app\)\s+# ([^\n]*)", "job", settings),
    (r"application = TrimMiddleware\(application, ([^)]*)\)", "request", settings),
    (r"trimalloc\.aiohttp\.install\(app\)\s+# ([^\n]*)", "request", settings),
    (r"app = TrimMiddleware\(app\)\s+# ([^\n]*)", "request", settings),
]


@pytest.mark.parametrize("where,hook,read", QUOTES, ids=[q[0][:40] for q in QUOTES])
def test_readme_quotes_core_binds_defaults(where, hook, read):
    m = re.search(where, README)
    assert m, "README.md no longer has %r: update this test with the README" % where
    quoted = read(",".join(m.groups()))
    want = _trimalloc.DEFAULTS[hook]
    assert quoted == {k: want[k] for k in quoted}, (hook, m.group(0))


def test_readme_puma_is_jobs_but_min_free():
    # "Puma the same but `min_free: 16 << 20`": the out-of-band hook's other
    # defaults are the jobs'
    m = re.search(r"Puma the same but `([^`]*)`", README)
    assert m, "README.md no longer says what Puma's defaults are"
    d = _trimalloc.DEFAULTS
    assert dict(d["job"], **settings(m.group(1))) == d["out_of_band"]
