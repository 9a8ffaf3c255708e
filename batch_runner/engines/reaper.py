"""No engine process outlives batch-run, whatever kills it.

vLLM runs its engine core and workers in child processes. When batch-run dies without shutting
them down (``kill -9``, the OOM killer, the immediate exit on a second signal), they are reparented
to init and go on holding RAM or the GPU, and the resume then cannot start its engine. ``guard()``
starts a small watcher process in a session of its own (so a signal to our process group does not
take it too): every half second it records our descendants and checks that we still run (our pid
with our start time); once we are gone, however we died, it kills every one of them still alive,
and theirs. (A pipe's end-of-file would not do: forked engine processes inherit its other end.)

Linux only (it reads /proc); elsewhere ``guard()`` does nothing.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

SCAN_S = 0.5
_watcher: subprocess.Popen | None = None


def guard() -> None:
    """Start the watcher for this process, once."""
    global _watcher
    if _watcher is not None or not os.path.isdir("/proc/self"):
        return
    # Run as a plain script: it needs only the standard library, not the package and its imports.
    # No inherited stdout/stderr: a caller reading ours to their end must not wait for the watcher.
    _watcher = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(os.getpid())],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True, close_fds=True)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, start time) of every running process we can see (zombies are not running)."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()  # after "pid (comm)": state, ppid, ...
            if fields[0] != b"Z":
                found[int(name)] = (int(fields[1]), fields[19].decode())
        except (OSError, IndexError, ValueError):  # it ended while we looked
            continue
    return found


def _descendants(roots: set[int], procs: dict[int, tuple[int, str]]) -> set[int]:
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in procs.items():
        children.setdefault(ppid, []).append(pid)
    out, todo = set(), list(roots)
    while todo:
        for child in children.get(todo.pop(), ()):
            if child not in out:
                out.add(child)
                todo.append(child)
    return out


def watch(parent: int) -> None:
    """Record ``parent``'s descendants while it lives; then kill the ones still running."""
    me = os.getpid()
    procs = _processes()
    born = procs.get(parent, (0, None))[1]
    seen: dict[int, str] = {}  # pid -> start time: a reused pid is never killed
    while procs.get(parent, (0, None))[1] == born and born is not None:
        seen = {p: start for p, start in seen.items() if p in procs}
        seen.update({p: procs[p][1] for p in _descendants({parent}, procs) if p != me})
        time.sleep(SCAN_S)
        procs = _processes()
    alive = {p for p, start in seen.items() if procs.get(p, (0, None))[1] == start}
    for pid in alive | _descendants(alive, procs):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for batch-run, which then ends us by closing the pipe
    watch(int(sys.argv[1]))
