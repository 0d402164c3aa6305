"""The `trimalloc` command (also `python -m trimalloc`)."""
from __future__ import annotations

import errno
import os
import sys

TYPE_CHECKING = False  # typing.TYPE_CHECKING without importing typing (see __init__.py)
if TYPE_CHECKING:
    from typing import Any, Dict, List, Optional, Tuple

from . import DEFAULT_PYTHONMALLOC, __version__, _trimalloc, library_path
from ._report import pymalloc_in_use

USAGE = """\
usage: trimalloc run [--pythonmalloc | --no-pythonmalloc] [--profile DIR] [--] CMD [ARGS...]
       trimalloc top FILE [-n N] [--by TYPE]
       trimalloc flame FILE -o OUT [--collapsed] [--type TYPE]
       trimalloc path
       trimalloc info
       trimalloc --version | --help

commands:
  run    exec CMD with trimalloc preloaded (the bundled library is prepended to
         LD_PRELOAD); CMD's exit status is the command's own, since it replaces
         this process. CMD is found as the shell finds it; from a venv, in the
         venv's bin/ first (put in front of PATH, as activating it would). --pythonmalloc also sets PYTHONMALLOC=malloc so that
         Python's small objects live in trimalloc's pages (default: %s).
         --profile DIR makes DIR and samples CMD's allocations from its start
         (TRIMALLOC_PROF=1), its profiles written as DIR/<CMD's name>.<pid>.*.pb.gz.
  top    the call paths holding the most memory in a heap profile (a .pb.gz
         written by trimalloc.profile.dump(), or any pprof heap profile):
         live bytes, share, objects, bytes allocated, and where (leaf first).
         -n N rows (default 10, 0: all); --by inuse_space (default),
         inuse_objects, alloc_space or alloc_objects
  flame  write a heap profile as a flame graph: a self-contained SVG (opens in
         a browser), or with --collapsed the collapsed stacks flamegraph.pl
         and speedscope read ("root;...;leaf value" lines). -o - is stdout.
         --type: the sample type (default inuse_space)
  path   print the bundled library's path, for a Dockerfile's
         ENV LD_PRELOAD=...
  info   say which allocator this process runs on and where the library is
""" % ("on" if DEFAULT_PYTHONMALLOC else "off")


def _err(msg: str) -> None:
    sys.stderr.write("trimalloc: error: %s\n" % msg)


def _run(args: List[str]) -> int:
    pythonmalloc = DEFAULT_PYTHONMALLOC
    profile: Optional[str] = None
    i = 0
    while i < len(args):
        a = args[i]
        if a == "--":
            i += 1
            break
        if a == "--pythonmalloc":
            pythonmalloc = True
        elif a == "--no-pythonmalloc":
            pythonmalloc = False
        elif a == "--profile" or a.startswith("--profile="):
            if a == "--profile":
                i += 1
                if i == len(args):
                    _err("run: --profile needs a directory: trimalloc run --profile DIR -- CMD")
                    return 2
                a = "--profile=" + args[i]
            profile = a[len("--profile="):]
            if not profile:
                _err("run: --profile needs a directory, got ''")
                return 2
        elif a in ("-h", "--help"):
            sys.stdout.write(USAGE)
            return 0
        elif a.startswith("-"):
            _err("run: unknown option %r (the command goes after --)" % a)
            return 2
        else:
            break
        i += 1
    cmd = args[i:]
    if not cmd:
        _err("run: no command given: trimalloc run -- CMD [ARGS...]")
        return 2
    try:
        lib = library_path()
    except FileNotFoundError as e:
        _err("the bundled library is missing: %s (reinstall trimalloc)" % e.filename)
        return 1
    if profile is not None:
        try:
            _trimalloc.profile_env(profile, cmd[0])
        except OSError as e:
            _err("run: --profile %r: %s" % (profile, e.strerror))
            return 1
        # a Python command imports trimalloc at its start (_bootstrap/sitecustomize.py), which
        # registers the Python frames even if the program never imports trimalloc
        boot = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_bootstrap")
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (boot, os.environ.get("PYTHONPATH")) if p)
    first = _environment_bin()
    path = _trimalloc.search_path(first)
    found = _trimalloc.which(cmd[0], path)
    if found:
        _warn_other_python(cmd, found, first, path)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        _trimalloc.exec(lib, cmd, pythonmalloc, first)
    except OSError as e:
        if e.errno == errno.ENOENT:
            if "/" in cmd[0]:
                _err("cannot run %r: no such file" % cmd[0])
            else:
                _err("cannot run %r: command not found in %s" % (cmd[0], path))
                module = _runnable_module(cmd[0])
                if module:
                    _hint(cmd, module, path, first)
            return 127
        _err("cannot run %r: %s" % (cmd[0], e.strerror))
        return 126
    return 1  # not reached: exec returns only by raising


SAMPLE_TYPES: Tuple[str, ...] = _trimalloc.SAMPLE_TYPES  # core/bind's


def _options(cmd: str, args: List[str], takes_value: Dict[str, str],
             flags: Dict[str, str]) -> Tuple[str, Dict[str, Any]]:
    """FILE and the options of `top`/`flame` (--opt VALUE, --opt=VALUE, -nVALUE).
    Raises ValueError with the message for a usage error (exit status 2)."""
    path: Optional[str] = None
    opts: Dict[str, Any] = {}
    i = 0
    while i < len(args):
        a = args[i]
        i += 1
        if a == "--":
            rest = args[i:]
            if path is None and rest:
                path, rest = rest[0], rest[1:]
            if rest:
                raise ValueError("%s: unexpected argument %r" % (cmd, rest[0]))
            break
        name, eq, value = a.partition("=")
        if len(a) > 2 and a[:2] in takes_value and not a.startswith("--"):
            name, eq, value = a[:2], "=", a[2:]  # -n5, -oout.svg
        if name in takes_value:
            if not eq:
                if i == len(args):
                    raise ValueError("%s: %s needs a value" % (cmd, name))
                value = args[i]
                i += 1
            opts[takes_value[name]] = value
        elif a in flags:
            opts[flags[a]] = True
        elif a.startswith("-") and a != "-":
            raise ValueError("%s: unknown option %r (see trimalloc --help)" % (cmd, a))
        elif path is None:
            path = a
        else:
            raise ValueError("%s: unexpected argument %r (one FILE only)" % (cmd, a))
    if path is None:
        raise ValueError("%s: no profile FILE given" % cmd)
    return path, opts


def _top(args: List[str]) -> int:
    if args[:1] in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    try:
        path, opts = _options("top", args, {"-n": "n", "--by": "by"}, {})
        n = opts.get("n", "10")
        if not n.isdigit():
            raise ValueError("top: -n wants a number of rows >= 0 (0: all), not %r" % n)
        by = opts.get("by", "inuse_space")
        if by not in SAMPLE_TYPES:
            raise ValueError("top: --by wants one of %s, not %r" % (", ".join(SAMPLE_TYPES), by))
    except ValueError as e:
        _err(str(e))
        return 2
    try:
        text = _trimalloc._prof_top_text(path, by, int(n))
    except (ValueError, OSError) as e:
        _err(_reason(e))
        return 1
    sys.stdout.write(text)
    return 0


def _flame(args: List[str]) -> int:
    if args[:1] in (["-h"], ["--help"]):
        sys.stdout.write(USAGE)
        return 0
    try:
        path, opts = _options("flame", args, {"-o": "out", "--output": "out", "--type": "type"},
                              {"--collapsed": "collapsed"})
        if not opts.get("out"):
            raise ValueError("flame: no output given: -o OUT.svg (or -o - for stdout)")
    except ValueError as e:
        _err(str(e))
        return 2
    sys.stdout.flush()  # "-o -": the C code writes to file descriptor 1
    try:
        _trimalloc._prof_flame(path, opts["out"], opts.get("type"), bool(opts.get("collapsed")))
    except (ValueError, OSError) as e:
        _err(_reason(e))
        return 1
    if opts["out"] != "-":
        what = "collapsed stacks" if opts.get("collapsed") else "flame graph"
        sys.stdout.write("wrote %s (%s of %s)\n" % (opts["out"], what, opts.get("type") or "inuse_space"))
    return 0


def _reason(e: Exception) -> str:
    """The reader's one-line message, without OSError's "[Errno N]" prefix."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror
    return str(e)


def _environment_bin() -> Optional[str]:
    """The bin directory of the venv this interpreter runs in, or None (not
    in a venv). `trimalloc run` searches it first and puts it in front of
    PATH, as activating the venv would."""
    if sys.prefix == getattr(sys, "base_prefix", sys.prefix):
        return None
    d = os.path.join(sys.prefix, "bin")
    return d if os.path.isdir(d) else None


def _runnable_module(name: str) -> Optional[str]:
    """The module `python -m` would run for a command name, when this Python
    has it (found, not imported): celery, gunicorn, pytest..."""
    import importlib.util
    for mod in (name, name.replace("-", "_")):
        if not mod.isidentifier():
            continue
        try:
            spec = importlib.util.find_spec(mod)
        except (ImportError, ValueError):
            continue
        if spec is None:
            continue
        dirs = spec.submodule_search_locations
        if dirs is None or any(os.path.isfile(os.path.join(d, "__main__.py")) for d in dirs):
            return mod
    return None


def _python_name(path: str, first: Optional[str]) -> str:
    """How to name this interpreter on the launcher's command line: python3
    when the launcher finds this environment's under that name, else its path."""
    found = _trimalloc.which("python3", path)
    if found:
        if first is not None:
            if os.path.dirname(os.path.abspath(found)) == first:
                return "python3"
        elif os.path.realpath(found) == os.path.realpath(sys.executable):
            return "python3"
    return sys.executable


def _suggestion(cmd: List[str], module: str, path: str, first: Optional[str]) -> str:
    import shlex
    args = [_python_name(path, first), "-m", module] + cmd[1:]
    return "trimalloc run -- " + " ".join(shlex.quote(a) for a in args)


def _hint(cmd: List[str], module: str, path: str, first: Optional[str]) -> None:
    sys.stderr.write("trimalloc: this Python has the module %r; run it with: %s\n"
                     % (module, _suggestion(cmd, module, path, first)))


def _warn_other_python(cmd: List[str], found: str, first: Optional[str], path: str) -> None:
    """In a venv, a script found outside it whose #! names another Python
    (Debian's /usr/bin/gunicorn: #!/usr/bin/python3) cannot import the venv's
    packages: says so, and how to run the module in the venv, once."""
    if first is None or os.path.dirname(os.path.abspath(found)) == first:
        return
    try:
        with open(found, "rb") as f:
            line = f.readline(512)
    except OSError:
        return
    if not line.startswith(b"#!"):
        return
    words = line[2:].split()
    if not words:
        return
    interp = os.fsdecode(words[0])
    if os.path.basename(interp) == "env" and len(words) > 1:
        return  # "#!/usr/bin/env python3": found through PATH, this venv's first
    if not os.path.basename(interp).startswith("python") or os.path.dirname(interp) == first:
        return
    module = _runnable_module(cmd[0])
    if not module:
        return
    sys.stderr.write("trimalloc: warning: %s runs %s, not this venv's Python, and will not see "
                     "the venv's packages; to run it in the venv: %s\n"
                     % (found, interp, _suggestion(cmd, module, path, first)))


def _info() -> int:
    import platform  # here: 8 ms at import, for `trimalloc info` alone

    try:
        lib, missing = library_path(), ""
    except FileNotFoundError as e:
        lib, missing = e.filename, " (missing!)"
    out = sys.stdout
    out.write("trimalloc %s\n" % __version__)
    out.write(
        "backend:      %s (this process: %s %s, pid %d)\n"
        % (_trimalloc.backend(), platform.python_implementation(), platform.python_version(), os.getpid())
    )
    out.write("library:      %s%s\n" % (lib, missing))
    out.write("loaded core:  %s\n" % (_trimalloc.loaded_path() or "none"))
    out.write("purger:       %s\n" % _trimalloc.purger_state())
    out.write("LD_PRELOAD:   %s\n" % os.environ.get("LD_PRELOAD", ""))
    out.write(
        "PYTHONMALLOC: %s (`trimalloc run` sets malloc: %s)\n"
        % (os.environ.get("PYTHONMALLOC", ""),
           "yes, unless --no-pythonmalloc" if DEFAULT_PYTHONMALLOC else "only with --pythonmalloc")
    )
    pools = _trimalloc._pymalloc_pools()
    out.write("pymalloc:     %s\n" % (
        "not in use: every object is in malloc" if not pymalloc_in_use() else
        "trims give back its empty and sparse pools' pages (%d arenas known, %d pools emptied so far)"
        % (pools["arenas"], pools["pools_released"]) if pools["on"] else
        "trims leave its pools alone (pools of one page on this Python, or a version trimalloc does not know)"))
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        sys.stdout.write(USAGE)
        return 0 if args else 2
    cmd, rest = args[0], args[1:]
    if cmd in ("-V", "--version"):
        sys.stdout.write("trimalloc %s\n" % __version__)
        return 0
    if cmd == "run":
        return _run(rest)
    if cmd == "top":
        return _top(rest)
    if cmd == "flame":
        return _flame(rest)
    if rest and cmd in ("path", "info"):
        _err("%s takes no arguments, got %r" % (cmd, rest))
        return 2
    if cmd == "path":
        try:
            sys.stdout.write(library_path() + "\n")
        except FileNotFoundError as e:
            _err("the bundled library is missing: %s (reinstall trimalloc)" % e.filename)
            return 1
        return 0
    if cmd == "info":
        return _info()
    _err("unknown command %r (see trimalloc --help)" % cmd)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
