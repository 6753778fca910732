"""
The state machine of one delivery: L{Delivery}.

A delivery is one job on its way to one destination, from its place in the
destination's queue to its end, across every attempt.  Its states
(L{State}) and the inputs that move it are declared once, in an
C{automat.MethodicalMachine}, with the outputs each transition runs (count
the attempt, tell the watchers, remember or forget the back-off):

    queued --connect--> connecting --connected--> sending --written--> draining
    connecting | sending | draining --wait--> waiting --connect--> connecting
    connecting --hold--> held --connect--> connecting
    any state but done --finish--> done

C{held} is a delivery whose pre-flight status check said the printer cannot
print now (paper out, head open ...; L{rawsvc.client.preflight}): it waits
for the next check, and nothing was sent.  C{draining} is everything after the last byte was handed to the transport:
waiting for the printer to acknowledge every byte, reading the back-channel,
the disconnect delay.  A connection that fails before it is made leaves the
delivery C{connecting} (the next address is tried, or the attempt fails).
An input the table has no line for raises L{InvalidTransition}: that is a
bug, never something to handle.

The destination's status shows L{Delivery.state}; no other copy of the state
is kept.
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable, Sequence
from typing import Any

from automat import MethodicalMachine, NoTransition
from twisted.logger import Logger

from rawsvc.interfaces import IDeliveryWatcher, IHoldWatcher

log = Logger(namespace="rawsvc.client")

#: Raised for an input that the delivery's state has no transition for.
InvalidTransition = NoTransition


def transition_text(e: NoTransition) -> str:
    """What an L{InvalidTransition} means, for the log and the job's error."""
    state = getattr(getattr(e.state, "method", None), "__name__", str(e.state)).lstrip("_")
    symbol = getattr(getattr(e.symbol, "method", None), "__name__", str(e.symbol))
    return f"a delivery that is {state} cannot take the input {symbol!r} (a bug)"


class State(enum.Enum):
    """Where a delivery is; the value is what status pages show."""

    QUEUED = "queued"
    CONNECTING = "connecting"
    SENDING = "sending"
    DRAINING = "draining"
    WAITING = "waiting"
    HELD = "held"
    DONE = "done"


class Delivery:
    """
    One job's delivery to one destination; see the module docstring.

    C{watchers} (L{IDeliveryWatcher} providers, usually the job sink) are
    told when the delivery starts waiting for a retry and when it tries
    again; the sequence is read at the time of telling, so watchers added
    later are told too.
    """

    _machine = MethodicalMachine()

    def __init__(
        self,
        job_id: str = "",
        destination: str = "",
        watchers: Sequence[IDeliveryWatcher] = (),
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.job_id = job_id
        self.destination = destination
        self.watchers = watchers
        self._clock = clock
        #: The number of the current (or last) attempt; 0 before the first.
        self.attempt = 0
        #: While waiting: the last attempt's error and when the next one is due (epoch seconds).
        self.last_error = ""
        self.next_try: float | None = None
        #: When the state last changed (epoch seconds).
        self.since = clock()
        #: The transport of the attempt connected now (None between attempts): what a fenced cluster node aborts.
        self.transport: Any = None
        #: Set when a fenced cluster node cut this delivery off: no further attempt.
        self.abandoned = False
        #: Cluster mode: asked when a connection is made (False: this node lost its lease; abort at once).
        self.gate: Callable[[], bool] | None = None
        #: The attempt (pre-flight or send) under way before it connected: what a fence cancels.
        self.pending: Any = None

    def cut_off(self) -> bool:
        """A fenced cluster node abandoned this delivery, or its lease gate says no (then it is abandoned)."""
        if not self.abandoned and self.gate is not None and not self.gate():
            self.abandoned = True
        return self.abandoned

    # States -------------------------------------------------------------------

    @_machine.state(initial=True, serialized=State.QUEUED)
    def _queued(self) -> None:
        "Waiting for its turn at the destination."

    @_machine.state(serialized=State.CONNECTING)
    def _connecting(self) -> None:
        "An attempt is opening a connection."

    @_machine.state(serialized=State.SENDING)
    def _sending(self) -> None:
        "Connected; the job's bytes are being written."

    @_machine.state(serialized=State.DRAINING)
    def _draining(self) -> None:
        "Every byte is written; acknowledgements, back-channel, disconnect delay."

    @_machine.state(serialized=State.WAITING)
    def _waiting(self) -> None:
        "An attempt failed; the back-off runs until the next one."

    @_machine.state(serialized=State.HELD)
    def _held(self) -> None:
        "The pre-flight check said the printer is not ready; the next check is due."

    @_machine.state(serialized=State.DONE)
    def _done(self) -> None:
        "Delivered, failed for good, stopped or cancelled."

    # Inputs -------------------------------------------------------------------

    @_machine.input()
    def connect(self) -> None:
        "Its turn came, or its retry is due: make an attempt."

    @_machine.input()
    def connected(self) -> None:
        "The attempt's connection is made."

    @_machine.input()
    def written(self) -> None:
        "Every byte of the job is handed to the transport."

    @_machine.input()
    def wait(self, error: str, next_try: float) -> None:
        "The attempt failed with C{error}; the next one is due at C{next_try} (epoch seconds)."

    @_machine.input()
    def hold(self, reason: str, next_try: float) -> None:
        "The pre-flight check said C{reason}; the next check is due at C{next_try} (epoch seconds)."

    @_machine.input()
    def finish(self) -> None:
        "The delivery is over, however it ended."

    # Outputs ------------------------------------------------------------------

    @_machine.serializer()
    def _serialized(self, state: State) -> State:
        return state

    @property
    def state(self) -> State:
        """The current state."""
        return self._serialized()

    @_machine.output()
    def _moved(self) -> None:
        self.since = self._clock()

    @_machine.output()
    def _count_attempt(self) -> None:
        self.attempt += 1

    @_machine.output()
    def _remember_wait(self, error: str, next_try: float) -> None:
        self.last_error = error
        self.next_try = next_try

    @_machine.output()
    def _forget_wait(self) -> None:
        self.next_try = None

    @_machine.output()
    def _tell_waiting(self, error: str, next_try: float) -> None:
        for watcher in list(self.watchers):
            try:
                watcher.delivery_waiting(self.job_id, self.destination, self.attempt, error, next_try)
            except Exception:
                log.failure("delivery watcher {watcher} failed", watcher=watcher)

    @_machine.output()
    def _remember_hold(self, reason: str, next_try: float) -> None:
        self.last_error = reason
        self.next_try = next_try

    @_machine.output()
    def _tell_held(self, reason: str, next_try: float) -> None:
        for watcher in list(self.watchers):
            try:
                if IHoldWatcher.providedBy(watcher):
                    watcher.delivery_held(self.job_id, self.destination, self.attempt, reason, next_try)
                else:  # a watcher that knows no holds sees a delivery waiting to try again
                    watcher.delivery_waiting(self.job_id, self.destination, self.attempt, reason, next_try)
            except Exception:
                log.failure("delivery watcher {watcher} failed", watcher=watcher)

    @_machine.output()
    def _tell_retrying(self) -> None:
        for watcher in list(self.watchers):
            try:
                watcher.delivery_retrying(self.job_id, self.destination, self.attempt)
            except Exception:
                log.failure("delivery watcher {watcher} failed", watcher=watcher)

    # The table ----------------------------------------------------------------

    _queued.upon(connect, enter=_connecting, outputs=[_moved, _count_attempt])
    _waiting.upon(connect, enter=_connecting, outputs=[_moved, _forget_wait, _count_attempt, _tell_retrying])
    _held.upon(connect, enter=_connecting, outputs=[_moved, _forget_wait, _count_attempt, _tell_retrying])
    _connecting.upon(hold, enter=_held, outputs=[_moved, _remember_hold, _tell_held])
    _connecting.upon(connected, enter=_sending, outputs=[_moved])
    _sending.upon(written, enter=_draining, outputs=[_moved])
    for _failed in (_connecting, _sending, _draining):
        _failed.upon(wait, enter=_waiting, outputs=[_moved, _remember_wait, _tell_waiting])
    for _live in (_queued, _connecting, _sending, _draining):
        _live.upon(finish, enter=_done, outputs=[_moved])
    for _paused in (_waiting, _held):
        _paused.upon(finish, enter=_done, outputs=[_moved, _forget_wait])
    del _failed, _live, _paused
