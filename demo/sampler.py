"""Processes the demo starts, and the RSS of their process trees, read from /proc.

Every process is started in a session of its own (its pid is also its process
group and session id), so that
- its process tree is "every process whose session is the leader's pid"
  (Celery's pool processes, a launcher's exec, a shell's children), and
- it can be stopped as a group, by pid, without touching anything else.
Every started process is registered; stop_all() (called from the runner's
finally block and from its signal handlers) stops whatever is still running.
"""
import os
import signal
import subprocess
import threading
import time

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
MIB = 1024.0 * 1024.0

_live = {}  # pid -> Process, everything started and not yet reaped
_live_lock = threading.Lock()


def _stat_fields(pid):
    """Fields of /proc/<pid>/stat after the command name (index 0 = state)."""
    with open("/proc/%d/stat" % pid, "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2:].split()


def session_members(sid):
    """Pids of the live processes in session `sid`, and their RSS in bytes."""
    members = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        pid = int(name)
        try:
            fields = _stat_fields(pid)
        except (OSError, ValueError):
            continue  # exited meanwhile
        # state=0 ppid=1 pgrp=2 session=3 ... rss=21 (pages)
        if int(fields[3]) != sid or fields[0] == b"Z":
            continue
        members[pid] = int(fields[21]) * PAGE_SIZE
    return members


def mapped_allocators(pid):
    """Which allocator libraries are mapped into pid: a set of names."""
    found = set()
    try:
        with open("/proc/%d/maps" % pid) as f:
            for line in f:
                path = line.rsplit(" ", 1)[-1].strip()
                base = os.path.basename(path)
                if base == "libtrimalloc.so":
                    found.add("trimalloc")
                elif base.startswith("libjemalloc.so"):
                    found.add("jemalloc")
                elif base.startswith("libmimalloc.so"):
                    found.add("mimalloc")
    except OSError:
        pass
    return found


class Process:
    """A started process (its own session), with an optional RSS sampler."""

    def __init__(self, name, argv, env, cwd=None, log_path=None, stdin=None, stdout=None):
        self.name = name
        self.argv = argv
        self.log = open(log_path, "ab") if log_path else subprocess.DEVNULL
        self.popen = subprocess.Popen(
            argv, env=env, cwd=cwd, start_new_session=True,
            stdin=stdin if stdin is not None else subprocess.DEVNULL,
            stdout=stdout if stdout is not None else self.log,
            stderr=self.log,
        )
        self.pid = self.popen.pid
        self.t0 = time.monotonic()
        self.samples = []  # (seconds since start, RSS bytes of the tree, number of processes)
        self.last_members = {}
        self._stop_sampling = threading.Event()
        self._sampler = None
        with _live_lock:
            _live[self.pid] = self

    # -- sampling --------------------------------------------------------------
    def sample(self):
        members = session_members(self.pid)
        if members:
            self.last_members = members
            self.samples.append((time.monotonic() - self.t0, sum(members.values()), len(members)))
        return members

    def start_sampling(self, interval):
        def loop():
            while not self._stop_sampling.is_set():
                self.sample()
                self._stop_sampling.wait(interval)
        self._sampler = threading.Thread(target=loop, name="sampler-" + self.name, daemon=True)
        self._sampler.start()

    def stop_sampling(self):
        self._stop_sampling.set()
        if self._sampler is not None:
            self._sampler.join()

    # -- life ----------------------------------------------------------------
    def alive(self):
        return self.popen.poll() is None

    def wait(self, timeout=None):
        try:
            code = self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reaped()
        return code

    def stop(self, sig=signal.SIGTERM, grace=15.0):
        """Signal the leader, wait up to `grace` s, then SIGKILL the whole group.

        Returns the leader's exit status (negative: killed by that signal)."""
        if self.popen.poll() is None:
            try:
                os.kill(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(grace)
            except subprocess.TimeoutExpired:
                pass
        self._kill_group()
        code = self.popen.wait()
        self._reaped()
        return code

    def _kill_group(self):
        # The group outlives its leader when children remain (a pool process
        # that did not exit): kill what is left of it, by group id = our pid.
        try:
            os.killpg(self.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def _reaped(self):
        self._kill_group()
        with _live_lock:
            _live.pop(self.pid, None)
        if self.log is not subprocess.DEVNULL:
            self.log.close()
            self.log = subprocess.DEVNULL


def stop_all():
    """Stop every process still running (each by its pid, then its group)."""
    with _live_lock:
        procs = list(_live.values())
    for p in procs:
        try:
            p.stop_sampling()
            p.stop(grace=3.0)
        except Exception as e:  # keep stopping the others
            print("demo: could not stop %s (pid %d): %s" % (p.name, p.pid, e), flush=True)
