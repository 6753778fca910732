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

import resource
from typing import Any

from twisted.logger import Logger

log = Logger(namespace="rawsvc.trigger")

#: Descriptors kept free beyond the connections (spool, logs, admin, outbound).
FD_MARGIN = 256


def admit(trigger: Any, conn: Any) -> bool:
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
