"""
The one private Twisted detail the HTTP client needs: which factory an
C{HTTPConnectionPool} builds its connections with.

Twisted's pool makes one C{_HTTP11ClientFactory} per connection, and a
factory is C{noisy} by default: every connection would log "Starting
factory" and "Stopping factory".  L{quiet_connection_pool} wraps the pool's
C{_factory} so that its factories are quiet.  C{tests/test_http_action.py}
fails loudly when Twisted renames the attribute.
"""

from __future__ import annotations

from typing import Any

from twisted.web.client import HTTPConnectionPool


def quiet_connection_pool(reactor: Any, persistent: bool = True) -> HTTPConnectionPool:
    """An C{HTTPConnectionPool} whose connections' factories log nothing of their own."""
    pool = HTTPConnectionPool(reactor, persistent=persistent)
    make = pool._factory

    def quiet_factory(*args: Any, **kwargs: Any) -> Any:
        factory = make(*args, **kwargs)
        factory.noisy = False
        return factory

    pool._factory = quiet_factory  # type: ignore[assignment]
    return pool
