"""The `trimalloc` command (also `python -m trimalloc`)."""
import errno
import os
import platform
import sys
from typing import List, Optional

from . import DEFAULT_PYTHONMALLOC, __version__, _trimalloc, active, library_path, stats

USAGE = """\
usage: trimalloc run [--pythonmalloc | --no-pythonmalloc] [--] CMD [ARGS...]
       trimalloc path
       trimalloc info
       trimalloc --version | --help

commands:
  run    exec CMD with trimalloc preloaded (the bundled library is prepended to
         LD_PRELOAD); CMD's exit status is the command's own, since it replaces
         this process. --pythonmalloc also sets PYTHONMALLOC=malloc so that
         Python's small objects live in trimalloc's pages (default: %s).
  path   print the bundled library's path, for a Dockerfile's
         ENV LD_PRELOAD=...
  info   say which allocator this process runs on and where the library is
""" % ("on" if DEFAULT_PYTHONMALLOC else "off")


def _err(msg):
    # type: (str) -> None
    sys.stderr.write("trimalloc: error: %s\n" % msg)


def _run(args):
    # type: (List[str]) -> int
    pythonmalloc = DEFAULT_PYTHONMALLOC
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
    lib = library_path()
    if not os.path.isfile(lib):
        _err("the bundled library is missing: %s (reinstall trimalloc)" % lib)
        return 1
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        _trimalloc.exec(lib, cmd, pythonmalloc)
    except OSError as e:
        if e.errno == errno.ENOENT:
            _err("cannot run %r: command not found" % cmd[0])
            return 127
        _err("cannot run %r: %s" % (cmd[0], e.strerror))
        return 126
    return 1  # not reached: exec returns only by raising


def _purger_state():
    # type: () -> str
    """Whether the core's background purger runs in this process."""
    if not active():
        return "none (glibc: memory goes back only when something trims)"
    if stats().get("background"):
        return "running (returns what stays free for the purge delay)"
    if os.environ.get("TRIMALLOC_BACKGROUND", "1").strip().lower() in ("0", "false", "no", "off"):
        return "off (TRIMALLOC_BACKGROUND=0: only allocator calls and trims purge)"
    return "not started (starts when 4 MiB are left to purge)"


def _info():
    # type: () -> int
    lib = library_path()
    out = sys.stdout
    out.write("trimalloc %s\n" % __version__)
    out.write(
        "backend:      %s (this process: %s %s, pid %d)\n"
        % (_trimalloc.backend(), platform.python_implementation(), platform.python_version(), os.getpid())
    )
    out.write("library:      %s%s\n" % (lib, "" if os.path.isfile(lib) else " (missing!)"))
    out.write("loaded core:  %s\n" % (_trimalloc.loaded_path() or "none"))
    out.write("purger:       %s\n" % _purger_state())
    out.write("LD_PRELOAD:   %s\n" % os.environ.get("LD_PRELOAD", ""))
    out.write(
        "PYTHONMALLOC: %s (`trimalloc run` sets malloc unless --no-pythonmalloc: %s)\n"
        % (os.environ.get("PYTHONMALLOC", ""), "yes" if DEFAULT_PYTHONMALLOC else "no")
    )
    return 0


def main(argv=None):
    # type: (Optional[List[str]]) -> int
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
    if rest and cmd in ("path", "info"):
        _err("%s takes no arguments, got %r" % (cmd, rest))
        return 2
    if cmd == "path":
        sys.stdout.write(library_path() + "\n")
        return 0
    if cmd == "info":
        return _info()
    _err("unknown command %r (see trimalloc --help)" % cmd)
    return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
