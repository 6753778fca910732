"""
One owner per state directory: an exclusive C{flock} on C{state_dir/lock}.

The service takes it before it opens, sweeps or resumes anything and holds
it for as long as it runs; the kernel releases it when the holder dies,
SIGKILL included, so a stale file never blocks a start.  The file (0600)
holds the holder's pid, for the refusal line of a second instance.  An
C{flock} (unlike C{lockf}) belongs to the open file, so it survives
twistd's daemonising fork.

C{rawsvc spool} commands that write while the service is down take it too,
briefly (L{try_lock}), so that they never write beside a running service
they cannot see.
"""

from __future__ import annotations

import fcntl
import os
import shutil

from twisted.application.service import Service
from twisted.logger import Logger

from rawsvc.errors import RawsvcError

log = Logger(namespace="rawsvc.spool")

LOCK_NAME = "lock"
TEMP_NAME = "tmp"


class StateDirBusy(RawsvcError):
    """Another process holds the state directory."""


def lock_path(state_dir: str) -> str:
    return os.path.join(state_dir, LOCK_NAME)


def holder_of(state_dir: str) -> str:
    """The pid written in the lock file, as text ('?' when unreadable)."""
    try:
        with open(lock_path(state_dir), encoding="ascii", errors="replace") as f:
            return f.read(32).strip() or "?"
    except OSError:
        return "?"


def try_lock(state_dir: str) -> int | None:
    """The lock's file descriptor, held; None when another process holds it."""
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    fd = os.open(lock_path(state_dir), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


def unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


def sweep_temp(state_dir: str) -> int:
    """Remove what an earlier run left in C{state_dir/tmp} (only the lock's holder may); how many."""
    temp = os.path.join(state_dir, TEMP_NAME)
    try:
        names = os.listdir(temp)
    except FileNotFoundError:
        return 0
    for name in names:
        path = os.path.join(temp, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
    return len(names)


class StateDirLock(Service):
    """
    Holds the lock from L{acquire} (called first thing at start) to
    L{stopService} (the last component stopped).
    """

    name = "state-dir-lock"

    def __init__(self, state_dir: str) -> None:
        self.state_dir = os.path.abspath(state_dir)
        self.fd: int | None = None

    def acquire(self) -> None:
        """Take the lock, write our pid, sweep the temporary files; L{StateDirBusy} when held."""
        if self.fd is not None:
            return
        fd = try_lock(self.state_dir)
        if fd is None:
            raise StateDirBusy(
                f"state_dir {self.state_dir} is in use by pid {holder_of(self.state_dir)} (another rawsvc)"
            )
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self.fd = fd
        swept = sweep_temp(self.state_dir)
        log.info("state_dir {state_dir} (locked by pid {pid}){swept}", state_dir=self.state_dir, pid=os.getpid(),
                 swept=f"; removed {swept} temporary file(s) left by an earlier run" if swept else "")

    def stopService(self) -> None:
        super().stopService()
        if self.fd is not None:
            unlock(self.fd)
            self.fd = None
