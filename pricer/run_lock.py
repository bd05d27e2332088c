"""One live writer per run: an exclusive lock on the run dir, held from the claim to the job's end.

A kernel lock (flock on RUN_DIR/.owner), not a lease file with a heartbeat: the kernel drops it
the moment its process dies, SIGKILL and a preempted SLURM job included, so a requeued job never
waits out a stale lease, and a live run is never taken for a dead one because its heartbeat came
late. On NFS, Linux turns flock into a byte-range lock that the server arbitrates (lockd for
NFSv3, the protocol itself for v4), so processes on two nodes exclude each other too; a node that
vanishes loses its locks when the server's lease runs out (NFSv4: 90 s by default). A filesystem
without locks fails the claim in one line.

The file also holds the owner's pid, host and start time, for the message that names the owner;
the lock, not the file's content, is the claim. Several ranks of one run hold one lock: rank 0's.
"""

import fcntl
import json
import os
import socket
import time
from datetime import datetime
from pathlib import Path

LOCK_FILE = ".owner"
_held: dict[Path, int] = {}  # resolved run dir -> the open descriptor that holds its lock


class RunOwned(ValueError):
    """Another live process owns the run."""


def acquire(run_dir: Path) -> bool:
    """Take the run's lock for this process; False if another process holds it. Idempotent."""
    key = run_dir.resolve()
    if key in _held:
        return True
    fd = _locked_fd(run_dir)
    if fd is None:
        return False
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "since": datetime.now().isoformat(timespec="seconds")}).encode(), 0)
    _held[key] = fd
    return True


def release(run_dir: Path) -> None:
    """Give the run back (the job ended); the kernel does the same if the process dies first."""
    fd = _held.pop(run_dir.resolve(), None)
    if fd is not None:
        os.close(fd)


def holds(run_dir: Path) -> bool:
    return run_dir.resolve() in _held


def owner_of(run_dir: Path, wait_s: float = 2.0) -> str:
    """'pid 123 on host node7 since 2024-09-13T13:04:39', as the owner wrote it. An owner that has just
    taken the lock writes this a moment later: asked in that moment, wait for it (up to `wait_s`)."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            meta = json.loads((run_dir / LOCK_FILE).read_text())
            return f"pid {meta['pid']} on host {meta['host']} since {meta['since']}"
        except (OSError, ValueError, KeyError):
            if time.monotonic() > deadline:
                return "another process"
            time.sleep(0.05)


def check_writer(run_dir: Path) -> None:
    """Before a write to the run: this process owns it, or nobody does (pricer.push of an ended run).
    A run that another live process owns is refused, naming that process."""
    if holds(run_dir) or not (run_dir / LOCK_FILE).exists():
        return
    fd = _locked_fd(run_dir)
    if fd is None:
        raise RunOwned(f"{run_dir} is owned by {owner_of(run_dir)}: only that process writes to it; "
                       "wait for it to end or stop it")
    os.close(fd)


def _locked_fd(run_dir: Path) -> int | None:
    """A descriptor holding the lock, or None if it is held elsewhere (this process's other descriptors included)."""
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except OSError as err:
        os.close(fd)
        raise RunOwned(f"{run_dir}: this filesystem refuses file locks ({err.strerror}), so pricer cannot make sure "
                       "one process alone writes the run: pass output_root=A_LOCAL_OR_NFS_FOLDER") from None
    return fd
