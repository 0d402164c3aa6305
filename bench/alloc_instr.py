#!/usr/bin/python3
"""How many instructions the allocator itself executes in a program: the
program runs under valgrind's callgrind with each preloaded allocator in
turn, and the instructions of the functions in the allocator's own shared
object are summed (callgrind attributes every function to its object:
`ob=` lines), beside the whole program's. Counted, not timed: the same on a
busy machine. glibc has no row of its own: its malloc lives in libc.so.6
with everything else. Functions callgrind places in no object ("???", as
it does trimalloc's ta_prof_text section: malloc, realloc, calloc) count
for the library that defines them (nm); before 2026-12-06 they were left
out, so the earlier results files undercount trimalloc by its malloc.

    bench/alloc_instr.py [--lib NAME=PATH ...] [--env K=V ...] -- CMD ARGS...

Default libraries: mimalloc (Debian's libmimalloc2.0) and trimalloc
(core/build/libtrimalloc.so). Example, the Python workload of the issue:

    bench/alloc_instr.py --env PYTHONMALLOC=malloc -- \\
        /usr/bin/python3 bench/py_tasks.py --tasks 4 --idle-ms 0

Prints one table: per allocator, the program's instructions, the
allocator's, its share, and the ratio of the allocator's to each other's.
Runs of one library differ by about 3% (the purger thread and the
allocator's clock-driven decisions run under callgrind too): compare within
one run, and take small differences as noise. PYTHONHASHSEED is 0 unless
--env sets it."""
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LIBS = [("mimalloc", "/usr/lib/x86_64-linux-gnu/libmimalloc.so.2"),
                ("trimalloc", os.path.join(HERE, "..", "core", "build", "libtrimalloc.so"))]


def parse(argv):
    if "--" not in argv:
        raise SystemExit("usage: alloc_instr.py [--lib NAME=PATH ...] [--env K=V ...] -- CMD ARGS...")
    cut = argv.index("--")
    opts, cmd = argv[:cut], argv[cut + 1:]
    libs, env = [], {}
    i = 0
    while i < len(opts):
        if opts[i] in ("--lib", "--env") and i + 1 < len(opts) and "=" in opts[i + 1]:
            k, v = opts[i + 1].split("=", 1)
            (libs.append((k, v)) if opts[i] == "--lib" else env.__setitem__(k, v))
            i += 2
        else:
            raise SystemExit("alloc_instr.py: unknown or incomplete option %r" % opts[i])
    if not cmd:
        raise SystemExit("alloc_instr.py: no command after --")
    return libs or DEFAULT_LIBS, env, cmd


def name_of(line, table):
    """The name a "key=(N) name" or "key=(N)" line gives, remembering N in table."""
    val = line.split("=", 1)[1].strip()
    if val.startswith("("):
        key, _, rest = val.partition(")")
        if rest.strip():
            table[key] = rest.strip()
        val = table.get(key, val)
    return val


def self_cost_by_object(path, unknown=None):
    """{object: instructions} from a callgrind output file (self cost only:
    the cost lines that follow an fn= line belong to that function, and the
    function to the last ob= named; calls= lines are followed by one line of
    inclusive cost, which is skipped). Names may be compressed: "(N) name"
    defines N, "(N)" refers to it. Functions callgrind could not place in an
    object (ob "???": trimalloc's code in its own ta_prof_text section, which
    holds malloc, realloc and calloc) add their cost to unknown[function]."""
    names, out = {}, {}
    fnames = {}
    ob, fn, skip = None, None, False
    events = None
    with open(path) as f:
        for line in f:
            if line.startswith("events:"):
                events = line.split()[1:]
                continue
            if line.startswith(("ob=", "cob=")):
                val = name_of(line, names)
                if line.startswith("ob="):
                    ob = val
                continue
            if line.startswith(("fn=", "cfn=")):
                val = name_of(line, fnames)
                if line.startswith("fn="):
                    fn = val
                continue
            if line.startswith("calls="):
                skip = True
                continue
            if not line or not (line[0].isdigit() or line[0] in "+-*"):
                continue
            if skip:
                skip = False
                continue
            parts = line.split()
            if events and len(parts) >= 2 and ob is not None:
                try:
                    out[ob] = out.get(ob, 0) + int(parts[1])
                    if unknown is not None and ob == "???" and fn:
                        name = fn.split(":", 1)[1] if fn.startswith("???:") else fn
                        unknown[name] = unknown.get(name, 0) + int(parts[1])
                except ValueError:
                    pass
    return out


def defined_functions(lib):
    """The names of the functions lib defines (its symbol tables, nm)."""
    names = set()
    for flags in (["--defined-only"], ["-D", "--defined-only"]):
        r = subprocess.run(["nm"] + flags + [lib], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        for line in r.stdout.splitlines():
            parts = line.split()
            if len(parts) == 3 and parts[1] in "TtWi":
                names.add(parts[2].split("@", 1)[0])
    return names


def main():
    libs, extra_env, cmd = parse(sys.argv[1:])
    rows = []
    for name, lib in libs:
        lib = os.path.realpath(lib)
        if not os.path.exists(lib):
            print("NOTE: %s left out: %s is missing" % (name, lib), file=sys.stderr)
            continue
        with tempfile.TemporaryDirectory() as tmp:
            env = dict(os.environ, **extra_env)
            env.pop("LD_PRELOAD", None)
            # Python's string hashes are random per process, and with them the
            # order dicts and sets allocate in: fixed unless --env sets it
            # (two runs of one library spread 3-5% without, ~3% with).
            env.setdefault("PYTHONHASHSEED", "0")
            # The preload goes to the program, not to valgrind: `env` sets it
            # and execs the program, which valgrind follows.
            argv = ["valgrind", "--tool=callgrind", "--trace-children=yes",
                    "--callgrind-out-file=" + os.path.join(tmp, "cg.%p"), "env", "LD_PRELOAD=" + lib] + cmd
            r = subprocess.run(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            outs = [os.path.join(tmp, f) for f in os.listdir(tmp) if f.startswith("cg.")]
            if r.returncode != 0 or not outs:
                print("NOTE: %s failed: %s" % (name, r.stderr.strip().splitlines()[-1:]), file=sys.stderr)
                continue
            cost, unknown = {}, {}
            for out in outs:
                for k, v in self_cost_by_object(out, unknown).items():
                    cost[k] = cost.get(k, 0) + v
        total = sum(cost.values())
        mine = sum(v for k, v in cost.items() if os.path.realpath(k) == lib or os.path.basename(k) ==
                   os.path.basename(lib))
        # and the functions callgrind left without an object that the library
        # defines (before 2026-12-06 these were left out: malloc among them)
        own = defined_functions(lib)
        mine += sum(v for f, v in unknown.items() if f in own)
        rows.append((name, total, mine))
    if not rows:
        raise SystemExit("alloc_instr.py: no allocator ran")
    print("command: %s%s" % (" ".join("%s=%s" % kv for kv in extra_env.items()) + " " if extra_env else "",
                             " ".join(cmd)))
    print("%-12s %14s %14s %7s  %s" % ("allocator", "program (M)", "allocator (M)", "share",
                                       "allocator's ratio to " + ", ".join(r[0] for r in rows)))
    for name, total, mine in rows:
        ratios = ", ".join("%.2fx" % (mine / o[2]) if o[2] else "-" for o in rows)
        print("%-12s %14.1f %14.1f %6.1f%%  %s" % (name, total / 1e6, mine / 1e6, 100.0 * mine / total, ratios))


if __name__ == "__main__":
    main()
