"""
L{AdminListener}: the admin side's listening service, failing its start
as a trigger does.

Twisted's C{StreamServerEndpointService} listens in
C{privilegedStartService} and only logs a port it cannot open (an
"Unhandled Error" traceback), and the service runs on without it.  This
one listens in C{startService}, like the triggers, and raises
L{ListenError} naming the config table and the endpoint, which
L{rawsvc.service.RawService} turns into one line and exit status 1 under
twistd.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from rawsvc.errors import ListenError

log = Logger(namespace="rawsvc.admin")


class AdminListener(StreamServerEndpointService):
    """Listens on C{endpoint} with C{factory}; C{table} and C{listen} name it in errors."""

    def __init__(self, endpoint: Any, factory: Any, table: str, listen: str) -> None:
        super().__init__(endpoint, factory)
        self.table = table
        self.listen = listen

    def privilegedStartService(self) -> None:
        # Listen in startService, with the triggers, where a failure stops the start.
        Service.privilegedStartService(self)

    def startService(self) -> None:
        Service.startService(self)
        self._waitingForPort = None
        failures: list[Failure] = []
        starting = [True]

        def failed(failure: Failure) -> None:
            if starting[0]:
                failures.append(failure)
            elif not failure.check(CancelledError):  # an endpoint that listens later
                log.error("{table} cannot listen on {listen!r}: {error}", table=self.table,
                          listen=self.listen, error=failure.getErrorMessage())

        d: Deferred = self.endpoint.listen(self.factory)
        d.addErrback(failed)
        starting[0] = False
        if failures:  # tcp, unix and ssl endpoints listen synchronously
            self.running = 0
            raise ListenError(f"{self.table} cannot listen on {self.listen!r}: {failures[0].getErrorMessage()}")
        self._waitingForPort = d

    def stopService(self) -> Deferred:
        if self._waitingForPort is None:
            Service.stopService(self)
            return succeed(None)
        return super().stopService()
