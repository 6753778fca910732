"""
Trigger C{appsocket-status}: the AppSocket UDP status port (9101 by
convention) of a C{printer} trigger.

A zero-length datagram, or one holding only CR/LF, is answered with one
status datagram; anything else is ignored.  The real AppSocket status
format is undocumented, so rawsvc's is plain ASCII text, one C{KEY=VALUE}
per line, LF-ended, always in this order (new keys may be added at the
end; values are single-line)::

    STATE=idle|receiving|processing|paused|error
    PRINTER=<printer trigger name>
    JOB=<id of the job whose flow runs, or empty>
    JOB_NAME=<its PJL job name, or empty>
    CLIENT=<host:port of the client being served, or empty>
    QUEUED=<clients held waiting (busy = "queue")>
    JOBS_OK=<jobs whose flow succeeded since start>
    JOBS_FAILED=<jobs whose flow failed since start>
    LAST_ERROR=<the last failed flow's error, or empty>

Replies are rate-limited per source address (C{rate_limit} per second,
default 5, with a burst of the same size) and in total
(C{rate_limit_total}), so the port cannot be used to amplify a flood: a
reply is at most a few hundred bytes and never more than one per query.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.errors import ConfigIssue
from rawsvc.interfaces import IPrinterStatus, IReferencingTriggerType, ITrigger
from rawsvc.metrics import TriggerCounters
from rawsvc.triggers.printer_state import PrinterSnapshot

if TYPE_CHECKING:
    from rawsvc.context import BuildContext

log = Logger(namespace="rawsvc.trigger")

STATUS_KEYS = ("STATE", "PRINTER", "JOB", "JOB_NAME", "CLIENT", "QUEUED", "JOBS_OK", "JOBS_FAILED", "LAST_ERROR")

APPSOCKET_OPTIONS = o.Schema(
    o.Option("name", str, doc="the trigger's name"),
    o.Option("type", str, doc="`\"appsocket-status\"`"),
    o.Option("listen", str, check=o.udp_endpoint, doc="`udp:PORT:interface=ADDR` (9101 by convention)"),
    o.Option("printer", str, doc="the `printer` trigger it reports on"),
    o.Option("description", str, "", doc="free text"),
    o.Option("rate_limit", (int, float), 5.0, o.positive, doc="replies per second per source address (no amplification)"),
    o.Option("rate_limit_total", (int, float), 100.0, o.positive, doc="replies per second in all"),
)


def _line(value: Any) -> str:
    return str(value).replace("\r", " ").replace("\n", " ")


def format_status(snapshot: PrinterSnapshot) -> bytes:
    """The status datagram for a printer's L{PrinterSnapshot} (C{printer.snapshot()})."""
    fields = {
        "STATE": snapshot.state,
        "PRINTER": snapshot.printer,
        "JOB": snapshot.job_id,
        "JOB_NAME": snapshot.job_name,
        "CLIENT": snapshot.client,
        "QUEUED": snapshot.queued,
        "JOBS_OK": snapshot.jobs_ok,
        "JOBS_FAILED": snapshot.jobs_failed,
        "LAST_ERROR": snapshot.last_error,
    }
    text = "".join(f"{k}={_line(fields[k])}\n" for k in STATUS_KEYS)
    if snapshot.conditions:  # only while simulated conditions are set: the usual answer is unchanged
        text += f"CONDITIONS={','.join(snapshot.conditions)}\nHELD={snapshot.held}\n"
    return text.encode("utf-8", "replace")


def parse_status(data: bytes) -> dict[str, str]:
    """A status datagram back into a dict (for clients and tests)."""
    out: dict[str, str] = {}
    for line in data.decode("utf-8", "replace").splitlines():
        key, eq, value = line.partition("=")
        if eq:
            out[key] = value
    return out


class TokenBuckets:
    """At most C{rate} events per second per key (burst C{rate}), and C{total} in all."""

    def __init__(self, rate: float, total: float, clock=time.monotonic, max_keys: int = 4096) -> None:
        self.rate = rate
        self.total = total
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[Any, tuple[float, float]] = {}
        self._all = (total, clock())

    @staticmethod
    def _take(bucket: tuple[float, float], rate: float, now: float) -> tuple[bool, tuple[float, float]]:
        tokens, then = bucket
        tokens = min(rate, tokens + (now - then) * rate)
        if tokens >= 1.0:
            return True, (tokens - 1.0, now)
        return False, (tokens, now)

    def allow(self, key: Any) -> bool:
        now = self.clock()
        if key not in self._buckets and len(self._buckets) >= self.max_keys:
            # Forget sources whose bucket has refilled: they are owed nothing.
            full = now - 1.0
            self._buckets = {k: v for k, v in self._buckets.items() if v[1] > full}
            if len(self._buckets) >= self.max_keys:
                return False
        ok_all, all_next = self._take(self._all, self.total, now)
        if not ok_all:
            self._all = all_next
            return False
        ok, nxt = self._take(self._buckets.get(key, (self.rate, now)), self.rate, now)
        self._buckets[key] = nxt
        if ok:
            self._all = all_next
        return ok


class StatusProtocol(DatagramProtocol):
    noisy = False

    def __init__(self, trigger: "AppSocketStatusTrigger") -> None:
        self.trigger = trigger

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        t = self.trigger
        t.counters.bytes_in += len(data)
        if data.strip(b"\r\n"):
            t.ignored += 1
            return
        if not t.limiter.allow(addr[0]):
            t.counters.connections_refused += 1
            return
        reply = t.status_datagram()
        t.counters.jobs_received += 1
        t.counters.bytes_out += len(reply)
        assert self.transport is not None  # datagramReceived runs only while listening
        self.transport.write(reply, addr)


@provider(IReferencingTriggerType)
@implementer(ITrigger)
class AppSocketStatusTrigger(Service):
    """Answers UDP status queries for one printer trigger."""

    type_name = "appsocket-status"
    options = APPSOCKET_OPTIONS

    def __init__(self, options: dict[str, Any], context: BuildContext, printer: IPrinterStatus) -> None:
        self.name = options["name"]
        self.opts = options
        self.context = context
        self.reactor = context.reactor
        self.listen = options["listen"]
        self.udp_port, self.interface = options["listen"]
        self.printer_name = options["printer"]
        self.counters = TriggerCounters()
        self.limiter = TokenBuckets(options["rate_limit"], options["rate_limit_total"])
        self.ignored = 0
        self.port: Any = None
        self.paused = False
        #: The printer it reports on, handed over at build time.
        self.printer = printer

    @classmethod
    def from_config(cls, options: dict[str, Any], context: BuildContext) -> "AppSocketStatusTrigger":
        target = context.trigger_options.get(options["printer"])
        if target is None:
            raise ConfigIssue(f"names trigger {options['printer']!r}, which is not defined", "printer")
        if target.get("type") != "printer":
            raise ConfigIssue(
                f"names trigger {options['printer']!r} of type {target.get('type')!r}; "
                "it must name a trigger of type \"printer\"", "printer")
        printer = context.triggers.get(options["printer"])
        if printer is None or not IPrinterStatus.providedBy(printer):
            raise ConfigIssue(f"names trigger {options['printer']!r}, which could not be built", "printer")
        return cls(options, context, printer)

    def status_datagram(self) -> bytes:
        return format_status(self.printer.snapshot())

    @property
    def listening(self) -> bool:
        return self.port is not None

    def _listen(self) -> None:
        self.port = self.reactor.listenUDP(self.udp_port, StatusProtocol(self), interface=self.interface)
        log.info("trigger {trigger} (appsocket-status) for printer {printer} on udp {addr}:{port}",
                 trigger=self.name, printer=self.printer_name, addr=self.interface,
                 port=self.port.getHost().port)

    def startService(self) -> None:
        super().startService()
        if not self.paused:
            self._listen()

    def stopService(self) -> Deferred:
        super().stopService()
        return self._close()

    def _close(self) -> Deferred:
        if self.port is None:
            return succeed(None)
        port, self.port = self.port, None
        return port.stopListening() or succeed(None)

    def pause(self) -> Deferred:
        """Stop answering: the UDP port closes."""
        self.paused = True
        return self._close()

    def resume(self) -> Deferred:
        self.paused = False
        if self.running and self.port is None:
            self._listen()
        return succeed(None)

    def address(self) -> str:
        if self.port is None:
            return ""
        host = self.port.getHost()
        return f"{host.host}:{host.port}"

    #: It makes no jobs: no flow, no connections, nothing to wait for at a stop.
    flow = ""

    def connection_list(self) -> list[dict[str, Any]]:
        return []

    def receiving(self) -> int:
        return 0

    def abort_receiving(self) -> int:
        return 0

    def status(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "type": self.type_name,
            "listen": f"udp:{self.udp_port}:interface={self.interface}",
            "address": self.address(),
            "listening": self.listening,
            "paused": self.paused,
            "printer": self.printer_name,
            "ignored": self.ignored,
            "counters": self.counters.as_dict(),
        }
