"""trimalloc.trimming(): trim when a block or a function call ends."""
import contextlib
import functools
from typing import Any, Callable, Optional, TypeVar

from . import _hooks, _trimalloc

F = TypeVar("F", bound=Callable[..., Any])

# after every block, at most once a second: core/bind's defaults for a trimmer
_MIN_INTERVAL = _trimalloc.DEFAULTS["trimmer"]["min_interval"]  # type: float
_MIN_FREE = _trimalloc.DEFAULTS["trimmer"]["min_free"]  # type: int


class _Trimming(contextlib.ContextDecorator):
    """Context manager and decorator; see trimming()."""

    def __init__(self, min_interval=_MIN_INTERVAL, min_free=_MIN_FREE):
        # type: (float, int) -> None
        self.min_interval = _hooks.check_interval(min_interval)
        self.min_free = _hooks.check_bytes(min_free, "min_free")
        self.released = None  # type: Optional[int]

    def __enter__(self):
        # type: () -> _Trimming
        return self

    def __exit__(self, *exc):
        # type: (Any) -> bool
        self.released = _hooks.trim_if_due("trimming", self.min_interval, self.min_free)
        return False


def trimming(min_interval=_MIN_INTERVAL, min_free=_MIN_FREE):
    # type: (Any, int) -> Any
    """Trim when the block ends, rate-limited; also a decorator.

        with trimalloc.trimming():            # trims at most once a second
            build_and_drop_a_big_report()

        @trimalloc.trimming(min_interval=0)   # or plain @trimalloc.trimming
        def handle(job): ...

    min_interval: seconds since the last rate-limited trim (process-wide) before
    another runs; min_free: skip unless the allocator holds at least this many
    free-but-resident bytes. After the block, .released is the bytes released,
    or None when the trim was skipped.
    """
    if callable(min_interval):  # @trimming without parentheses
        func = min_interval

        settings = _Trimming()

        @functools.wraps(func)
        def wrapper(*args, **kwargs):  # type: ignore[no-untyped-def]
            with _Trimming(settings.min_interval, settings.min_free):
                return func(*args, **kwargs)

        wrapper.trimming = settings  # type: ignore[attr-defined]
        return wrapper
    return _Trimming(min_interval, min_free)
