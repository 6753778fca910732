"""
What every listening trigger shares: its options, the listener's lifetime
(start, stop, pause, resume), the client allow-list and connection limit,
counters, and a status record.

A trigger is a Twisted service; the protocol it builds does framing and I/O
only and hands finished jobs to the service's job sink.
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING, Any, cast

from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.internet.endpoints import serverFromString
from twisted.internet.protocol import ServerFactory
from twisted.logger import Logger
from zope.interface import implementer

from rawsvc import options as o
from rawsvc.errors import ConfigIssue, ListenError
from rawsvc.interfaces import IJobSink, ITrigger
from rawsvc.job import SpillBudget
from rawsvc.listening import Listener
from rawsvc.metrics import TriggerCounters
from rawsvc.triggers.connections import OpenConnections
from rawsvc.triggers.admission import disk_low, raise_fd_limit
from rawsvc.triggers.settings import ConnectionSettings

if TYPE_CHECKING:
    from rawsvc.context import BuildContext

log = Logger(namespace="rawsvc.trigger")


def _networks(value: list) -> list:
    nets = []
    for item in o.string_list(value):
        try:
            nets.append(ipaddress.ip_network(item, strict=False))
        except ValueError:
            raise ConfigIssue(f"{item!r} is not an IP address or CIDR such as 10.0.0.0/8") from None
    return nets


#: The variables a refusal template may use.
REFUSAL_VARIABLES = ("reason", "peer_host", "trigger")


def _refusal(value: str):
    template = o.optional_template(value)
    if template is not None:
        unknown = [n for n in template.names if n not in REFUSAL_VARIABLES]
        if unknown:
            raise ConfigIssue(
                f"uses ${{{unknown[0]}}}; a refusal knows only "
                + ", ".join(f"${{{n}}}" for n in REFUSAL_VARIABLES)
            )
    return template


def _max_bytes(value: int) -> int:
    if value < 0:
        raise ConfigIssue("must be 0 (no limit) or more")
    return value


#: Options every stream trigger accepts.
LISTENER_OPTIONS = o.Schema(
    o.Option("name", str, doc="the trigger's name (in logs, status, `/metrics` and job variables)"),
    o.Option("type", str, doc="the trigger type: `tcp`, `printer`, `appsocket-status` or a plugin's"),
    o.Option("listen", str, check=o.server_endpoint, doc="any Twisted server endpoint: `tcp:9200:interface=127.0.0.1`, `ssl:...`, `unix:/path`"),
    o.Option("flow", str, doc="the flow each job runs"),
    o.Option("description", str, "", doc="free text"),
    o.Option("max_connections", int, 1000, o.positive,
             doc="connections counted at once (see low-resources mode below); at the cap the longest-silent "
                 "one is evicted, and a new client is refused only when every counted connection has a job in flight"),
    o.Option("allow", list, [], _networks, doc="client addresses/CIDRs allowed; others are closed at connect",
             shown_default="`[]` (any)"),
    o.Option("idle_timeout", (int, float), 300.0, o.non_negative,
             doc="close a connection that sent no job bytes for this long (s; 0 = never); empty messages "
                 "(a bare delimiter, e.g. `\\r\\n` keep-alives) are not activity"),
    o.Option("job_timeout", (int, float), 600.0, o.non_negative,
             doc="refuse a job that takes longer than this to arrive (s; 0 = never)"),
    o.Option("max_job_bytes", int, 2 << 30, _max_bytes, doc="refuse larger jobs, never half-run (0 = no limit)"),
    o.Option("min_free", int, 16 << 20, _max_bytes,
             doc="refuse new clients while the disk of `state_dir` has fewer bytes free (0 = never); "
                 "a `printer` closes its port instead"),
    o.Option("spill_budget", int, 4 << 30, _max_bytes,
             doc="bytes of spill files (jobs past `spill_threshold`, in `state_dir/tmp`) the trigger holds "
                 "at once; a job that would pass it is refused (0 = no limit)"),
    o.Option("refusal", str, "", lambda v: _refusal(v),
             doc="text written to a refused client, `${reason}` says why (empty: just close)"),
    o.Option("encoding", str, "utf-8", o.encoding, doc="how `${data}` decodes the payload"),
    o.Option("backlog", int, 1024, lambda v: _backlog(v),
             doc="listen backlog added to `tcp:`/`ssl:` endpoints that set no `backlog=` (Twisted's default "
                 "of 50 drops legitimate clients' SYNs during a burst)"),
)


def _backlog(value: int) -> int:
    if not 1 <= value <= 65535:
        raise ConfigIssue(f"must be between 1 and 65535, not {value!r}")
    return value


def with_backlog(description: str, backlog: int) -> str:
    """
    Add C{backlog=N} to a tcp or ssl endpoint string that does not set one:
    Twisted's default of 50 drops the SYNs of legitimate clients (they wait
    1, 3, 7 s to retry) as soon as a burst of connections arrives.
    """
    kind = description.split(":", 1)[0]
    if kind not in ("tcp", "ssl") or "backlog=" in description:
        return description
    return f"{description}:backlog={backlog}"


def peer_of(transport: Any) -> tuple[str, int]:
    peer = transport.getPeer()
    host = getattr(peer, "host", None)
    if host is None:
        return "unix", 0
    return host, getattr(peer, "port", 0)


def allowed(host: str, networks: list) -> bool:
    if not networks:
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(addr in net for net in networks)


class TriggerFactory(ServerFactory):
    """Builds one protocol per accepted connection; turns away disallowed peers."""

    noisy = False

    def __init__(self, trigger: "ListenerTrigger") -> None:
        self.trigger = trigger

    def buildProtocol(self, addr):
        host = getattr(addr, "host", None)
        if host is not None and not allowed(host, self.trigger.allow):
            self.trigger.counters.connections_refused += 1
            log.warn(
                "trigger {trigger}: refused {host}: not in allow list",
                trigger=self.trigger.name,
                host=host,
            )
            return None
        p = self.trigger.build_protocol()
        p.factory = self
        return p


@implementer(ITrigger)
class ListenerTrigger(OpenConnections, Service):
    """A trigger that listens on a stream endpoint (tcp, ssl, unix)."""

    type_name = "?"
    options = LISTENER_OPTIONS

    def __init__(self, options: dict[str, Any], context: BuildContext) -> None:
        self.name = options["name"]
        self.opts = options
        self.context = context
        self.reactor = context.reactor
        #: What every connection reads, fixed here, once.
        self.settings = ConnectionSettings.from_options(options, context)
        s = self.settings
        self.listen = options["listen"]
        self.flow = s.flow
        self.allow = options["allow"]
        self.max_connections = s.max_connections
        self.idle_timeout = s.idle_timeout
        self.job_timeout = s.job_timeout
        self.max_job_bytes = s.max_job_bytes
        self.refusal = s.refusal
        self.encoding = s.encoding
        self.counters = TriggerCounters()
        self.connections: set = set()
        #: The connections that count against max_connections (see L{rawsvc.triggers.admission}).
        self.counted: set = set()
        self.spill_budget = SpillBudget(options.get("spill_budget", 4 << 30) or None)
        self.min_free = options.get("min_free", 16 << 20)
        #: Where its jobs go (an IJobSink), handed over at build time.
        self.sink: IJobSink = cast(IJobSink, context.sink)  # the loader builds the sink before any trigger
        self.port: Any = None
        self.paused = False
        self.spill_threshold = s.spill_threshold
        self.temp_dir = s.temp_dir

    @property
    def disk_check_at_accept(self) -> bool:
        """
        Whether a new connection calls L{disk_check}: to turn clients away
        (a C{refusal} text to say why), or because the trigger's own
        C{disk_check} acts on what it finds (the printer closes its port).
        Otherwise the accept costs no C{statvfs}.
        """
        return bool(self.min_free) and (
            self.settings.turn_away_when_disk_low or type(self).disk_check is not ListenerTrigger.disk_check)

    @classmethod
    def from_config(cls, options: dict[str, Any], context: BuildContext) -> "ListenerTrigger":
        return cls(options, context)

    # Lifetime ---------------------------------------------------------------

    def build_protocol(self):
        raise NotImplementedError

    #: The service that owns the listening port (None while paused or stopped).
    _listener: Listener | None = None

    @property
    def listening(self) -> bool:
        return self.port is not None

    def _endpoint(self) -> Any:
        """The endpoint the config's C{listen} names, with the listen backlog."""
        return serverFromString(self.reactor, with_backlog(self.listen, self.opts.get("backlog", 1024)))

    def _new_listener(self) -> Listener:
        return Listener(self._endpoint(), TriggerFactory(self), f"trigger {self.name!r}", self.listen,
                        on_port=self._up)

    def _up(self, port: Any) -> None:
        self.port = port
        host = port.getHost()
        log.info(
            "trigger {trigger} ({type}) listening on {addr}, flow {flow}",
            trigger=self.name,
            type=self.type_name,
            addr=f"{getattr(host, 'host', host)}:{getattr(host, 'port', '')}",
            flow=self.flow,
        )

    def startService(self) -> None:
        """Listen; a port that cannot be opened raises L{ListenError} (tcp, unix and ssl fail at once)."""
        super().startService()
        raise_fd_limit(self.max_connections, str(self.name))
        try:
            self._open_at_start()
        except ListenError:
            self.running = 0
            raise

    def _open_at_start(self) -> None:
        listener = self._new_listener()
        listener.startService()
        self._listener = listener

    def _close_listener(self) -> Deferred:
        listener, self._listener = self._listener, None
        self.port = None
        if listener is None:
            return succeed(None)
        return listener.stopService()

    @inlineCallbacks
    def stopService(self):
        super().stopService()
        yield self._close_listener()
        for conn in self.shutdown_order():
            conn.shutdown()

    def shutdown_order(self) -> list[Any]:
        """The open connections, in the order a stop tells them (a printer: served one, then its queue)."""
        return list(self.connections)

    def pause(self) -> Deferred:
        """Stop accepting: the port closes, so new clients are refused."""
        self.paused = True
        if self._listener is None:
            return succeed(None)
        log.info("trigger {trigger} paused", trigger=self.name)
        return self._close_listener()

    def resume(self) -> Deferred:
        """
        Listen again (a new listener); fires once listening, or fails with
        the L{ListenError} (also logged) when it cannot: it stays closed.
        """
        self.paused = False
        if self._listener is not None or not self.running:
            return succeed(None)
        log.info("trigger {trigger} resumed", trigger=self.name)
        listener = self._new_listener()
        try:
            listener.startService()
        except ListenError as e:
            log.error("{error}; the trigger stays closed", error=str(e))
            return fail(e)
        self._listener = listener
        return listener.when_listening().addCallback(lambda _: None)

    def disk_check(self) -> str | None:
        """Why new clients are refused for want of disk space (C{min_free}), or None."""
        return disk_low(self)

    # Status -----------------------------------------------------------------

    def address(self) -> str:
        if self.port is None:
            return ""
        host = self.port.getHost()
        return f"{getattr(host, 'host', '')}:{getattr(host, 'port', '')}" if hasattr(host, "port") else str(getattr(host, "name", host))

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type_name,
            "listen": self.listen,
            "address": self.address(),
            "listening": self.listening,
            "paused": self.paused,
            "flow": self.flow,
            "connections": len(self.connections),
            "counters": self.counters.as_dict(),
        }
