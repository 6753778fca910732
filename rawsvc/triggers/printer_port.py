"""
The printer's listening port, closed while the printer is paused or busy
(C{busy = refuse}, or a full queue) or its disk is below C{min_free}, and
opened again on the same port number, mixed into
L{rawsvc.triggers.printer.PrinterTrigger}.

A closed port is the one refusal every JetDirect client sees for sure
(ECONNREFUSED; CUPS's backend keeps the job and tries again): a reset,
even at the accept, comes too late for a client whose job fits in the
socket buffers, as it has written every byte and takes the job as printed.

The opening and closing is L{rawsvc.triggers.port_machine.PortMachine}'s;
L{ClosingPort.update_port} tells it what the printer wants.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from rawsvc.listening import with_port
from rawsvc.triggers.base import ListenerTrigger, TriggerFactory, with_backlog
from rawsvc.triggers.port_machine import RELISTEN_DELAY, PortMachine

if TYPE_CHECKING:
    from rawsvc.context import BuildContext

__all__ = ["ClosingPort", "DISK_CHECK_INTERVAL", "RELISTEN_DELAY"]

log = Logger(namespace="rawsvc.trigger")

#: Seconds between checks of the free disk space against C{min_free}.
DISK_CHECK_INTERVAL = 1.0


class ClosingPort(ListenerTrigger):
    """A listener whose port follows C{paused}, L{_busy} and the free disk space."""

    disk_low_reason: str | None = None
    _disk_watch: LoopingCall | None = None
    #: The endpoint string for listening again: C{listen} with the port number
    #: the first listen got, when C{listen} asked for port 0.
    _listen_again: str | None = None

    def __init__(self, options: dict[str, Any], context: BuildContext) -> None:
        super().__init__(options, context)
        self.port_machine = PortMachine(
            str(self.name), self.listen, self._endpoint, lambda: TriggerFactory(self), self.reactor, self._port_changed
        )

    def _busy(self) -> bool:
        raise NotImplementedError

    def offline(self) -> bool:
        """A simulated C{offline} condition closes the port too."""
        return False

    # min_free: the port closes while the disk is nearly full ----------------

    def start_disk_watch(self) -> None:
        if not self.min_free or self._disk_watch is not None:
            return
        self._disk_watch = LoopingCall(self.disk_check)
        self._disk_watch.clock = self.reactor
        self._disk_watch.start(DISK_CHECK_INTERVAL, now=True)

    def stop_disk_watch(self) -> None:
        if self._disk_watch is not None and self._disk_watch.running:
            self._disk_watch.stop()
        self._disk_watch = None

    def disk_check(self) -> str | None:
        low = super().disk_check()
        was = self.disk_low_reason
        self.disk_low_reason = low
        if low is not None and was is None:
            log.warn("trigger {trigger}: closing the port: {reason}; it reopens once there is room",
                     trigger=self.name, reason=low)
            self.update_port()
        elif low is None and was is not None:
            log.info("trigger {trigger}: the disk has room again: reopening the port", trigger=self.name)
            self.update_port()
        return low

    # The port: closed while paused or busy ----------------------------------

    def _endpoint(self) -> Any:
        listen = self._listen_again or self.listen
        return serverFromString(self.reactor, with_backlog(listen, self.opts.get("backlog", 1024)))

    def _port_changed(self, port: Any) -> None:
        self.port = port
        if port is not None and self._listen_again is None:
            number = getattr(port.getHost(), "port", None)
            self._listen_again = with_port(self.listen, number) if number else self.listen

    def _open_at_start(self) -> None:
        self.port_machine.start()

    def _close_listener(self) -> Deferred:
        self.update_port()  # not running: closes the port, ends any retry
        return self.port_machine.settled()

    def stopService(self) -> Deferred:
        self.stop_disk_watch()
        return super().stopService()

    def update_port(self) -> None:
        """Open or close the listening port to match running, paused, busy and the disk."""
        if self.running and not self.paused and not self._busy() and self.disk_low_reason is None and not self.offline():
            self.port_machine.want_open()
        else:
            self.port_machine.want_closed()

    def port_settled(self) -> Deferred:
        """Fires once the port is open or closed as last asked (no listen or close under way)."""
        return self.port_machine.settled()
