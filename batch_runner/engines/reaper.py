"""No engine process outlives batch-run, whatever kills it.

vLLM runs its engine core and workers in child processes. When batch-run dies without shutting
them down (``kill -9``, the OOM killer, the immediate exit on a second signal), they are reparented
to init and go on holding RAM or the GPU, and the resume then cannot start its engine. ``guard()``
starts a small watcher process in a session of its own (so a signal to our process group does not
take it too): every half second it records our descendants and checks that we still run (our pid
with our start time); once we are gone, however we died, it kills every one of them still alive,
and theirs. (A pipe's end-of-file would not do: forked engine processes inherit its other end.)

Linux only (it needs /proc; psutil walks the process tree); elsewhere ``guard()`` does nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import psutil

SCAN_S = 0.5
_watcher: subprocess.Popen | None = None


def guard() -> None:
    """Start the watcher for this process, once."""
    global _watcher
    if _watcher is not None or not os.path.isdir("/proc/self"):
        return
    # Run as a plain script: it needs only the standard library and psutil, not the package and its imports.
    # No inherited stdout/stderr: a caller reading ours to their end must not wait for the watcher.
    _watcher = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)


def started_at(pid: int) -> int | None:
    """When process ``pid`` started, in the kernel's clock ticks since boot, while it runs (a zombie
    does not); None once it is gone. With the pid, it names one process: a pid reused by a later one
    has another start time. (Not psutil's ``create_time()``: that adds the boot time as of now, which
    moves when the wall clock is stepped, and the parent would then look gone.)"""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rpartition(b")")[2].split()  # the command name may hold spaces and ')'
    except OSError:  # it ended while we looked
        return None
    return None if fields[0] == b"Z" else int(fields[19])  # state; starttime (stat's 3rd and 22nd fields)


def descendants(pid: int) -> dict[int, int]:
    """pid -> start time of every running descendant of ``pid``."""
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return {}
    found = {}
    for child in children:
        start = started_at(child.pid)
        if start is not None:
            found[child.pid] = start
    return found


def watch(parent: int) -> None:
    """Record ``parent``'s descendants while it lives; then kill the ones still running."""
    me = os.getpid()
    born = started_at(parent)
    seen: dict[int, int] = {}  # pid -> start time: a reused pid is never killed
    while born is not None and started_at(parent) == born:
        seen = {p: start for p, start in seen.items() if started_at(p) == start}
        seen.update({p: start for p, start in descendants(parent).items() if p != me})
        time.sleep(SCAN_S)
    # orphaned by the parent's death, they are no longer its descendants: kill by what was seen
    alive = {p for p, start in seen.items() if started_at(p) == start}
    for pid in alive | {d for p in alive for d in descendants(p)}:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for batch-run, which then ends us by closing the pipe
    watch(int(sys.argv[1]))
