"""
Trigger C{tcp-client}: rawsvc connects I{out} to a device that serves data
(a scale, a PLC, a scanner gateway), frames what it sends with any framing
of the C{tcp} trigger, runs the flow per job, and writes the flow's
replies back on the same connection.

The link is kept up by L{Link}: a refused connect, a reset or a close is
followed by a capped, jittered back-off (L{rawsvc.client.retry.RetryPolicy})
and a new connect; TCP keepalive is on, and an optional C{idle_timeout}
closes a link that went silent (a half-open one) so it is made again.
Written only against the public plugin API (L{rawsvc.triggers.api}).

Why not C{twisted.application.internet.ClientService}: its stop closes
the link at once, so a job still arriving would be cut (and, framed on
the close, taken as whole); here a stop lets it arrive within the
service's C{stop_grace}, then resets the link, as the server triggers do.
"""

from __future__ import annotations

from typing import Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IHalfCloseableProtocol, ITCPTransport
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.client.retry import RetryPolicy
from rawsvc.errors import ConfigIssue
from rawsvc.interfaces import IJobSink, IOutboundLink, ITrigger, ITriggerType
from rawsvc.job import SpillBudget
from rawsvc.metrics import TriggerCounters
from rawsvc.triggers.api import (
    OpenConnections,
    FRAMING_OPTIONS, LISTENER_OPTIONS, STREAM_OPTIONS, ConnectionSettings, FramedConnection, framer_factory,
)

log = Logger(namespace="rawsvc.trigger")

#: Link states (L{Link.state}).
STOPPED, CONNECTING, CONNECTED, BACKING_OFF = "stopped", "connecting", "connected", "backing_off"


def _client_endpoint(value: str) -> str:
    from twisted.internet.testing import MemoryReactor

    if ":" not in value:
        raise ConfigIssue(f"{value!r} is not an endpoint string; write e.g. 'tcp:host=10.0.0.5:port=4001'")
    try:
        clientFromString(MemoryReactor(), value)
    except Exception as e:
        raise ConfigIssue(f"bad client endpoint string {value!r}: {e}") from None
    return value


def _listener_keys(*keys: str) -> o.Schema:
    """The server triggers' declarations of C{keys}, shared as they are."""
    return o.Schema(*(LISTENER_OPTIONS.options[k] for k in keys))


TCP_CLIENT_OPTIONS = (
    _listener_keys("name")
    + o.Schema(
        o.Option("type", str, doc="the trigger type: `tcp-client`"),
        o.Option("endpoint", str, check=_client_endpoint,
                 doc="the device to connect to: any Twisted client endpoint, `tcp:host=10.0.0.5:port=4001`, `tls:...`"),
    )
    + _listener_keys("flow", "description", "job_timeout", "max_job_bytes", "spill_budget", "refusal", "encoding")
    + o.Schema(
        o.Option("idle_timeout", (int, float), 0.0, o.non_negative,
                 doc="close and re-make a link on which the device sent no job bytes for this long (s; 0 = never): "
                     "finds a half-open link that TCP keepalive finds only after minutes"),
        o.Option("keepalive", bool, True, doc="TCP keepalive on the link"),
        o.Option("retry_delay", (int, float), 1.0, o.positive, doc="seconds before the first reconnect"),
        o.Option("max_retry_delay", (int, float), 30.0, o.positive,
                 doc="the reconnect back-off doubles up to this (s), plus up to a quarter of `retry_delay` of jitter"),
    )
    + FRAMING_OPTIONS
    + STREAM_OPTIONS
)


@implementer(IHalfCloseableProtocol)
class _LinkProtocol(Protocol):
    """Runs a L{FramedConnection} on the real transport and tells the L{Link} when it closes."""

    def __init__(self, link: "Link", conn: FramedConnection) -> None:
        self.link = link
        self.conn = conn

    def makeConnection(self, transport: Any) -> None:
        Protocol.makeConnection(self, transport)
        self.conn.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.conn.dataReceived(data)

    def readConnectionLost(self) -> None:
        self.conn.readConnectionLost()

    def writeConnectionLost(self) -> None:
        self.conn.writeConnectionLost()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            self.conn.connectionLost(reason)
        finally:
            self.link.lost(reason)


class Link:
    """
    Keeps one connection to the device up: C{stopped} -> C{connecting} ->
    C{connected}; a failed connect or a lost link -> C{backing_off} (a
    jittered wait, doubling per failure in a row up to the cap) ->
    C{connecting}.  Counts attempts, connects and failures.
    """

    def __init__(self, trigger: "TcpClientTrigger", endpoint: Any, retry: RetryPolicy) -> None:
        self.trigger = trigger
        self.reactor = trigger.reactor
        self.endpoint = endpoint
        self.retry = retry
        self.state = STOPPED
        self.connects = 0
        self.failures = 0
        self.lost_links = 0
        self.last_error = ""
        self.next_attempt: float | None = None
        self.protocol: _LinkProtocol | None = None
        self._in_row = 0
        self._connecting: Deferred | None = None
        self._wait: Any = None

    @property
    def reconnects(self) -> int:
        """Connects after the first one."""
        return max(0, self.connects - 1)

    def start(self) -> None:
        if self.state == STOPPED:
            self._attempt()

    def _attempt(self) -> None:
        self._wait = None
        self.next_attempt = None
        self.state = CONNECTING
        factory = Factory.forProtocol(lambda: _LinkProtocol(self, self.trigger.build_protocol()))
        factory.noisy = False
        try:
            d = self.endpoint.connect(factory)
        except Exception:
            d = Deferred()
            d.errback()
        self._connecting = d
        d.addCallbacks(self._connected, self._failed)

    def _connected(self, protocol: _LinkProtocol) -> None:
        self._connecting = None
        if self.state == STOPPED:  # stopped while the connect was under way
            cast(Any, protocol.transport).abortConnection()
            return
        self.protocol = protocol
        self.state = CONNECTED
        self.connects += 1
        self._in_row = 0
        if self.trigger.keepalive and ITCPTransport.providedBy(protocol.transport):
            ITCPTransport(protocol.transport).setTcpKeepAlive(True)
        log.info("trigger {trigger}: connected to {endpoint}{again}", trigger=self.trigger.name,
                 endpoint=self.trigger.endpoint_text, again=f" (reconnect {self.reconnects})" if self.connects > 1 else "")

    def _failed(self, failure: Failure) -> None:
        self._connecting = None
        if self.state == STOPPED:
            return  # the stop cancelled it
        self.failures += 1
        self._back_off(f"cannot connect: {failure.getErrorMessage()}")

    def lost(self, reason: Failure) -> None:
        """The link closed (the device closed or reset it, or an idle timeout did)."""
        self.protocol = None
        if self.state == STOPPED:
            return
        self.lost_links += 1
        self._back_off(f"link lost: {reason.getErrorMessage()}")

    def _back_off(self, why: str) -> None:
        self._in_row += 1
        delay = self.retry.delay(self._in_row)
        self.last_error = why
        self.state = BACKING_OFF
        self.next_attempt = self.reactor.seconds() + delay
        log.warn("trigger {trigger}: {endpoint}: {why}; trying again in {delay:.1f} s", trigger=self.trigger.name,
                 endpoint=self.trigger.endpoint_text, why=why, delay=delay)
        self._wait = self.reactor.callLater(delay, self._attempt)

    def stop(self) -> None:
        """No more connects; the open link (if any) is told to close once its jobs are in (C{shutdown})."""
        self.state = STOPPED
        self.next_attempt = None
        if self._wait is not None and self._wait.active():
            self._wait.cancel()
        self._wait = None
        if self._connecting is not None:
            self._connecting.cancel()
        if self.protocol is not None:
            self.protocol.conn.shutdown()

    def status(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "link": self.state,
            "connects": self.connects,
            "reconnects": self.reconnects,
            "connect_failures": self.failures,
            "links_lost": self.lost_links,
            "last_error": self.last_error,
        }
        if self.next_attempt is not None:
            s["next_attempt_in"] = round(max(0.0, self.next_attempt - self.reactor.seconds()), 3)
        return s


@provider(ITriggerType)
@implementer(ITrigger, IOutboundLink)
class TcpClientTrigger(OpenConnections, Service):
    """The C{tcp-client} trigger: one link out to a device, framed like a C{tcp} trigger's connections."""

    type_name = "tcp-client"
    abort_message = "stopping: resetting the link to {peer}, still sending a job; it sends it again"
    options = TCP_CLIENT_OPTIONS

    def __init__(self, options: dict[str, Any], context: Any) -> None:
        self.name = options["name"]
        self.opts = options
        self.reactor = context.reactor
        self.settings = ConnectionSettings.from_options(options, context)
        self.flow = self.settings.flow
        self.endpoint_text = options["endpoint"]
        self.keepalive = options["keepalive"]
        self.counters = TriggerCounters()
        self.sink: IJobSink = context.sink
        # What a FramedConnection reads from its trigger: one link, and room
        # for its successor while a paused link still finishes its jobs.
        self.connections: set = set()
        self.counted: set = set()
        self.max_connections = 2
        self.spill_budget = SpillBudget(options["spill_budget"] or None)
        self.bytes_dropped = 0
        self.paused = False
        if options["max_retry_delay"] < options["retry_delay"]:
            raise ConfigIssue("is smaller than retry_delay", "max_retry_delay")
        self._retry = RetryPolicy(retry_delay=float(options["retry_delay"]),
                                  max_retry_delay=float(options["max_retry_delay"]))
        self._framer = framer_factory(options, self.settings.max_job_bytes, self._dropped)
        self.link = self._new_link()

    @classmethod
    def from_config(cls, options: dict[str, Any], context: Any) -> "TcpClientTrigger":
        return cls(options, context)

    def _new_link(self) -> Link:
        return Link(self, clientFromString(self.reactor, self.endpoint_text), self._retry)

    def _dropped(self, n: int) -> None:
        self.bytes_dropped += n

    def build_protocol(self) -> FramedConnection:
        # FramedConnection reads what a listening trigger has (settings, sink,
        # counters, connections ...); this trigger has each of them.
        return FramedConnection(cast(Any, self), self._framer())

    #: Its connection never asks L{disk_check} at the accept (it says nothing).
    disk_check_at_accept = False

    def disk_check(self) -> str | None:
        """A device cannot be turned away: a job that cannot be stored is refused (the sink says so)."""
        return None

    # Lifetime ---------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """True while the link is up (C{rawsvc_trigger_up})."""
        return self.link.state == CONNECTED

    def startService(self) -> None:
        super().startService()
        if not self.paused:
            self.link.start()

    def stopService(self) -> Deferred:
        super().stopService()
        self.link.stop()
        return succeed(None)

    def pause(self) -> Deferred:
        """Close the link (once its jobs are in) and make no new one until L{resume}."""
        self.paused = True
        self.link.stop()
        log.info("trigger {trigger} paused", trigger=self.name)
        return succeed(None)

    def resume(self) -> Deferred:
        self.paused = False
        if self.running and self.link.state == STOPPED:
            log.info("trigger {trigger} resumed", trigger=self.name)
            old = self.link
            self.link = self._new_link()
            self.link.connects = old.connects  # the counts go on across a pause
            self.link.failures, self.link.lost_links = old.failures, old.lost_links
            self.link.start()
        return succeed(None)

    # Status -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        s = {
            "name": self.name,
            "type": self.type_name,
            "endpoint": self.endpoint_text,
            "listening": self.listening,
            "paused": self.paused,
            "flow": self.flow,
            "execute_on": self.opts["execute_on"],
            "connections": len(self.connections),
            "counters": self.counters.as_dict(),
            **self.link.status(),
        }
        if self.opts["execute_on"] == "markers":
            s["bytes_dropped"] = self.bytes_dropped
        return s

    def link_status(self) -> dict[str, Any]:
        return self.link.status()
