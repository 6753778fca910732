"""
The listeners without sockets: L{rawsvc.listening.Listener} (Twisted's
StreamServerEndpointService, failing a start with ListenError) and the
printer's L{rawsvc.triggers.port_machine.PortMachine}, driven by a fake
endpoint whose listens succeed, fail or hang as each test says, and a
task.Clock for the retries.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IListeningPort, IStreamServerEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogLevel, globalLogPublisher
from zope.interface import implementer
from zope.interface.verify import verifyObject

from rawsvc.errors import ListenError
from rawsvc.listening import Listener, with_port
from rawsvc.triggers.port_machine import RELISTEN_DELAY, PortMachine


@implementer(IListeningPort)
class FakePort:
    """A port whose stopListening the test finishes (C{hang_stop}) or that stops at once."""

    def __init__(self, number: int, hang_stop: bool = False) -> None:
        self.number = number
        self.hang_stop = hang_stop
        self.stopping: Deferred | None = None
        self.stopped = False

    def startListening(self) -> None:
        pass

    def stopListening(self) -> Deferred:
        if self.hang_stop:
            self.stopping = Deferred()
            return self.stopping.addCallback(self._done)
        self._done(None)
        return succeed(None)

    def _done(self, _: Any) -> None:
        self.stopped = True

    def getHost(self) -> IPv4Address:
        return IPv4Address("TCP", "127.0.0.1", self.number)


def refused() -> CannotListenError:
    return CannotListenError("127.0.0.1", 9100, OSError(98, "Address already in use"))


@implementer(IStreamServerEndpoint)
class FakeEndpoint:
    """
    Each listen takes the next outcome from C{script}: a FakePort (listens
    at once), an exception (fails at once) or "hang" (a Deferred the test
    fires, kept in C{pending}).  C{listens} counts the calls.
    """

    def __init__(self, *script: Any) -> None:
        self.script = list(script)
        self.listens = 0
        self.pending: list[Deferred] = []
        self.cancelled = 0

    def listen(self, protocolFactory: Any) -> Deferred:
        self.listens += 1
        outcome = self.script.pop(0)
        if outcome == "hang":
            d: Deferred = Deferred(lambda _: self._cancel())
            self.pending.append(d)
            return d
        if isinstance(outcome, Exception):
            return fail(outcome)
        return succeed(outcome)

    def _cancel(self) -> None:
        self.cancelled += 1


@pytest.fixture
def logged():
    """Every log event while the test runs."""
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


def errors(events: list[dict]) -> list[dict]:
    return [e for e in events if e.get("log_level") in (LogLevel.error, LogLevel.critical, LogLevel.warn)]


def factory() -> Factory:
    return Factory.forProtocol(Protocol)


# Listener ---------------------------------------------------------------------


def test_a_listener_listens_at_start_not_at_privileged_start():
    endpoint = FakeEndpoint(FakePort(9100))
    listener = Listener(endpoint, factory(), "trigger 'a'", "tcp:9100")
    listener.privilegedStartService()
    assert endpoint.listens == 0
    listener.startService()
    assert endpoint.listens == 1 and listener.running
    assert listener.port is not None and listener.port.getHost().port == 9100


def test_a_listener_that_cannot_listen_at_start_raises_listen_error_and_logs_nothing(logged):
    listener = Listener(FakeEndpoint(refused()), factory(), "trigger 'a'", "tcp:9100")
    with pytest.raises(ListenError) as caught:
        listener.startService()
    assert str(caught.value) == ("trigger 'a' cannot listen on 'tcp:9100': "
                                 "Couldn't listen on 127.0.0.1:9100: [Errno 98] Address already in use.")
    assert not listener.running and listener.port is None
    assert errors(logged) == []
    stopped: list = []
    listener.stopService().addCallback(stopped.append)
    assert stopped == [None]


def test_a_listen_that_fails_later_is_logged_in_the_same_words(logged):
    endpoint = FakeEndpoint("hang")
    listener = Listener(endpoint, factory(), "[admin.http]", "tcp:8080")
    listener.startService()
    endpoint.pending[0].errback(refused())
    [line] = errors(logged)
    assert line["error"] == ("[admin.http] cannot listen on 'tcp:8080': "
                             "Couldn't listen on 127.0.0.1:9100: [Errno 98] Address already in use.")


def test_on_failure_hears_of_a_failure_instead_of_the_log(logged):
    heard: list = []
    listener = Listener(FakeEndpoint(refused()), factory(), "trigger 'a'", "tcp:9100", on_failure=heard.append)
    with pytest.raises(ListenError):
        listener.startService()
    assert [f.type for f in heard] == [CannotListenError]
    assert errors(logged) == []


def test_stopping_a_listener_stops_its_port():
    port = FakePort(9100)
    listener = Listener(FakeEndpoint(port), factory(), "trigger 'a'", "tcp:9100")
    listener.startService()
    stopped: list = []
    listener.stopService().addCallback(stopped.append)
    assert port.stopped and stopped == [None]
    assert listener.port is None and not listener.running


def test_stopping_a_listener_whose_listen_hangs_gives_the_listen_up(logged):
    endpoint = FakeEndpoint("hang")
    listener = Listener(endpoint, factory(), "trigger 'a'", "tcp:9100")
    listener.startService()
    waited: list = []
    listener.when_listening().addCallback(waited.append)
    stopped: list = []
    listener.stopService().addCallback(stopped.append)
    assert endpoint.cancelled == 1 and stopped == [None] and waited == [None]
    assert errors(logged) == []


def test_when_listening_fires_with_the_port():
    endpoint = FakeEndpoint("hang")
    listener = Listener(endpoint, factory(), "trigger 'a'", "tcp:9100")
    listener.startService()
    got: list = []
    listener.when_listening().addCallback(got.append)
    assert got == []
    port = FakePort(9100)
    endpoint.pending[0].callback(port)
    assert got == [port] and listener.port is port
    listener.when_listening().addCallback(got.append)
    assert got == [port, port]


def test_a_listener_stopped_before_it_started_just_stops():
    listener = Listener(FakeEndpoint(), factory(), "trigger 'a'", "tcp:9100")
    stopped: list = []
    listener.stopService().addCallback(stopped.append)
    assert stopped == [None]


def test_a_listener_wraps_its_endpoint_in_an_endpoint():
    listener = Listener(FakeEndpoint(), factory(), "trigger 'a'", "tcp:9100")
    assert verifyObject(IStreamServerEndpoint, listener.endpoint)


@pytest.mark.parametrize("description, expected", [
    ("tcp:0:interface=127.0.0.1", "tcp:5555:interface=127.0.0.1"),
    ("tcp:port=0:interface=127.0.0.1", "tcp:port=5555:interface=127.0.0.1"),
    ("tcp:interface=127.0.0.1:port=0:backlog=5", "tcp:interface=127.0.0.1:port=5555:backlog=5"),
    (r"tcp6:0:interface=\:\:1", r"tcp6:5555:interface=\:\:1"),
    ("ssl:0:privateKey=k.pem:certKey=c.pem", "ssl:5555:privateKey=k.pem:certKey=c.pem"),
    ("tcp:9100:interface=127.0.0.1", "tcp:9100:interface=127.0.0.1"),
    ("tcp:port=9100", "tcp:port=9100"),
    ("unix:/tmp/s", "unix:/tmp/s"),
])
def test_with_port_pins_port_0_only(description, expected):
    assert with_port(description, 5555) == expected


# PortMachine ------------------------------------------------------------------


class Owner:
    """What a PortMachine's owner sees: the ports it was told of."""

    def __init__(self, endpoint: FakeEndpoint) -> None:
        self.endpoint = endpoint
        self.clock = Clock()
        self.ports: list = []
        self.machine = PortMachine("p", "tcp:9100", lambda: endpoint, factory, self.clock, self.ports.append)

    @property
    def port(self) -> Any:
        return self.ports[-1] if self.ports else None

    def settled(self) -> list:
        fired: list = []
        self.machine.settled().addCallback(fired.append)
        return fired


def test_start_listens_and_the_port_is_open():
    port = FakePort(9100)
    owner = Owner(FakeEndpoint(port))
    owner.machine.start()
    assert owner.port is port and not owner.machine.moving() and owner.settled() == [None]


def test_a_start_that_cannot_listen_raises_and_leaves_the_port_closed(logged):
    owner = Owner(FakeEndpoint(refused(), FakePort(9100)))
    with pytest.raises(ListenError, match="trigger 'p' cannot listen on 'tcp:9100'"):
        owner.machine.start()
    assert owner.ports == [] and not owner.machine.moving()
    assert owner.clock.getDelayedCalls() == [] and errors(logged) == []


def test_want_closed_closes_and_want_open_listens_again():
    first, second = FakePort(9100), FakePort(9100)
    owner = Owner(FakeEndpoint(first, second))
    owner.machine.start()
    owner.machine.want_closed()
    assert first.stopped and owner.port is None
    owner.machine.want_closed()  # already closed: nothing
    owner.machine.want_open()
    assert owner.endpoint.listens == 2 and owner.port is second
    owner.machine.want_open()  # already open: nothing
    assert owner.endpoint.listens == 2


def test_a_wish_made_while_the_port_closes_waits_for_the_close():
    first, second = FakePort(9100, hang_stop=True), FakePort(9100)
    owner = Owner(FakeEndpoint(first, second))
    owner.machine.start()
    owner.machine.want_closed()
    assert owner.machine.moving() and owner.port is None
    fired = owner.settled()
    owner.machine.want_open()
    assert owner.endpoint.listens == 1 and fired == []
    assert first.stopping is not None
    first.stopping.callback(None)
    assert owner.endpoint.listens == 2 and owner.port is second and fired == [None]


def test_open_then_closed_again_while_closing_ends_closed():
    first = FakePort(9100, hang_stop=True)
    owner = Owner(FakeEndpoint(first))
    owner.machine.start()
    owner.machine.want_closed()
    owner.machine.want_open()
    owner.machine.want_closed()
    assert first.stopping is not None
    first.stopping.callback(None)
    assert owner.endpoint.listens == 1 and owner.port is None and not owner.machine.moving()


def test_a_failed_listen_is_logged_and_tried_again_after_the_delay(logged):
    owner = Owner(FakeEndpoint(FakePort(9100), refused(), refused(), FakePort(9100)))
    owner.machine.start()
    owner.machine.want_closed()
    owner.machine.want_open()
    assert owner.endpoint.listens == 2 and owner.port is None
    [line] = errors(logged)
    assert line["log_format"].startswith("trigger {trigger}: cannot listen again on {listen}")
    assert line["e"] == "Couldn't listen on 127.0.0.1:9100: [Errno 98] Address already in use."
    assert not owner.machine.moving() and owner.settled() == [None]
    owner.machine.want_open()  # the retry is scheduled already
    owner.clock.advance(RELISTEN_DELAY - 0.001)
    assert owner.endpoint.listens == 2
    owner.clock.advance(0.001)
    assert owner.endpoint.listens == 3 and len(errors(logged)) == 2
    owner.clock.advance(RELISTEN_DELAY)
    assert owner.endpoint.listens == 4 and owner.port is not None
    assert owner.clock.getDelayedCalls() == []


def test_want_closed_ends_the_retries():
    owner = Owner(FakeEndpoint(FakePort(9100), refused()))
    owner.machine.start()
    owner.machine.want_closed()
    owner.machine.want_open()
    assert len(owner.clock.getDelayedCalls()) == 1
    owner.machine.want_closed()
    assert owner.clock.getDelayedCalls() == []
    owner.clock.advance(10 * RELISTEN_DELAY)
    assert owner.endpoint.listens == 2


def test_a_listen_that_hangs_is_given_up_by_want_closed():
    owner = Owner(FakeEndpoint(FakePort(9100), "hang"))
    owner.machine.start()
    owner.machine.want_closed()
    owner.machine.want_open()
    assert owner.machine.moving()
    fired = owner.settled()
    owner.machine.want_open()  # a listen is under way: not a second one
    assert owner.endpoint.listens == 2
    owner.machine.want_closed()
    assert owner.endpoint.cancelled == 1 and fired == [None] and not owner.machine.moving()
    assert owner.port is None


def test_a_listen_that_hangs_then_succeeds_opens_the_port():
    port = FakePort(9100)
    owner = Owner(FakeEndpoint("hang"))
    owner.machine.start()
    assert owner.machine.moving() and owner.port is None
    fired = owner.settled()
    owner.endpoint.pending[0].callback(port)
    assert owner.port is port and fired == [None]


def test_a_first_listen_that_hangs_then_fails_leaves_the_port_closed_without_retries(logged):
    owner = Owner(FakeEndpoint("hang"))
    owner.machine.start()
    owner.endpoint.pending[0].errback(refused())
    assert owner.port is None and not owner.machine.moving()
    assert owner.clock.getDelayedCalls() == []


def test_giving_up_a_listen_is_neither_logged_nor_retried(logged):
    owner = Owner(FakeEndpoint("hang"))
    owner.machine.start()
    owner.machine.want_closed()
    assert owner.endpoint.cancelled == 1 and owner.endpoint.pending[0].called
    assert errors(logged) == [] and owner.clock.getDelayedCalls() == []
    assert not owner.machine.moving() and owner.port is None
