"""trimalloc.trimming(): trim at the end of a block or a call, rate-limited."""
import pytest

import trimalloc
from trimalloc import _hooks, _trimalloc


@pytest.fixture
def seen():
    events = []

    def listener(source, released):
        events.append((source, released))

    _hooks.add_listener(listener)
    yield events
    _hooks.remove_listener(listener)


def test_context_manager_trims_at_block_end(seen):
    with trimalloc.trimming(min_interval=0) as t:
        assert seen == []  # not at entry
        data = [bytes(1000) for _ in range(1000)]
        del data
    assert [s for s, _ in seen] == ["trimming"]
    assert isinstance(t.released, int) and seen[0][1] == t.released


def test_context_manager_trims_when_the_block_raises(seen):
    with pytest.raises(KeyError):
        with trimalloc.trimming(min_interval=0):
            raise KeyError("boom")  # the exception is not swallowed
    assert len(seen) == 1 and seen[0][1] is not None


def test_decorator_with_and_without_arguments(seen):
    @trimalloc.trimming(min_interval=0)
    def f(x):
        return x * 2

    @trimalloc.trimming
    def g(x):
        """doc of g"""
        return x + 1

    assert f(21) == 42
    assert len(seen) == 1 and seen[0][1] is not None
    want = _trimalloc.DEFAULTS["trimmer"]  # the defaults: core/bind/bind_facts.c
    assert (g.trimming.min_interval, g.trimming.min_free) == (want["min_interval"], want["min_free"])
    _trimalloc.trim_if_due(0)
    _trimalloc.trim_if_due(3600)  # pins "the last trim" to now, whatever the machine's speed
    assert g(1) == 2
    assert g.__doc__ == "doc of g" and g.__name__ == "g"
    assert seen[-1][0] == "trimming"


def test_rate_limit_skips_and_min_free_skips(seen):
    _trimalloc.trim_if_due(0)
    with trimalloc.trimming(min_interval=3600) as t:
        pass
    assert t.released is None
    with trimalloc.trimming(min_interval=0, min_free=1 << 60) as t:
        pass
    assert t.released is None
    assert seen == [("trimming", None), ("trimming", None)]
