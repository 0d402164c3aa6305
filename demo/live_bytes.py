"""The floor of a Python process: an estimate of the bytes its live objects hold.

No allocator can hold less than the program's live data. Python does not say
how many bytes are live (tracemalloc would, but it changes what it measures),
so this walks the objects: after a full collection, sys.getsizeof of every
object the garbage collector tracks, plus the untracked objects (str, bytes,
int, float, ...) they refer to directly. It is a lower bound: memory held by C
code outside Python objects is not counted.
"""
import gc
import sys


def python_live_bytes():
    gc.collect()
    objs = gc.get_objects()
    seen = set()
    total = 0
    for o in objs:
        seen.add(id(o))
        total += sys.getsizeof(o)
    for o in objs:
        for r in gc.get_referents(o):
            i = id(r)
            if i not in seen and not gc.is_tracked(r):
                seen.add(i)
                total += sys.getsizeof(r)
    del objs
    return total
