"""The trim policy every hook shares (core/bind's trimmer), under the same
behaviour names as test/ruby/policy_test.rb. Nothing here depends on the
machine's speed: the rate limit's clock is moved by the test, and the
interpreter-lock tests use a gate the trim waits at."""
import json
import os
import threading
import time

import pytest

import trimalloc
import trimalloc.celery
import trimalloc.gunicorn
from trimalloc import _trimalloc
from trimalloc.wsgi import RequestTrimmer, TrimMiddleware
from conftest import fresh_rate_limit, run_py

HOUR = 3600


fresh = fresh_rate_limit


def test_trims_every_n_events():
    fresh()
    t = _trimalloc.Trimmer(every=3, min_free=None, min_interval=0)
    got = [t.event() is not None for _ in range(7)]
    assert got == [False, False, True, False, False, True, False]
    assert t.stats()["events"] == 7 and t.stats()["trims"] == 2


def test_min_free_decides():
    fresh()
    some = _trimalloc.Trimmer(every=None, min_free=1, min_interval=0)
    assert some.event() is not None  # an interpreter always holds a free byte
    never = _trimalloc.Trimmer(every=None, min_free=1 << 60, min_interval=0)
    assert [never.event() for _ in range(3)] == [None] * 3
    always = _trimalloc.Trimmer(every=None, min_free=0, min_interval=0)  # a job hook's default
    assert always.event() is not None


def test_skipped_count_trim_is_retried_on_next_event():
    fresh()
    t = _trimalloc.Trimmer(every=2, min_free=None, min_interval=HOUR)
    assert _trimalloc.trim_if_due(0) is not None  # a trim just ran elsewhere
    assert [t.event(), t.event(), t.event()] == [None, None, None]  # due at 2, held by the limit
    fresh()
    assert t.event() is not None  # the 4th event: still due, now allowed
    assert t.stats()["trims"] == 1


def test_rate_limit_is_shared_by_every_hook():
    fresh()
    a = _trimalloc.Trimmer(min_interval=HOUR)
    b = _trimalloc.Trimmer(min_interval=HOUR)
    assert a.event() is not None
    assert b.event() is None and _trimalloc.trim_if_due(HOUR) is None
    fresh()
    assert b.event() is not None


def gated_trim_in_thread(trim):
    """Arms the gate, runs trim() in a thread until it waits at the gate."""
    out = {}
    _trimalloc._test_gate(True)
    th = threading.Thread(target=lambda: out.setdefault("released", trim()))
    th.start()
    deadline = time.monotonic() + 60
    while _trimalloc._test_gate_state() != 2 and time.monotonic() < deadline:
        time.sleep(0.005)  # runs only if the trimming thread released the GIL
    return th, out


def test_trim_runs_without_the_interpreter_lock():
    fresh()
    t = _trimalloc.Trimmer(min_interval=0)
    th, out = gated_trim_in_thread(t.event)
    state = _trimalloc._test_gate_state()
    _trimalloc._test_gate_open()
    th.join(60)
    assert state == 2, "this thread ran while the other one trimmed"
    assert _trimalloc._test_gate_state() == 3 and out["released"] is not None
    _trimalloc._test_gate(False)


def test_trim_requested_during_a_trim_is_coalesced():
    fresh()
    t = _trimalloc.Trimmer(min_interval=0)
    other = _trimalloc.Trimmer(min_interval=0)
    before = _trimalloc.policy_stats()["coalesced"]
    th, out = gated_trim_in_thread(t.event)
    assert _trimalloc._test_gate_state() == 2
    assert other.event() is None  # returns at once: folded into the running trim
    _trimalloc._test_gate_open()
    th.join(60)
    _trimalloc._test_gate(False)
    assert other.stats()["coalesced"] == 1 and out["released"] is not None
    assert _trimalloc.policy_stats()["coalesced"] == before + 1


def test_fork_during_a_trim_leaves_the_child_able_to_trim():
    """A worker forked while another thread trims (a Puma or gunicorn master
    running a hook) must not inherit a trim that will never end there."""
    import os
    fresh()
    t = _trimalloc.Trimmer(min_interval=0)
    th, out = gated_trim_in_thread(t.event)
    assert _trimalloc._test_gate_state() == 2  # the parent's trim is running
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: only this thread, no trim running
        try:
            child = _trimalloc.Trimmer(min_interval=0)
            got = {"released": child.event(), "busy": _trimalloc.policy_stats()["busy"],
                   "coalesced": child.stats()["coalesced"]}
            os.write(w, json.dumps(got).encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        got = json.loads(f.read() or "{}")
    os.waitpid(pid, 0)
    _trimalloc._test_gate_open()
    th.join(60)
    _trimalloc._test_gate(False)
    assert got.get("released") is not None and got["coalesced"] == 0, got
    assert got["busy"] == 0, got


def test_free_figure_is_sampled_not_read_per_event():
    fresh()
    t = _trimalloc.Trimmer(every=None, min_free=1 << 60, min_interval=0)
    r0 = _trimalloc.policy_stats()["free_reads"]
    t0 = time.monotonic_ns()
    for _ in range(2000):
        t.event()
    elapsed = time.monotonic_ns() - t0
    reads = _trimalloc.policy_stats()["free_reads"] - r0
    assert 1 <= reads <= elapsed // 10_000_000 + 2, (reads, elapsed)  # at most one per 10 ms


@pytest.fixture
def refault():
    """Sets the refault budget's fault cost (ns a page) and pins the free
    bytes every decision reads; both back to the real ones after the test."""
    yield _trimalloc._test_refault
    _trimalloc._test_refault(0, -1)
    fresh()


PAGE = os.sysconf("SC_PAGESIZE")


def test_cheap_faults_let_back_to_back_jobs_each_trim(refault):
    fresh()
    refault(1e-9, 64 << 20)  # 64 MiB free after every job, faults all but free
    t = _trimalloc.Trimmer(min_interval=0, refault_share=0.1)
    got = []
    for _ in range(5):
        _trimalloc._advance_cpu(1e-6)  # each job runs (at least) a microsecond
        got.append(t.event() is not None)
    assert got == [True] * 5
    assert t.stats()["trims"] == 5 and t.stats()["refault_skips"] == 0


def test_dear_faults_wait_until_the_job_spent_enough_cpu(refault):
    fresh()
    refault(1e6, 1000 * PAGE)  # 1000 pages free at 1 ms each: a trim costs 1 s of refaults
    t = _trimalloc.Trimmer(min_interval=0, refault_share=0.1)  # so it needs 10 s of CPU
    before = _trimalloc.policy_stats()["refault_skips"]
    assert t.event() is not None  # an hour of CPU since the last trim (fresh)
    assert t.event() is None  # back to back: held back
    _trimalloc._advance_cpu(5)
    assert t.event() is None  # 0.5 s of budget for 1 s of refaults
    _trimalloc._advance_cpu(6)
    assert t.event() is not None  # 11 s of CPU: 1.1 s of budget
    assert t.stats()["refault_skips"] == 2 and t.stats()["trims"] == 2
    assert _trimalloc.policy_stats()["refault_skips"] == before + 2
    refault(1e6, 0)
    assert t.event() is not None  # nothing free: nothing to refault


def test_trim_held_back_by_the_budget_runs_when_the_worker_goes_idle(refault):
    fresh()
    refault(1e6, 1000 * PAGE)
    t = _trimalloc.Trimmer(min_interval=0, refault_share=0.1)
    assert t.event() is not None
    idle = _trimalloc.policy_stats()["idle_trims"]
    assert t.event() is None and _trimalloc.policy_stats()["pending"]
    _trimalloc._advance_clock(2)  # no job for 2 s: idle, and an idle worker refaults nothing
    deadline = time.monotonic() + 60
    while _trimalloc.policy_stats()["idle_trims"] == idle and time.monotonic() < deadline:
        time.sleep(0.005)
    assert _trimalloc.policy_stats()["idle_trims"] == idle + 1


def test_count_trigger_and_no_share_are_not_priced(refault):
    fresh()
    refault(1e6, 1000 * PAGE)
    counted = _trimalloc.Trimmer(every=1, min_free=None, min_interval=0, refault_share=0.1)
    plain = _trimalloc.Trimmer(min_interval=0)  # refault_share 0: no budget
    assert [counted.event() is not None, plain.event() is not None] * 2 == [True, True] * 2


def test_fault_cost_is_measured():
    assert _trimalloc.policy_stats()["fault_ns"] > 0


OLD_GLIBC = r'''
import json
from trimalloc import _trimalloc
t = _trimalloc.Trimmer(every=None, min_free=1, min_interval=0)
print(json.dumps({"source": _trimalloc.free_source(), "free": _trimalloc.free_bytes(),
                  "fired": t.event() is not None}))
'''


@pytest.mark.parametrize("old, source", [("1", "mallinfo"), ("2", "unknown")])
def test_hooks_fire_on_old_glibc(old, source):
    r = json.loads(run_py(OLD_GLIBC, TRIMALLOC_TEST_OLD_GLIBC=old).stdout)
    assert r["source"] == source
    assert r["fired"], r  # a threshold that cannot be read never silences the hook


def test_free_figure_is_the_cores_dirty_counter(fields):
    want = "dirty" if "dirty" in fields else "resident"
    code = "from trimalloc import _trimalloc; print(_trimalloc.free_source())"
    assert run_py(code, preload=True).stdout.strip() == want


def test_defaults_are_core_binds():
    # One table, core/bind/bind_facts.c, read by both languages (the Ruby
    # suite checks its hooks against the same table, Trimalloc::Native::DEFAULTS):
    # a default spelled again in Python and changed there fails here.
    d = _trimalloc.DEFAULTS
    assert set(d) == {"trimmer", "gc", "job", "request", "out_of_band"}, d

    def settings(h):
        t = getattr(h, "trimmer", h)  # TrimMiddleware holds its trimmer
        return {"every": h.every, "min_free": h.min_free, "min_interval": h.min_interval,
                "refault_share": t.refault_share}

    # the refault budget is the job hooks' default, and no other hook has one unless asked
    assert {k: h["refault_share"] for k, h in d.items()} == {
        "trimmer": 0.0, "gc": 0.0, "job": 0.1, "request": 0.0, "out_of_band": 0.0}
    assert settings(TrimMiddleware(lambda e, s: [])) == d["request"]
    assert settings(trimalloc.gunicorn.post_request.trimmer) == d["request"]
    assert settings(trimalloc.gunicorn.make_post_request().trimmer) == d["request"]
    trimalloc.celery.install()
    try:
        assert settings(trimalloc.celery._settings["trimmer"]) == d["job"]
    finally:
        trimalloc.celery.uninstall()
    assert settings(_trimalloc.Trimmer()) == d["trimmer"]
    block = trimalloc.trimming()
    assert (block.min_interval, block.min_free) == (d["trimmer"]["min_interval"], d["trimmer"]["min_free"])
    trimalloc.gc.enable()
    try:
        assert trimalloc.gc.stats()["min_interval"] == d["gc"]["min_interval"]
    finally:
        trimalloc.gc.disable()


def test_counter_names_are_core_binds():
    assert tuple(_trimalloc.Trimmer(every=1).stats()) == _trimalloc.TRIMMER_COUNTS
    assert set(trimalloc.celery.stats()) == set(_trimalloc.TRIMMER_COUNTS) | {"tasks"}
    assert "refault_skips" in _trimalloc.TRIMMER_COUNTS
    assert set(_trimalloc.policy_stats()) == {"pending", "busy", "deferred", "coalesced", "free_reads",
                                              "refault_skips", "idle_trims", "fault_ns"}
    # the preload's results by the names trimalloc.preload uses; their
    # numbers are core/bind's (TA_PRELOAD_*), read from there, never spelled
    codes = _trimalloc.PRELOAD
    assert set(codes) == {"failed", "active", "guard", "forked", "rewritten", "not_a_file", "no_library"}
    assert len(set(codes.values())) == len(codes) and all(type(c) is int for c in codes.values()), codes


def test_old_option_names_warn_once():
    with pytest.warns(DeprecationWarning, match="free_threshold is deprecated, use min_free"):
        w = TrimMiddleware(lambda e, s: [], free_threshold=1 << 20)
    assert w.min_free == 1 << 20
    with pytest.warns(DeprecationWarning, match="free_threshold"):
        hook = trimalloc.gunicorn.make_post_request(free_threshold=5)
    assert hook.trimmer.min_free == 5
    with pytest.warns(DeprecationWarning, match="min_freed is deprecated, use min_free"):
        trimalloc.celery.install(min_freed=7)
    try:
        assert trimalloc.celery._settings["trimmer"].min_free == 7
    finally:
        trimalloc.celery.uninstall()
    with pytest.raises(TypeError, match="not both"):
        RequestTrimmer(min_free=1, free_threshold=2)


def test_wrong_arguments_name_the_value():
    # checked in Python (trimalloc._hooks.new_trimmer, which every hook uses);
    # the extension's Trimmer only converts
    from trimalloc import _hooks

    def trimmer(**kw):
        settings = dict(_trimalloc.DEFAULTS["trimmer"], **kw)
        return _hooks.new_trimmer(settings["every"], settings["min_free"], settings["min_interval"],
                                  settings["refault_share"])

    with pytest.raises(ValueError, match="both None"):
        trimmer(every=None, min_free=None)
    with pytest.raises(ValueError, match="0"):
        trimmer(every=0)
    with pytest.raises(TypeError, match="'3'"):
        trimmer(every="3")
    with pytest.raises(ValueError, match="-1"):
        trimmer(min_free=-1)
    with pytest.raises(TypeError, match="1.5"):
        trimmer(min_free=1.5)
    with pytest.raises(ValueError, match="-2"):
        trimmer(min_interval=-2)
    with pytest.raises(ValueError, match=str(1 << 70)):
        trimmer(min_free=1 << 70)
    with pytest.raises(ValueError, match="refault_share.*-0.5"):
        trimmer(refault_share=-0.5)
    with pytest.raises(ValueError, match="refault_share.*inf"):
        trimmer(refault_share=float("inf"))
    with pytest.raises(TypeError, match="refault_share.*'lots'"):
        trimmer(refault_share="lots")
    with pytest.raises(TypeError, match="refault_share.*True"):
        trimmer(refault_share=True)
    with pytest.raises(TypeError, match="refault_share.*'lots'"):
        trimalloc.celery.install(refault_share="lots")
    assert trimmer(refault_share=0.25).refault_share == 0.25
    trimalloc.celery.install(refault_share=0.25)
    try:
        assert trimalloc.celery._settings["trimmer"].refault_share == 0.25
    finally:
        trimalloc.celery.uninstall()
