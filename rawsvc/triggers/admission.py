"""
Low-resources mode: which connections count against C{max_connections},
and which one makes room when a new client arrives at the cap.

A connection counts from its accept until its input ends (the client
half-closed, closed or was reset) or it closes: a client whose bytes are
all in, and whose jobs the sink already holds, costs a socket and nothing
else, so it no longer keeps a new client out.  At the cap the counted
connection that has been silent longest without a job in flight is closed
(logged, counted in C{evicted}) and the new client is served at once; only
when every counted connection has a job in flight (or waits in a printer's
queue) is the new client refused.
"""

from __future__ import annotations

import os
import resource
from typing import TYPE_CHECKING, Any

from twisted.logger import Logger

if TYPE_CHECKING:
    from rawsvc.triggers.base import ListenerTrigger

log = Logger(namespace="rawsvc.trigger")

#: Descriptors kept free beyond the connections (spool, logs, admin, outbound).
FD_MARGIN = 256


def admit(trigger: ListenerTrigger, conn: Any) -> bool:
    """Count C{conn}, evicting the longest-silent connection at the cap; False: refuse it."""
    counted = trigger.counted
    if len(counted) >= trigger.max_connections:
        victim = longest_silent(counted)
        if victim is None:
            return False
        now = trigger.reactor.seconds()
        victim.evict(
            f"silent for {max(0.0, now - victim.last_active):.1f} s while a new client waited "
            f"(max_connections = {trigger.max_connections})"
        )
    counted.add(conn)
    return True


def longest_silent(conns: Any) -> Any:
    """The evictable connection with the oldest activity, or None."""
    best = None
    for c in conns:
        if c.evictable() and (best is None or c.last_active < best.last_active):
            best = c
    return best


def disk_low(trigger: ListenerTrigger) -> str | None:
    """
    Why a new client cannot be taken (the disk its jobs go to has less than
    C{min_free} bytes free), or None.  Refused at the accept, before it sent
    a byte, a client sees the refusal for sure (CUPS's backend exits 1 and
    keeps the job), where a job refused after its last byte may not be.
    """
    if not trigger.min_free:
        return None
    path = trigger.temp_dir
    while not os.path.isdir(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    free = st.f_bavail * st.f_frsize
    if free >= trigger.min_free:
        return None
    return f"the disk is nearly full: {free} bytes free in {path} (min_free = {trigger.min_free})"


def raise_fd_limit(connections: int, trigger: str) -> None:
    """
    Raise the soft C{RLIMIT_NOFILE} so C{connections} sockets fit (the usual
    soft limit of 1024 would stop accepts, with EMFILE, well before the cap).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = connections + FD_MARGIN
    if soft != resource.RLIM_INFINITY and soft >= want:
        return
    if soft == resource.RLIM_INFINITY:
        return
    target = want if hard == resource.RLIM_INFINITY else min(hard, want)
    if target > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            log.warn("trigger {trigger}: cannot raise the open-files limit to {n}: {e}",
                     trigger=trigger, n=target, e=e)
            return
    if target < want:
        log.warn(
            "trigger {trigger}: the open-files limit ({n}) is below max_connections + {margin}: "
            "raise LimitNOFILE (systemd) or ulimit -n",
            trigger=trigger, n=target, margin=FD_MARGIN,
        )
