"""
L{Listener}: one listening port, as Twisted's C{StreamServerEndpointService},
for every stream listener rawsvc opens (triggers, the printer's port, the
admin HTTP and SSH listeners).

What it adds, through public API only (it wraps the endpoint to watch each
listen's outcome):

- it listens in C{startService}, with the triggers, where
  L{rawsvc.service.RawService} turns a L{ListenError} into one line and exit
  status 1 under twistd; Twisted's service listens in
  C{privilegedStartService} and only logs a port it cannot open (an
  "Unhandled Error" traceback) while the service runs on without it;
- a port that cannot be opened at start raises L{ListenError} naming the
  listener and its endpoint string; a later failure (an endpoint that
  listens asynchronously) is reported to C{on_failure}, by default a log
  line in the same words;
- C{port} is the listening port while there is one;
- a stop before any start does nothing (Twisted's would fail).

A stopped listener is not started again: resuming builds a new one.
"""

from __future__ import annotations

from typing import Any, Callable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import Service
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred, succeed
from twisted.internet.interfaces import IListeningPort, IProtocolFactory, IStreamServerEndpoint
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from rawsvc.errors import ListenError

log = Logger(namespace="rawsvc.listen")


@implementer(IStreamServerEndpoint)
class _Watched:
    """An endpoint that tells its L{Listener} how each listen turned out."""

    def __init__(self, endpoint: IStreamServerEndpoint, listener: "Listener") -> None:
        self.endpoint = endpoint
        self.listener = listener

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred:
        d: Deferred = maybeDeferred(self.endpoint.listen, protocolFactory)
        d.addCallbacks(self.listener._listening, self.listener._not_listening)
        return d


class Listener(StreamServerEndpointService):
    """
    Listens on C{endpoint} with C{factory}.  C{what} and C{listen} name it in
    errors (C{"trigger 'a'"}, C{"[admin.http]"}; its endpoint string).

    @ivar port: the L{IListeningPort} while listening, else None.
    @ivar on_port: called with the port once listening.
    @ivar on_failure: called with the L{Failure} of a listen that did not
        work (not a cancelled one); the default logs it, except during
        C{startService}, which raises L{ListenError} instead.
    """

    def __init__(
        self,
        endpoint: IStreamServerEndpoint,
        factory: IProtocolFactory,
        what: str,
        listen: str,
        on_port: Callable[[IListeningPort], Any] | None = None,
        on_failure: Callable[[Failure], Any] | None = None,
    ) -> None:
        super().__init__(_Watched(endpoint, self), factory)
        self.what = what
        self.listen = listen
        self.port: IListeningPort | None = None
        self.on_port = on_port
        self.on_failure = on_failure if on_failure is not None else self._log_failure
        self._started = False
        self._starting = False
        self._start_failure: Failure | None = None
        self._waiters: list[Deferred] = []
        self._settled = False

    def error(self, failure: Failure) -> str:
        """What an operator reads when this listener cannot listen."""
        return f"{self.what} cannot listen on {self.listen!r}: {failure.getErrorMessage()}"

    def privilegedStartService(self) -> None:
        # Listen in startService, with the triggers, where a failure stops the start.
        Service.privilegedStartService(self)

    def startService(self) -> None:
        """Listen now; raise L{ListenError} when the endpoint failed at once (tcp, unix, ssl do)."""
        Service.startService(self)
        self._started = True
        self._starting = True
        try:
            StreamServerEndpointService.privilegedStartService(self)
        finally:
            self._starting = False
        failure, self._start_failure = self._start_failure, None
        if failure is not None:
            self.running = 0
            raise ListenError(self.error(failure))

    def stopService(self) -> Deferred:
        """Close the port, or give up a listen still under way; fires when done."""
        self.port = None
        if not self._started:
            Service.stopService(self)
            return succeed(None)
        return super().stopService()

    def when_listening(self) -> Deferred:
        """Fires with the port once listening, or None once the listen failed (the failure is reported)."""
        if self._settled:
            return succeed(self.port)
        d: Deferred = Deferred()
        self._waiters.append(d)
        return d

    # The outcome of the listen ------------------------------------------------

    def _listening(self, port: IListeningPort) -> IListeningPort:
        self.port = port
        if self.on_port is not None:
            self.on_port(port)
        self._settle(port)
        return port  # StreamServerEndpointService stops it at stopService

    def _not_listening(self, failure: Failure) -> None:
        if failure.check(CancelledError):  # stopService gave up a listen under way
            self._settle(None)
            return None
        if self._starting:
            self._start_failure = failure
        self.on_failure(failure)
        self._settle(None)
        return None

    def _settle(self, port: IListeningPort | None) -> None:
        self._settled = True
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(port)

    def _log_failure(self, failure: Failure) -> None:
        if not self._starting:  # at start, startService raises ListenError instead
            log.error("{error}", error=self.error(failure))


def with_port(description: str, port: int) -> str:
    """
    C{description} (a tcp, tcp6 or ssl endpoint string) listening on
    C{port} where it says port 0, so a port closed and opened again keeps
    the number its first listen got.  Any other string comes back as it is.
    """
    parts = _split_raw(description)
    if parts[0].lower() not in ("tcp", "tcp6", "ssl"):
        return description
    for i, part in enumerate(parts[1:], 1):
        if part.startswith("port="):
            if part == "port=0":
                parts[i] = f"port={port}"
            return ":".join(parts)
    for i, part in enumerate(parts[1:], 1):
        if "=" not in part:
            if part == "0":
                parts[i] = str(port)
            break
    return ":".join(parts)


def _split_raw(description: str) -> list[str]:
    """Split an endpoint string at its unescaped colons, keeping the escapes."""
    parts, current, escaped = [], "", False
    for c in description:
        if escaped:
            current += c
            escaped = False
        elif c == "\\":
            current += c
            escaped = True
        elif c == ":":
            parts.append(current)
            current = ""
        else:
            current += c
    parts.append(current)
    return parts
