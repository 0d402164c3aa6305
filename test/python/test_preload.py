"""`import trimalloc.preload`: re-exec once with the preload, same pid and argv,
and refusals where a re-exec would not run the same program once. The same
behaviour names as test/ruby/preload_test.rb."""
import json
import os
import subprocess
import sys

import trimalloc
from conftest import child_env

PRELOAD = r'''
import os, sys, json
print("start", os.getpid(), flush=True)
import trimalloc.preload
import trimalloc
print(json.dumps({"pid": os.getpid(), "backend": trimalloc.backend(),
                  "status": trimalloc.preload.status, "pythonmalloc": os.environ.get("PYTHONMALLOC"),
                  "argv": sys.argv[1:], "warnoptions": sys.warnoptions,
                  "guard": os.environ.get("TRIMALLOC_PRELOAD_GUARD")}), flush=True)
'''

WARN = r'''
import os, sys, json, warnings
print("start", flush=True)
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    import trimalloc
    SETUP
    import trimalloc.preload
print(json.dumps({"backend": trimalloc.backend(), "status": trimalloc.preload.status,
                  "warnings": [(x.category.__name__, str(x.message)) for x in w]}), flush=True)
'''


def script(tmp_path, code, name="prog.py"):
    p = tmp_path / name
    p.write_text(code)
    return str(p)


def run(args, env=None, stdin=None, **extra):
    p = subprocess.Popen(args, env=env or child_env(False, **extra), stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    out, err = p.communicate(stdin, timeout=120)
    assert p.returncode == 0, (out, err)
    return p.pid, out.splitlines(), err


def test_preload_reexecs_once(tmp_path):
    pid, lines, err = run([sys.executable, "-W", "error", script(tmp_path, PRELOAD), "a", "b c"])
    # started twice (before and after the re-exec), in the same process, then on trimalloc
    assert lines[:2] == ["start %d" % pid] * 2, lines
    r = json.loads(lines[2])
    assert (r["pid"], r["backend"], r["status"]) == (pid, "trimalloc", "active")
    assert r["argv"] == ["a", "b c"]  # the same command line ...
    assert r["warnoptions"] == ["error"]  # ... interpreter options included (sys.orig_argv)
    assert r["pythonmalloc"] == ("malloc" if trimalloc.DEFAULT_PYTHONMALLOC else None)
    assert r["guard"] == "1" and len(lines) == 3 and err == ""


def test_preload_keeps_the_process_name(tmp_path):
    # The kernel names a process after the file it executes; the re-exec keeps
    # the name the process had (ps, top, pgrep): here a script run through its
    # #! line, named after the script, not after python (or "exe").
    prog = tmp_path / "myserver"
    prog.write_text("#!%s\n" % sys.executable + r'''
import json, os
import trimalloc.preload
import trimalloc
with open("/proc/self/comm") as f:
    comm = f.read().strip()
print(json.dumps({"comm": comm, "backend": trimalloc.backend(),
                  "left": "TRIMALLOC_PRELOAD_COMM" in os.environ}))
''')
    prog.chmod(0o755)
    _, lines, err = run([str(prog)])
    assert json.loads(lines[-1]) == {"comm": "myserver", "backend": "trimalloc", "left": False}, err


def test_preload_does_nothing_when_already_active(tmp_path):
    pid, lines, err = run([sys.executable, script(tmp_path, PRELOAD)], env=child_env(True))
    assert lines[0] == "start %d" % pid and len(lines) == 2
    r = json.loads(lines[1])
    assert (r["backend"], r["status"], r["guard"]) == ("trimalloc", "active", None)


def warned(lines):
    assert lines[0] == "start"
    return json.loads(lines[1])


def test_preload_guard_prevents_a_loop_and_warns_once(tmp_path):
    _, lines, _ = run([sys.executable, script(tmp_path, WARN.replace("SETUP", "pass"))],
                      TRIMALLOC_PRELOAD_GUARD="1")
    r = warned(lines)
    assert (r["backend"], r["status"]) == ("glibc", "not active") and len(lines) == 2
    assert len(r["warnings"]) == 1 and r["warnings"][0][0] == "RuntimeWarning"
    assert "still not" in r["warnings"][0][1]


def test_preload_warns_and_continues_when_reexec_is_impossible(tmp_path):
    code = WARN.replace("SETUP", "trimalloc._LIBRARY = '/nonexistent/libtrimalloc.so'")
    _, lines, _ = run([sys.executable, script(tmp_path, code)])
    r = warned(lines)
    assert (r["backend"], r["status"]) == ("glibc", "failed") and len(r["warnings"]) == 1
    assert "/nonexistent/libtrimalloc.so" in r["warnings"][0][1]


FORK = r'''
import os, json, warnings
pid = os.fork()
if pid == 0:  # a worker, as a server forks it: the app module imports the preload
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        import trimalloc.preload
    import trimalloc
    print(json.dumps({"pid": os.getpid(), "status": trimalloc.preload.status,
                      "backend": trimalloc.backend(), "warnings": [str(x.message) for x in w],
                      "where": [(x.filename, x.lineno) for x in w]}),
          flush=True)
    os._exit(0)
os.waitpid(pid, 0)
print("parent", os.getpid(), flush=True)
'''


def test_preload_refuses_in_a_forked_child(tmp_path):
    pid, lines, _ = run([sys.executable, script(tmp_path, FORK)])
    assert len(lines) == 2 and lines[1] == "parent %d" % pid, lines  # nothing ran twice
    r = json.loads(lines[0])
    assert (r["status"], r["backend"]) == ("forked", "glibc") and len(r["warnings"]) == 1
    assert "fork of one running the same program" in r["warnings"][0]
    assert "gunicorn.conf.py" in r["warnings"][0]  # names the right place
    assert r["where"] == [[str(tmp_path / "prog.py"), 7]]  # ... at the line that imports it


def test_preload_refuses_after_the_title_was_rewritten():
    # What setproctitle leaves: /proc/self/cmdline is no longer the command line.
    code, reason = trimalloc._trimalloc.preload(trimalloc.library_path(), False,
                                                ["python3", "not", "what", "ran"], "prog.py")
    assert code == trimalloc._trimalloc.PRELOAD["rewritten"] and "rewritten" in reason


def test_preload_refuses_inline_code_and_stdin(tmp_path):
    code = WARN.replace("SETUP", "pass")
    for args, stdin in (([sys.executable, "-c", code], None), ([sys.executable, "-"], code)):
        _, lines, _ = run(args, stdin=stdin)
        r = warned(lines)
        assert (r["backend"], r["status"]) == ("glibc", "not a file"), args
        assert "-c, -e or standard input" in r["warnings"][0][1]


SPAWN = r'''
import json, multiprocessing
def child(q):  # a multiprocessing child started by spawn: `python -c ...`, given our sys.argv
    import warnings
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        import trimalloc.preload
    import trimalloc
    q.put({"status": trimalloc.preload.status, "backend": trimalloc.backend(),
           "warnings": [str(x.message) for x in w]})
if __name__ == "__main__":
    ctx = multiprocessing.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=child, args=(q,))
    p.start()
    print(json.dumps(q.get(timeout=60)), flush=True)
    p.join(60)
    print("exit", p.exitcode, flush=True)
'''


def test_preload_refuses_in_a_spawned_multiprocessing_child(tmp_path):
    # uvicorn --workers starts its workers this way; a re-exec of its command
    # line would run `python -c spawn_main(...)` again with the pipe it read
    # from closed (the worker died with EBADF).
    _, lines, err = run([sys.executable, script(tmp_path, SPAWN)])
    assert len(lines) == 2 and lines[1] == "exit 0", (lines, err)
    r = json.loads(lines[0])
    assert (r["status"], r["backend"]) == ("not a file", "glibc") and len(r["warnings"]) == 1, r
    assert "-c, -e or standard input" in r["warnings"][0]
