"""What trimalloc._hooks.Tagged (profile.tagged, and the wrapper the aiohttp
and ASGI middlewares put around a request's handler) costs per resumption.

A coroutine suspends `--steps` times (100,000), driven two ways: by hand
(send(None) in a loop, the awaited object yielding once: the wrapper's cost
alone) and by asyncio (`await asyncio.sleep(0)` in one task: a real loop round
trip). Variants, each timed in every round (`--rounds`, 9), min over rounds in
ns per resumption:
  bare      the coroutine awaited directly
  plain     under a minimal Python wrapper (__next__ = send(None)): what any
            Python-level awaitable between task and coroutine costs
  no tag    Tagged(coro, None) on a thread whose tag is None: the bookkeeping,
            no call into the core
  tag       Tagged(coro, "/users/{id}"): the bookkeeping and two calls into
            the core (set the tag, put None back) per resumption
Run it on trimalloc, sampling off (the tag calls reach the core either way):
    python3 -m trimalloc run -- python3 bench/tagged_cost.py [--steps N] [--rounds R]"""
import argparse
import asyncio
import time

import trimalloc
from trimalloc import _hooks


class Yield:
    def __await__(self):
        yield


class Plain:
    __slots__ = ("_it",)

    def __init__(self, it):
        self._it = it

    def __await__(self):
        return self

    def __next__(self):
        return self._it.send(None)

    def send(self, v):
        return self._it.send(v)

    def throw(self, *e):
        return self._it.throw(*e)


def wrap(kind, coro):
    if kind == "bare":
        return coro
    if kind == "plain":
        return Plain(coro)
    return _hooks.Tagged(coro, None if kind == "no tag" else "/users/{id}")


async def yields(n):
    y = Yield()
    for _ in range(n):
        await y


async def sleeps(n):
    for _ in range(n):
        await asyncio.sleep(0)


async def outer(aw):
    await aw


def by_hand(kind, n):
    c = outer(wrap(kind, yields(n)))
    t = time.perf_counter()
    try:
        while True:
            c.send(None)
    except StopIteration:
        pass
    return (time.perf_counter() - t) / n * 1e9


def by_loop(kind, n):
    async def main():
        t = time.perf_counter()
        await wrap(kind, sleeps(n))
        return (time.perf_counter() - t) / n * 1e9
    return asyncio.run(main())


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=100000)
    ap.add_argument("--rounds", type=int, default=9)
    a = ap.parse_args()
    kinds = ("bare", "plain", "no tag", "tag")
    print("trimalloc active: %s; %d resumptions, min of %d rounds, ns per resumption"
          % (trimalloc.active(), a.steps, a.rounds))
    for name, fn in (("by hand", by_hand), ("asyncio.sleep(0)", by_loop)):
        runs = [[fn(k, a.steps) for k in kinds] for _ in range(a.rounds)]
        best = [min(r[i] for r in runs) for i in range(len(kinds))]
        print("%-17s " % name + "  ".join("%s %.0f" % (k, b) for k, b in zip(kinds, best))
              + "  (tag - bare: +%.0f)" % (best[3] - best[0]))


if __name__ == "__main__":
    main()
