"""
One attempt at one destination, as the destination pool makes it: find its
allowed addresses, connect (each address in turn) and send the job
(L{send}), or ask the printer's status first (L{check_status}, the
pre-flight of L{rawsvc.client.preflight}).  Each fires with what it came
to and never fails but on a bug.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any

from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP6ClientEndpoint
from twisted.internet.error import ConnectError, ConnectingCancelledError, DNSLookupError
from twisted.internet.interfaces import IAddress
from twisted.internet.protocol import Factory, Protocol

from rawsvc.client.address import AllowList, Destination, resolve
from rawsvc.client.machine import Delivery
from rawsvc.client.outcomes import DeliveryResult, _connect_failure, _dns_text, _not_allowed, from_attempt
from rawsvc.client.preflight import Readiness, StatusProtocol
from rawsvc.client.protocol import AttemptResult, SendProtocol, SendSettings, Source


class _OneConnection(Factory):
    """
    Builds the one protocol of one connection attempt, quietly: no "Starting
    factory" / "Stopping factory" line per connection (C{connectProtocol}'s
    factory is noisy).
    """

    noisy = False

    def __init__(self, protocol: Protocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: IAddress | None) -> Protocol:
        return self._protocol


@inlineCallbacks
def addresses(reactor: Any, allow: AllowList, dest: Destination) -> Generator[Deferred[Any], Any, list[str] | DeliveryResult]:
    """C{dest}'s addresses that C{allow} allows, or the result of a failed lookup / of none allowed."""
    key = str(dest)
    try:
        found = yield resolve(reactor, dest)
    except DNSLookupError as e:
        return DeliveryResult("dns_failure", key, message=f"cannot resolve {dest.host!r} ({key}): {_dns_text(e)}")
    allowed: list[str] = allow.filter(dest, found)
    if not allowed:
        return _not_allowed(key, found)
    return allowed


@inlineCallbacks
def _connect(
    reactor: Any, allow: AllowList, dest: Destination, settings: SendSettings, make: Any,
    delivery: Delivery | None = None,
) -> Generator[Deferred[Any], Any, tuple[str, Any] | DeliveryResult]:
    """
    Connect a protocol C{make()} builds to the first of C{dest}'s allowed
    addresses that answers; no (further) address once C{delivery} is cut
    off (a fenced cluster node, L{Delivery.cut_off}).
    """
    key = str(dest)
    found = yield addresses(reactor, allow, dest)
    if isinstance(found, DeliveryResult):
        return found
    failure: DeliveryResult | None = None
    for address in found:
        if delivery is not None and delivery.cut_off():
            return DeliveryResult("stopped", key, message=f"this node lost its cluster lease: {key} not tried")
        proto = make()
        kind = TCP6ClientEndpoint if ":" in address else TCP4ClientEndpoint
        # The endpoint's own timeout is Twisted's connect timeout (it
        # stops the connector and fails with TimeoutError); an addTimeout
        # on top would be a second timer for the same thing.
        endpoint = kind(reactor, address, dest.port, timeout=settings.connect_timeout)
        try:
            yield endpoint.connect(_OneConnection(proto))
        except ConnectingCancelledError:  # a fenced cluster node cancelled the attempt
            return DeliveryResult("stopped", key, message=f"connection to {key} cancelled: this node lost its cluster lease")
        except (ConnectError, CancelledError) as e:
            this = _connect_failure(key, address, e, settings)
            if failure is None or failure.outcome != "refused":
                failure = this
            continue
        return address, proto
    assert failure is not None
    return failure


@inlineCallbacks
def send(
    reactor: Any, allow: AllowList, dest: Destination, source: Source, settings: SendSettings,
    delivery: Delivery, total: int | None,
) -> Generator[Deferred[Any], Any, DeliveryResult]:
    """Send the job once; the attempt's L{DeliveryResult}."""
    made = yield _connect(reactor, allow, dest, settings, lambda: SendProtocol(reactor, source, settings, delivery, total),
                          delivery)
    if isinstance(made, DeliveryResult):
        return made
    address, proto = made
    ended: AttemptResult = yield proto.finished
    return from_attempt(str(dest), address, ended, settings)


@inlineCallbacks
def check_status(
    reactor: Any, allow: AllowList, dest: Destination, settings: SendSettings, delivery: Delivery | None = None,
) -> Generator[Deferred[Any], Any, Readiness | DeliveryResult]:
    """
    The pre-flight check: what the printer's status answer says, or the
    result of a connection that failed (retried like a failed attempt).
    Cancelling it drops its connection (a fenced cluster node).
    """
    made = yield _connect(
        reactor, allow, dest, settings, lambda: StatusProtocol(reactor, settings.preflight, settings.preflight_timeout),
        delivery,
    )
    if isinstance(made, DeliveryResult):
        return made
    _, proto = made
    readiness: Readiness = yield proto.finished
    return readiness
