"""
The printer's listening port, closed while the printer is paused or busy
(C{busy = refuse}, or a full queue) or its disk is below C{min_free}, and
opened again on the same port number, mixed into
L{rawsvc.triggers.printer.PrinterTrigger}.

A closed port is the one refusal every JetDirect client sees for sure
(ECONNREFUSED; CUPS's backend keeps the job and tries again): a reset,
even at the accept, comes too late for a client whose job fits in the
socket buffers, as it has written every byte and takes the job as printed.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.task import LoopingCall
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger

from rawsvc.triggers.base import ListenerTrigger, TriggerFactory, with_backlog

log = Logger(namespace="rawsvc.trigger")

#: Seconds between attempts to listen again when the port was taken meanwhile.
RELISTEN_DELAY = 1.0

#: Seconds between checks of the free disk space against C{min_free}.
DISK_CHECK_INTERVAL = 1.0


class ClosingPort(ListenerTrigger):
    """A listener whose port follows C{paused} and L{_busy}."""

    _endpoint: Any
    _port_op: Deferred | None
    _again: bool
    _retry: Any

    disk_low_reason: str | None = None
    _disk_watch: LoopingCall | None = None

    def _busy(self) -> bool:
        raise NotImplementedError

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

    def _make_endpoint(self) -> Any:
        if self._endpoint is None:
            self._endpoint = serverFromString(self.reactor, with_backlog(self.listen, self.opts.get("backlog", 1024)))
        return self._endpoint

    def _listen(self) -> Deferred:
        endpoint = self._make_endpoint()
        d = endpoint.listen(TriggerFactory(self))

        def up(port: Any) -> Any:
            self.port = port
            # Listen again on the same port number after closing it, also
            # when the config asked for port 0.
            if getattr(endpoint, "_port", None) == 0:
                endpoint._port = port.getHost().port
            return port

        return d.addCallback(up)

    def update_port(self) -> None:
        """Open or close the listening port to match paused/busy."""
        if self._port_op is not None:
            self._again = True
            return
        want = bool(self.running) and not self.paused and not self._busy() and self.disk_low_reason is None
        if want and self.port is None:
            d = self._listen()
        elif not want and self.port is not None:
            port, self.port = self.port, None
            d = port.stopListening()
        else:
            return
        self._port_op = d
        d.addErrback(self._listen_failed)
        d.addBoth(self._port_done)

    def _port_done(self, _: Any) -> None:
        self._port_op = None
        if self._again:
            self._again = False
            self.update_port()

    def _listen_failed(self, failure: Any) -> None:
        log.error("trigger {trigger}: cannot listen again on {listen}: {e}; retrying in {s} s",
                  trigger=self.name, listen=self.listen, e=failure.getErrorMessage(), s=RELISTEN_DELAY)
        if self.running and self._retry is None:
            self._retry = self.reactor.callLater(RELISTEN_DELAY, self._retry_listen)

    def _retry_listen(self) -> None:
        self._retry = None
        self.update_port()
