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
import threading

from twisted.application.service import Service
from twisted.logger import Logger

from rawsvc.errors import RawsvcError
from rawsvc.spool.check import verify

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


#: The locks this process holds: state_dir -> [fd, holders].  The service
#: and its spool's store each hold it (a store also runs without a service).
_held: dict[str, list[int]] = {}
_guard = threading.Lock()


def hold(state_dir: str) -> bool:
    """Hold C{state_dir}'s lock for this process (once more); False when another process holds it."""
    state_dir = os.path.abspath(state_dir)
    with _guard:
        entry = _held.get(state_dir)
        if entry is None:
            fd = try_lock(state_dir)
            if fd is None:
                return False
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
            entry = _held[state_dir] = [fd, 0]
        entry[1] += 1
        return True


def release(state_dir: str) -> None:
    """One holder less; the lock goes with the last."""
    state_dir = os.path.abspath(state_dir)
    with _guard:
        entry = _held.get(state_dir)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del _held[state_dir]
            unlock(entry[0])


def busy_message(state_dir: str) -> str:
    return f"state_dir {os.path.abspath(state_dir)} is in use by pid {holder_of(state_dir)} (another rawsvc)"


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

    def __init__(self, state_dir: str, spool: bool = False) -> None:
        self.state_dir = os.path.abspath(state_dir)
        #: Check the spool too (L{rawsvc.spool.check.verify}) before the start goes on.
        self.spool = spool
        self.held = False

    def acquire(self) -> None:
        """
        Take the lock, write our pid, sweep the temporary files, check the
        spool; L{StateDirBusy} when held, L{SpoolDamaged} (lock released)
        when the spool is damaged.
        """
        if self.held:
            return
        if not hold(self.state_dir):
            raise StateDirBusy(busy_message(self.state_dir))
        self.held = True
        swept = sweep_temp(self.state_dir)
        log.info("state_dir {state_dir} (locked by pid {pid}){swept}", state_dir=self.state_dir, pid=os.getpid(),
                 swept=f"; removed {swept} temporary file(s) left by an earlier run" if swept else "")
        if self.spool:
            try:
                verify(self.state_dir)
            except BaseException:
                self.held = False
                release(self.state_dir)
                raise

    def stopService(self) -> None:
        super().stopService()
        if self.held:
            self.held = False
            release(self.state_dir)
