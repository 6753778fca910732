"""
Trigger C{serial}: a serial line (C{device = "/dev/ttyUSB0"}) read through
Twisted's C{SerialPort} and pyserial, framed with any framing of the
C{tcp} trigger (C{execute_on}: markers, length_prefix, delimiter ...);
the flow's replies are written back on the same line.

A device that cannot be opened (not plugged in yet) or that disappears
(a USB adapter unplugged: the read fails with an I/O error) is opened
again after a capped, jittered back-off (L{rawsvc.client.retry.RetryPolicy}),
so the line works again once the device comes back.  States:
C{opening} -> C{open}; a failed open or a lost line -> C{backing_off}.
Written only against the public plugin API (L{rawsvc.triggers.api}).
"""

from __future__ import annotations

from typing import Any, cast

import attrs
import serial  # type: ignore[import-untyped]  # pyserial ships no type hints
from twisted.application.service import Service
from twisted.internet import error
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol, connectionDone
from twisted.internet.serialport import SerialPort
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.client.retry import RetryPolicy
from rawsvc.errors import ConfigIssue
from rawsvc.interfaces import IJobSink, ITrigger, ITriggerType
from rawsvc.job import SpillBudget
from rawsvc.metrics import TriggerCounters
from rawsvc.triggers.api import (
    OpenConnections,
    FRAMING_OPTIONS, LISTENER_OPTIONS, STREAM_OPTIONS, ConnectionSettings, FramedConnection, framer_factory,
)

log = Logger(namespace="rawsvc.trigger")

#: Line states (L{SerialTrigger.state}).
STOPPED, OPENING, OPEN, BACKING_OFF = "stopped", "opening", "open", "backing_off"

_PARITY = {"none": serial.PARITY_NONE, "even": serial.PARITY_EVEN, "odd": serial.PARITY_ODD,
           "mark": serial.PARITY_MARK, "space": serial.PARITY_SPACE}
_STOPBITS = {1: serial.STOPBITS_ONE, 1.5: serial.STOPBITS_ONE_POINT_FIVE, 2: serial.STOPBITS_TWO}


def _device(value: str) -> str:
    if not value:
        raise ConfigIssue("must name the serial device, e.g. '/dev/ttyUSB0'")
    return value


def _stopbits(value: Any) -> Any:
    if value not in _STOPBITS:
        raise ConfigIssue(f"must be 1, 1.5 or 2, not {value!r}")
    return value


def _bytesize(value: int) -> int:
    if value not in (5, 6, 7, 8):
        raise ConfigIssue(f"must be 5, 6, 7 or 8, not {value!r}")
    return value


def _baudrate(value: int) -> int:
    if value <= 0:
        raise ConfigIssue(f"must be a positive number of bits per second, not {value!r}")
    return value


SERIAL_OPTIONS = (
    o.Schema(LISTENER_OPTIONS.options["name"])
    + o.Schema(
        o.Option("type", str, doc="the trigger type: `serial`"),
        o.Option("device", str, check=_device, doc="the serial device: `/dev/ttyUSB0`, `/dev/serial/by-id/...`"),
        o.Option("baudrate", int, 9600, _baudrate, doc="line speed, bits per second"),
        o.Option("bytesize", int, 8, _bytesize, doc="data bits: 5, 6, 7 or 8"),
        o.Option("parity", str, "none", o.one_of(*_PARITY), doc="`none`, `even`, `odd`, `mark` or `space`"),
        o.Option("stopbits", (int, float), 1, _stopbits, doc="stop bits: 1, 1.5 or 2"),
        o.Option("xonxoff", bool, False, doc="software flow control (XON/XOFF)"),
        o.Option("rtscts", bool, False, doc="hardware flow control (RTS/CTS)"),
    )
    + o.Schema(*(LISTENER_OPTIONS.options[k] for k in
                 ("flow", "description", "job_timeout", "max_job_bytes", "spill_budget", "encoding")))
    + o.Schema(
        o.Option("retry_delay", (int, float), 1.0, o.positive,
                 doc="seconds before the device is opened again after it failed or went away"),
        o.Option("max_retry_delay", (int, float), 30.0, o.positive,
                 doc="the reopen back-off doubles up to this (s), plus up to a quarter of `retry_delay` of jitter"),
    )
    + FRAMING_OPTIONS
    + STREAM_OPTIONS
)


@attrs.frozen
class SerialAddress:
    """The peer of a serial line: its device (C{host}, as a job's C{peer_host}); C{port} is 0."""

    host: str
    port: int = 0


class _Port(SerialPort):
    """C{SerialPort} with what a trigger's connection asks of its transport: a peer and an abort."""

    def __init__(self, device: str, protocol: Protocol, reactor: Any, **kw: Any) -> None:
        self.device = device
        self.clock = reactor
        super().__init__(protocol, device, reactor, **kw)

    def getPeer(self) -> SerialAddress:
        return SerialAddress(self.device)

    def getHost(self) -> SerialAddress:
        return SerialAddress(self.device)

    def abortConnection(self) -> None:
        """Close the line now, without writing what is buffered."""
        if self.disconnected:
            return
        self.stopReading()
        self.stopWriting()
        self.disconnecting = True
        self.clock.callLater(0, self.connectionLost, Failure(error.ConnectionAborted()))


class _LineProtocol(Protocol):
    """Runs a L{FramedConnection} on the serial port and tells the trigger when the line closes."""

    def __init__(self, trigger: "SerialTrigger", conn: FramedConnection) -> None:
        self.trigger = trigger
        self.conn = conn

    def makeConnection(self, transport: Any) -> None:
        Protocol.makeConnection(self, transport)
        self.conn.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.conn.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            self.conn.connectionLost(reason)
        finally:
            self.trigger.lost(self, reason)


@provider(ITriggerType)
@implementer(ITrigger)
class SerialTrigger(OpenConnections, Service):
    """The C{serial} trigger: one serial line, framed like a C{tcp} trigger's connections, reopened when lost."""

    type_name = "serial"
    abort_message = "stopping: closing {peer}, still sending a job"
    options = SERIAL_OPTIONS

    def __init__(self, options: dict[str, Any], context: Any) -> None:
        self.name = options["name"]
        self.opts = options
        self.reactor = context.reactor
        self.device = options["device"]
        # A serial line is quiet between records for as long as it likes: no idle timeout.
        self.settings = ConnectionSettings.from_options(options, context, idle_timeout=0.0)
        self.flow = self.settings.flow
        self.counters = TriggerCounters()
        self.sink: IJobSink = context.sink
        # What a FramedConnection reads from its trigger (as for tcp-client).
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
        self.state = STOPPED
        self.opens = 0
        self.open_failures = 0
        self.lines_lost = 0
        self.last_error = ""
        self.next_attempt: float | None = None
        self.protocol: _LineProtocol | None = None
        self._in_row = 0
        self._wait: Any = None

    @classmethod
    def from_config(cls, options: dict[str, Any], context: Any) -> "SerialTrigger":
        return cls(options, context)

    def _dropped(self, n: int) -> None:
        self.bytes_dropped += n

    #: Its connection never asks L{disk_check} at the accept (it says nothing).
    disk_check_at_accept = False

    def disk_check(self) -> str | None:
        """A device cannot be turned away: a job that cannot be stored is refused (the sink says so)."""
        return None

    # The line ---------------------------------------------------------------

    def _open(self) -> None:
        self._wait = None
        self.next_attempt = None
        self.state = OPENING
        protocol = _LineProtocol(self, FramedConnection(cast(Any, self), self._framer()))
        o_ = self.opts
        try:
            _Port(self.device, protocol, self.reactor, baudrate=o_["baudrate"],
                  bytesize=o_["bytesize"], parity=_PARITY[o_["parity"]], stopbits=_STOPBITS[o_["stopbits"]],
                  xonxoff=o_["xonxoff"], rtscts=o_["rtscts"])
        except (serial.SerialException, OSError, ValueError) as e:
            self.open_failures += 1
            self._back_off(f"cannot open {self.device}: {getattr(e, 'strerror', None) or e}")
            return
        self.protocol = protocol
        self.state = OPEN
        self.opens += 1
        self._in_row = 0
        log.info("trigger {trigger}: {device} open at {baud} baud{again}", trigger=self.name, device=self.device,
                 baud=o_["baudrate"], again=f" (reopened {self.opens - 1})" if self.opens > 1 else "")

    def lost(self, protocol: _LineProtocol, reason: Failure) -> None:
        """The line closed: the device went away (or a stop, pause or abort closed it)."""
        if protocol is self.protocol:
            self.protocol = None
        if self.state == STOPPED:
            if self.running and not self.paused and self.protocol is None:
                self._open()  # resumed while the paused line was still closing
            return
        if self.state == BACKING_OFF:
            return
        self.lines_lost += 1
        self._back_off(f"line lost: {reason.getErrorMessage()}")

    def _back_off(self, why: str) -> None:
        self._in_row += 1
        delay = self._retry.delay(self._in_row)
        self.last_error = why
        self.state = BACKING_OFF
        self.next_attempt = self.reactor.seconds() + delay
        log.warn("trigger {trigger}: {why}; trying again in {delay:.1f} s", trigger=self.name, why=why, delay=delay)
        self._wait = self.reactor.callLater(delay, self._open)

    def _close(self) -> None:
        self.state = STOPPED
        self.next_attempt = None
        if self._wait is not None and self._wait.active():
            self._wait.cancel()
        self._wait = None
        if self.protocol is not None:
            self.protocol.conn.shutdown()

    # Lifetime ---------------------------------------------------------------

    @property
    def listening(self) -> bool:
        """True while the line is open (C{rawsvc_trigger_up})."""
        return self.state == OPEN

    def startService(self) -> None:
        super().startService()
        if not self.paused and self.state == STOPPED:
            self._open()

    def stopService(self) -> Deferred:
        super().stopService()
        self._close()
        return succeed(None)

    def pause(self) -> Deferred:
        """Close the line (once its jobs are in) and open it again only at L{resume}."""
        self.paused = True
        self._close()
        return succeed(None)

    def resume(self) -> Deferred:
        self.paused = False
        if self.running and self.state == STOPPED and self.protocol is None:
            self._open()
        return succeed(None)

    # Status -----------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        s: dict[str, Any] = {
            "name": self.name,
            "type": self.type_name,
            "device": self.device,
            "listening": self.listening,
            "paused": self.paused,
            "flow": self.flow,
            "execute_on": self.opts["execute_on"],
            "line": self.state,
            "opens": self.opens,
            "reopens": max(0, self.opens - 1),
            "open_failures": self.open_failures,
            "lines_lost": self.lines_lost,
            "last_error": self.last_error,
            "counters": self.counters.as_dict(),
        }
        if self.next_attempt is not None:
            s["next_attempt_in"] = round(max(0.0, self.next_attempt - self.reactor.seconds()), 3)
        if self.opts["execute_on"] == "markers":
            s["bytes_dropped"] = self.bytes_dropped
        return s
