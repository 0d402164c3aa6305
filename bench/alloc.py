"""Shared by the Python benchmark scripts: which allocator serves malloc in
this process, its trim call (same lookup order as bench/common.h), RSS and
minor faults, and the "BENCH {...}" result line bench/run reads."""
import ctypes
import json
import os
import resource
import sys

_libc = ctypes.CDLL(None)
_PAGE = os.sysconf("SC_PAGESIZE")


def _sym(name):
    try:
        return getattr(_libc, name)
    except AttributeError:
        return None


def _addr(name):
    f = _sym(name)
    return ctypes.cast(f, ctypes.c_void_p).value if f is not None else None


def _allocated():
    f = _sym("trimalloc_stats_json")
    f.restype = ctypes.c_size_t
    f.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    buf = ctypes.create_string_buffer(8192)
    f(buf, len(buf))
    return json.loads(buf.value.decode())["allocated"]


def _trimalloc_active():
    t = _addr("trimalloc_malloc")
    if t is None:
        return False
    if _addr("malloc") == t:
        return True
    # Debian's python3 is not position-independent: dlsym("malloc") gives
    # its own PLT stub, not the definition. Ask trimalloc instead: a block
    # allocated through malloc must show in its stats.
    m, fr = _sym("malloc"), _sym("free")
    m.restype, m.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    fr.restype, fr.argtypes = None, [ctypes.c_void_p]
    before = _allocated()
    p = m(8 << 20)
    after = _allocated()
    fr(p)
    return after - before >= (8 << 20)


def allocator():
    if _trimalloc_active():
        return "trimalloc"
    if _sym("mi_malloc") is not None:
        return "mimalloc"
    if _sym("mallctl") is not None:
        return "jemalloc"
    return "glibc"


def trim_function():
    """(name, callable) releasing the loaded allocator's free memory now."""
    f = _sym("trimalloc_trim")
    if f is not None:
        f.restype, f.argtypes = ctypes.c_size_t, []
        return "trimalloc_trim()", lambda: f()
    f = _sym("mi_collect")
    if f is not None:
        f.restype, f.argtypes = None, [ctypes.c_bool]
        return "mi_collect(true)", lambda: f(True)
    f = _sym("mallctl")
    if f is not None:
        f.restype = ctypes.c_int
        f.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        return "mallctl(arena.4096.purge)", lambda: f(b"arena.4096.purge", None, None, None, 0)
    f = _sym("malloc_trim")
    if f is not None:
        f.restype, f.argtypes = ctypes.c_int, [ctypes.c_size_t]
        return "malloc_trim(0)", lambda: f(0)
    return "none", lambda: None


def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


def minflt():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def opt(name, default):
    if name in sys.argv:
        return int(sys.argv[sys.argv.index(name) + 1])
    return default


def report(workload, **fields):
    line = {"workload": workload, "allocator": allocator(),
            "pythonmalloc": os.environ.get("PYTHONMALLOC", "")}
    line.update(fields)
    print("BENCH " + json.dumps(line), flush=True)
