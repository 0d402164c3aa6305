"""trimalloc.trimming(): trim when a block or a function call ends."""
from __future__ import annotations

import contextlib
import functools

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see __init__.py)
if TYPE_CHECKING:
    from typing import Any, Literal, Optional

from . import _hooks, _trimalloc

# core/bind's defaults for a trimmer (core/bind/bind_facts.c)
_MIN_INTERVAL: float = _trimalloc.DEFAULTS["trimmer"]["min_interval"]
_MIN_FREE: int = _trimalloc.DEFAULTS["trimmer"]["min_free"]


class _Trimming(contextlib.ContextDecorator):
    """Context manager and decorator; see trimming()."""

    def __init__(self, min_interval: float = _MIN_INTERVAL, min_free: int = _MIN_FREE) -> None:
        self.min_interval = _hooks.check_interval(min_interval)
        self.min_free = _hooks.check_bytes(min_free, "min_free")
        self.released: Optional[int] = None

    def __enter__(self) -> _Trimming:
        return self

    def __exit__(self, *exc: Any) -> Literal[False]:
        self.released = _hooks.trim_if_due("trimming", self.min_interval, self.min_free)
        return False


def trimming(min_interval: Any = _MIN_INTERVAL, min_free: int = _MIN_FREE) -> Any:
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
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with _Trimming(settings.min_interval, settings.min_free):
                return func(*args, **kwargs)

        wrapper.trimming = settings  # type: ignore[attr-defined]
        return wrapper
    return _Trimming(min_interval, min_free)
