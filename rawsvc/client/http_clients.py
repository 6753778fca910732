"""
The HTTP clients that C{http} actions share: L{HttpClients}, one per
config (so one per reactor), a service component named C{http_clients}.

Each TLS setting (C{verify_tls}, C{ca_file}) has one treq C{HTTPClient} on
its own persistent, quiet connection pool (L{quiet_connection_pool}): the
actions of a config reuse each other's connections, while a connection made
without certificate checks is never handed to an action that checks them
(a pool's connections are keyed by scheme, host and port only).  Stopping
the service closes the cached connections.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from treq.client import HTTPClient
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList
from twisted.web.client import Agent, HTTPConnectionPool

from rawsvc.client._compat_http import quiet_connection_pool

if TYPE_CHECKING:
    from rawsvc.context import BuildContext


def make_client(reactor: Any, tls: Any, pool: HTTPConnectionPool) -> HTTPClient:
    """A treq client on C{pool} that checks TLS as C{tls} (an C{IPolicyForHTTPS}) says."""
    return HTTPClient(Agent(reactor, contextFactory=tls, pool=pool))


#: Seconds an idle kept-alive HTTP connection is kept for the next request.
KEEPALIVE_IDLE = 4


class HttpClients(Service):
    """Shared HTTP clients, one per TLS setting; see the module docstring."""

    def __init__(self, reactor: Any) -> None:
        self.setName("http_clients")
        self.reactor = reactor
        self._clients: dict[Any, HTTPClient] = {}
        self._pools: list[HTTPConnectionPool] = []

    def client(self, key: Any, tls: Callable[[], Any]) -> HTTPClient:
        """The client for TLS setting C{key}; C{tls()} makes its policy the first time."""
        if key not in self._clients:
            pool = quiet_connection_pool(self.reactor, persistent=True)
            # An idle kept-alive connection is dropped after this long, less than
            # the common server keep-alive timeouts (Apache's 5 s): a POST sent on a
            # connection the server closes at that moment fails without an answer
            # (Twisted retries only idempotent methods by itself), and our retry
            # could then send a request the server did carry out a second time.
            pool.cachedConnectionTimeout = KEEPALIVE_IDLE
            self._pools.append(pool)
            self._clients[key] = make_client(self.reactor, tls(), pool)
        return self._clients[key]

    def stopService(self) -> Deferred[Any]:
        """Close every cached connection; fires once they are closed."""
        super().stopService()
        return DeferredList([pool.closeCachedConnections() for pool in self._pools])


def http_clients(context: BuildContext) -> HttpClients:
    """The config's shared L{HttpClients}."""
    clients: HttpClients = context.http_clients
    return clients
