"""
How a delivery ended: L{DeliveryResult}, its outcomes, and the results of
the failures found before any byte is sent (not allowed, no such name, no
connection).
"""

from __future__ import annotations

from typing import TypedDict

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError, TimeoutError

from zope.interface import implementer

from rawsvc.client.protocol import SendSettings
from rawsvc.interfaces import IDeliveryReport

#: Outcomes of a delivery (C{DeliveryResult.outcome}).
DELIVERED = "delivered"
STOPPED = "stopped"
CANCELLED = "cancelled"


@attrs.frozen
@implementer(IDeliveryReport)
class DeliveryResult:
    """How a delivery ended; C{message} is what goes into C{${error}}."""

    outcome: str  # delivered refused connect_timeout connect_error dns_failure send_timeout
    #               reset reply_timeout not_allowed source_error stopped cancelled
    destination: str
    attempts: int = 0
    written: int = 0
    total: int | None = None
    reply: bytes = b""
    ending: str = ""
    address: str = ""
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome == DELIVERED


class _AttemptFields(TypedDict):
    """The L{DeliveryResult} fields every finished attempt fills in."""

    written: int
    total: int | None
    reply: bytes
    ending: str
    address: str


def _not_allowed(key: str, addresses: list[str] | None = None) -> DeliveryResult:
    if addresses:
        return DeliveryResult(
            "not_allowed", key,
            message=f"destination {key} resolves to {', '.join(addresses)}, which [service] "
            "allowed_destinations does not allow",
        )
    return DeliveryResult(
        "not_allowed", key, message=f"destination {key} is not in [service] allowed_destinations"
    )


def _dns_text(e: Exception) -> str:
    text = str(e)
    return text.partition(": ")[2] or text if text.startswith("DNS lookup failed") else text


def _connect_failure(key: str, address: str, e: Exception, settings: SendSettings) -> DeliveryResult:
    if isinstance(e, ConnectionRefusedError):
        return DeliveryResult("refused", key, address=address, message=f"connection refused by {key} (printer busy or not listening)")
    if isinstance(e, (TimeoutError, CancelledError)):
        return DeliveryResult(
            "connect_timeout", key, address=address,
            message=f"connecting to {key} timed out after {settings.connect_timeout:g} s",
        )
    reason = getattr(e, "osError", None) or (e.args[0] if e.args else "")
    text = reason.strerror.lower() if isinstance(reason, OSError) and reason.strerror else str(reason or e)
    return DeliveryResult("connect_error", key, address=address, message=f"cannot connect to {key}: {text}")
