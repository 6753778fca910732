"""
Replies to the sender, in job order.

Each job on a connection gets a L{ReplySlot}.  The C{reply} action writes
into its job's slot; a slot's bytes reach the socket only once every
earlier job on that connection has finished, so replies go out in job order
even when flows finish out of order.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from rawsvc.errors import ActionError
from rawsvc.interfaces import IReplyChannel


@implementer(IReplyChannel)
class ReplySlot:
    """One job's place in its connection's reply order."""

    __slots__ = ("_queue", "label", "chunks", "finished")

    def __init__(self, queue: "ReplyQueue", label: str) -> None:
        self._queue = queue
        self.label = label
        self.chunks: list[bytes] = []
        self.finished = False

    def reply(self, data: bytes) -> Deferred:
        if self._queue.gone:
            return fail(
                ActionError(
                    f"cannot reply: the sender {self.label} has closed the connection "
                    f"({self._queue.gone})"
                )
            )
        if self.finished:
            return fail(ActionError("cannot reply: this job's flow has already finished"))
        self.chunks.append(data)
        self._queue.flush()
        if self._queue.reactor is None:
            return succeed(len(data))
        # Give the reactor one turn to hand the bytes to the kernel: a peer
        # that reset the connection shows up here rather than as a silent loss.
        d: Deferred = Deferred()
        _confirmations.add(self._queue.reactor, self, d, len(data))
        return d

    def put(self, data: bytes) -> None:
        """Queue C{data} without waiting for it to be handed over (the connection's own answers)."""
        if data and not self._queue.gone and not self.finished:
            self.chunks.append(data)

    def confirm(self, d: Deferred, size: int) -> None:
        if self._queue.gone:
            d.errback(
                ActionError(
                    f"reply not delivered: the sender {self.label} has closed the connection "
                    f"({self._queue.gone})"
                )
            )
        else:
            d.callback(size)

    @property
    def open(self) -> bool:
        return not self._queue.gone


class ReplyQueue:
    """The ordered reply slots of one connection."""

    def __init__(self, write: Callable[[bytes], None], reactor: Any = None) -> None:
        self._write = write
        self.reactor = reactor
        self._slots: collections.deque[ReplySlot] = collections.deque()
        self.gone: str | None = None
        self.bytes_written = 0

    def new_slot(self, label: str) -> ReplySlot:
        slot = ReplySlot(self, label)
        self._slots.append(slot)
        return slot

    def add(self, data: bytes) -> None:
        """Write C{data} in order: after the replies of every job before it on this connection."""
        slot = self.new_slot("")
        slot.put(data)
        self.finish(slot)

    def finish(self, slot: ReplySlot) -> None:
        slot.finished = True
        self.flush()

    def flush(self) -> None:
        """Write what the head slots hold; drop slots that are finished."""
        if self.gone:
            return
        out: list[bytes] = []
        while self._slots:
            head = self._slots[0]
            if head.chunks:
                out.extend(head.chunks)
                head.chunks = []
            if not head.finished:
                break
            self._slots.popleft()
        if out:
            data = b"".join(out)
            self.bytes_written += len(data)
            self._write(data)

    @property
    def idle(self) -> bool:
        """True when no job on this connection is still running."""
        return not self._slots

    def lost(self, reason: str) -> None:
        self.gone = reason or "connection lost"
        self._slots.clear()
        # Nothing is written from now on: let go of the connection, so the
        # slots that jobs (kept in the history) hold do not keep it alive.
        self._write = _closed


def _closed(data: bytes) -> None:
    """The writer of a queue whose connection is gone (L{ReplyQueue.flush} never calls it)."""


class _Confirmations:
    """
    Replies written in one reactor turn are confirmed together in the next,
    with one delayed call per reactor rather than one per reply.
    """

    def __init__(self) -> None:
        self._pending: dict[Any, list[tuple[ReplySlot, Deferred, int]]] = {}

    def add(self, reactor: Any, slot: ReplySlot, d: Deferred, size: int) -> None:
        batch = self._pending.get(reactor)
        if batch is None:
            batch = self._pending[reactor] = []
            reactor.callLater(0, self._run, reactor)
        batch.append((slot, d, size))

    def _run(self, reactor: Any) -> None:
        for slot, d, size in self._pending.pop(reactor, ()):
            slot.confirm(d, size)


_confirmations = _Confirmations()
