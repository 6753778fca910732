"""
L{OpenConnections}: what a trigger with byte-stream connections tells the
service about them (C{ITrigger.connection_list}, C{receiving},
C{abort_receiving}), shared by the listening triggers, C{tcp-client} and
C{serial}.  Public through L{rawsvc.triggers.api}.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

log = Logger(namespace="rawsvc.trigger")


class OpenConnections:
    """Mixed into a trigger whose C{connections} is the set of its open L{FramedConnection}s."""

    connections: set[Any]
    #: Logged for each connection the stop resets while it still sends a job (C{{peer}}: its label).
    abort_message = "stopping: resetting {peer}, still sending its job; it sends it again"

    def connection_list(self) -> list[dict[str, Any]]:
        return [c.describe() for c in self.connections]

    def _receiving(self) -> list[Any]:
        return [c for c in list(self.connections) if c.payload is not None and not c.closed]

    def receiving(self) -> int:
        """Connections in the middle of sending a job (the stop waits for them)."""
        return len(self._receiving())

    def abort_receiving(self) -> int:
        """Reset the connections still sending a job: the stop grace is over."""
        conns = self._receiving()
        for conn in conns:
            log.warn(self.abort_message, peer=conn.label)
            conn.transport.abortConnection()
        return len(conns)
