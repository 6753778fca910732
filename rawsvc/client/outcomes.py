"""
How a delivery ended: L{DeliveryResult}, its outcomes, the results of the
failures found before any byte is sent (not allowed, no such name, no
connection), and L{from_attempt}: what an attempt that connected comes to.
"""

from __future__ import annotations

from typing import TypedDict

import attrs
from twisted.internet.defer import CancelledError
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.logger import Logger

from zope.interface import implementer

from rawsvc.client.protocol import FENCED, AttemptResult, Ending, SendSettings
from rawsvc.interfaces import IDeliveryReport

log = Logger(namespace="rawsvc.client")

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


def from_attempt(key: str, address: str, r: AttemptResult, settings: SendSettings) -> DeliveryResult:
    """The L{DeliveryResult} of an attempt that connected to C{address} and ended as C{r} says."""
    common = _AttemptFields(written=r.written, total=r.total, reply=r.reply, ending=r.ending.value, address=address)
    total = r.total if r.total is not None else "?"
    if r.ending in (Ending.EOF, Ending.DELAY, Ending.SENT):
        return DeliveryResult(DELIVERED, key, message=f"delivered {r.written} bytes to {key}", **common)
    if r.ending is Ending.EOF_TIMEOUT:
        return DeliveryResult(
            "reply_timeout", key,
            message=f"reply timeout: {key} did not close the connection within "
            f"{settings.eof_timeout:g} s after all {r.written} bytes were written",
            **common,
        )
    if r.ending is Ending.RESET_DRAINING:
        # The printer's kernel acknowledged every byte: the job is printed (or
        # the printer's own to lose).  Sending it again would print it twice.
        if r.error == FENCED:
            log.warn(
                "{dest}: this node aborted the connection (it lost its cluster lease) after the printer "
                "acknowledged all {written} bytes; counted as delivered if the claim still holds",
                dest=key, error=r.error, written=r.written,
            )
        else:
            log.warn(
                "{dest} reset the connection ({error}) after acknowledging all {written} bytes; "
                "counted as delivered, not sent again",
                dest=key, error=r.error, written=r.written,
            )
        then = r.error if r.error == FENCED else f"the printer then reset the connection: {r.error}"
        return DeliveryResult(DELIVERED, key, message=f"delivered {r.written} bytes to {key} ({then})", **common)
    if r.ending is Ending.STALLED:
        return DeliveryResult(
            "send_timeout", key,
            message=f"send timeout: {key} took no data for {settings.send_timeout:g} s "
            f"(printer stopped reading) after {r.written} of {total} bytes were written",
            **common,
        )
    if r.ending is Ending.SOURCE_ERROR:
        return DeliveryResult("source_error", key, message=f"sending to {key}: {r.error}", **common)
    return DeliveryResult(
        "reset", key,
        message=f"connection to {key} reset mid-job ({r.error}) after {r.written} of {total} bytes were written",
        **common,
    )
