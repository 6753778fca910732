"""
L{PortMachine}: a listening port that is opened and closed on demand, one
operation at a time, as an explicit state machine (automat).

Its owner says what it wants (L{PortMachine.want_open},
L{PortMachine.want_closed}) as often as it likes; the machine opens a new
L{rawsvc.listening.Listener} (a C{StreamServerEndpointService}) or stops
the one it has, and a wish that arrives while a listen or a close is under
way is carried out once it is done.  A listen that fails is tried again
every L{RELISTEN_DELAY} seconds while the port is wanted open.  The first
listen (L{PortMachine.start}) raises L{rawsvc.errors.ListenError} instead,
so a port that cannot be opened stops the service's start.

States::

    closed     --start-->        starting  (listen; a failure raises)
    closed     --want_open-->    opening   (listen)
    starting   --listened-->     open
    starting   --listen_failed-> closed
    opening    --listened-->     open
    opening    --listen_failed-> retrying  (log; try again in RELISTEN_DELAY)
    retrying   --retry-->        opening   (listen)
    retrying   --want_closed-->  closed    (no more tries)
    open       --want_closed-->  closing   (stop the listener)
    starting, opening --want_closed--> closing (give the listen up)
    closing    --want_open-->    reopening
    reopening  --want_closed-->  closing
    closing    --stopped-->      closed
    reopening  --stopped-->      opening   (listen)

closed, open and retrying are at rest (L{PortMachine.settled} fires);
the others are moving (L{PortMachine.moving}).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

from automat import MethodicalMachine
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IListeningPort, IProtocolFactory, IReactorTime
from twisted.internet.interfaces import IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure

from rawsvc.errors import ListenError
from rawsvc.listening import Listener

log = Logger(namespace="rawsvc.trigger")

#: Seconds between attempts to listen again when the port was taken meanwhile.
RELISTEN_DELAY = 1.0


def _only(values: Iterable[Any]) -> Any:
    """An input's answer: the value of its one output."""
    [value] = values
    return value


class PortMachine:
    """
    The listening port of trigger C{name}: C{endpoint()} gives the endpoint
    for each listen, C{factory()} the protocol factory; C{on_port} hears of
    each new port and of its closing (None).
    """

    _machine = MethodicalMachine()

    def __init__(
        self,
        name: str,
        listen: str,
        endpoint: Callable[[], IStreamServerEndpoint],
        factory: Callable[[], IProtocolFactory],
        clock: IReactorTime,
        on_port: Callable[[IListeningPort | None], Any],
        retry_delay: float = RELISTEN_DELAY,
    ) -> None:
        self.name = name
        self.listen = listen
        self.endpoint = endpoint
        self.factory = factory
        self.clock = clock
        self.on_port = on_port
        self.retry_delay = retry_delay
        self._listener: Listener | None = None
        self._retry_call: IDelayedCall | None = None
        self._waiters: list[Deferred] = []

    # States ------------------------------------------------------------------

    @_machine.state(initial=True)
    def closed(self) -> None:
        "No port, none wanted."

    @_machine.state()
    def starting(self) -> None:
        "The service's first listen is under way."

    @_machine.state()
    def opening(self) -> None:
        "A listen is under way."

    @_machine.state()
    def open(self) -> None:
        "Listening."

    @_machine.state()
    def closing(self) -> None:
        "The listener is stopping."

    @_machine.state()
    def reopening(self) -> None:
        "The listener is stopping, and a port is wanted again after."

    @_machine.state()
    def retrying(self) -> None:
        "A port is wanted, the last listen failed; the next try is scheduled."

    # Inputs ------------------------------------------------------------------

    @_machine.input()
    def start(self) -> None:
        "The service starts: listen; raise ListenError when the endpoint fails at once."

    @_machine.input()
    def want_open(self) -> None:
        "The owner wants the port open."

    @_machine.input()
    def want_closed(self) -> None:
        "The owner wants the port closed."

    @_machine.input()
    def listened(self, port: IListeningPort) -> None:
        "The listener listens on C{port}."

    @_machine.input()
    def listen_failed(self, failure: Failure) -> None:
        "The listener could not listen."

    @_machine.input()
    def stopped(self) -> None:
        "The listener stopped."

    @_machine.input()
    def retry(self) -> None:
        "Time to try listening again."

    @_machine.input()
    def settled(self) -> Deferred:  # type: ignore[empty-body]
        "A Deferred that fires once no listen or close is under way."

    @_machine.input()
    def moving(self) -> bool:  # type: ignore[empty-body]
        "Whether a listen or a close is under way."

    # Outputs -----------------------------------------------------------------

    def _new_listener(self) -> Listener:
        listener = Listener(self.endpoint(), self.factory(), f"trigger {self.name!r}", self.listen,
                            on_port=self.listened, on_failure=self.listen_failed)
        self._listener = listener
        return listener

    @_machine.output()
    def _listen_first(self) -> None:
        self._new_listener().startService()  # a ListenError goes to the caller of start()

    @_machine.output()
    def _listen(self) -> None:
        try:
            self._new_listener().startService()
        except ListenError:
            pass  # listen_failed has been told already

    @_machine.output()
    def _keep_port(self, port: IListeningPort) -> None:
        self.on_port(port)

    @_machine.output()
    def _forget_listener(self) -> None:
        self._listener = None

    @_machine.output()
    def _log_failure(self, failure: Failure) -> None:
        log.error("trigger {trigger}: cannot listen again on {listen}: {e}; retrying in {s} s",
                  trigger=self.name, listen=self.listen, e=failure.getErrorMessage(), s=self.retry_delay)

    @_machine.output()
    def _schedule_retry(self) -> None:
        self._retry_call = self.clock.callLater(self.retry_delay, self._retry_now)

    @_machine.output()
    def _cancel_retry(self) -> None:
        call, self._retry_call = self._retry_call, None
        if call is not None and call.active():
            call.cancel()

    @_machine.output()
    def _close(self) -> None:
        listener, self._listener = self._listener, None
        self.on_port(None)
        assert listener is not None, "a port is closing that was never opened"
        d = listener.stopService()
        d.addErrback(lambda f: log.failure("trigger {trigger}: closing the port failed", f, trigger=self.name))
        d.addBoth(lambda _: self.stopped())

    @_machine.output()
    def _settle(self) -> None:
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    @_machine.output()
    def _at_rest(self) -> Deferred:
        return succeed(None)

    @_machine.output()
    def _when_at_rest(self) -> Deferred:
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    @_machine.output()
    def _yes(self) -> bool:
        return True

    @_machine.output()
    def _no(self) -> bool:
        return False

    def _retry_now(self) -> None:
        self._retry_call = None
        self.retry()

    # The table ---------------------------------------------------------------

    closed.upon(start, enter=starting, outputs=[_listen_first])
    closed.upon(want_open, enter=opening, outputs=[_listen])
    closed.upon(want_closed, enter=closed, outputs=[])

    starting.upon(listened, enter=open, outputs=[_keep_port, _settle])
    starting.upon(listen_failed, enter=closed, outputs=[_forget_listener, _settle])
    starting.upon(want_open, enter=starting, outputs=[])
    starting.upon(want_closed, enter=closing, outputs=[_close])

    opening.upon(listened, enter=open, outputs=[_keep_port, _settle])
    opening.upon(listen_failed, enter=retrying, outputs=[_forget_listener, _log_failure, _schedule_retry, _settle])
    opening.upon(want_open, enter=opening, outputs=[])
    opening.upon(want_closed, enter=closing, outputs=[_close])

    retrying.upon(retry, enter=opening, outputs=[_listen])
    retrying.upon(want_open, enter=retrying, outputs=[])
    retrying.upon(want_closed, enter=closed, outputs=[_cancel_retry])

    open.upon(want_open, enter=open, outputs=[])
    open.upon(want_closed, enter=closing, outputs=[_close])

    closing.upon(stopped, enter=closed, outputs=[_settle])
    closing.upon(want_open, enter=reopening, outputs=[])
    closing.upon(want_closed, enter=closing, outputs=[])

    reopening.upon(stopped, enter=opening, outputs=[_listen])
    reopening.upon(want_open, enter=reopening, outputs=[])
    reopening.upon(want_closed, enter=closing, outputs=[])

    for _state in (closed, open, retrying):
        _state.upon(settled, enter=_state, outputs=[_at_rest], collector=_only)
        _state.upon(moving, enter=_state, outputs=[_no], collector=_only)
    for _state in (starting, opening, closing, reopening):
        _state.upon(settled, enter=_state, outputs=[_when_at_rest], collector=_only)
        _state.upon(moving, enter=_state, outputs=[_yes], collector=_only)
    del _state
