"""The spool writer's queued writes (L{Op}) and how their results reach the reactor (L{deliver})."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

log = Logger(namespace="rawsvc.spool")

#: Kinds of writes that go into multi-row statements.
ADD, PROGRESS, FINISH = "add", "progress", "finish"


class Op:
    """One queued write: C{fn(conn, *args)} (or C{fn(*args)} when C{raw}), or a row of a run."""

    __slots__ = ("kind", "fn", "args", "durable", "deferred", "undo", "raw", "acked")

    def __init__(self, kind: str | None, fn: Callable[..., Any] | None, args: tuple, durable: bool,
                 deferred: Deferred | None, raw: bool = False) -> None:
        self.kind = kind
        self.fn = fn
        self.args = args
        self.durable = durable
        self.deferred = deferred
        self.undo: Callable[[], None] | None = None
        self.raw = raw
        #: Acknowledged at its journal record's fdatasync, before the index is written.
        self.acked = False


#: (Deferred or None, ok, value or error) for each write of a batch.
Results = list[tuple[Any, bool, Any]]


def deliver(results: Results) -> None:
    """(Reactor thread) fire each write's Deferred; log failed background writes."""
    for d, ok, value in results:
        if d is None:
            if not ok:
                log.error("spool write failed: {error}", error=value)
        elif ok:
            d.callback(value)
        else:
            d.errback(Failure(value))
