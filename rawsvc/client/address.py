"""
Destinations (C{host:port}) and the C{allowed_destinations} list.

A destination is written C{host:port}; an IPv6 address goes in brackets
(C{[::1]:9100}).  An allow-list entry is a host name (C{printer.example.com},
or C{*.example.com} for any name under it), an IP address or a CIDR
(C{10.1.0.0/16}), optionally followed by C{:PORT} or C{:LOW-HIGH}; without a
port every port is allowed.  IPv6 entries with a port go in brackets too
(C{[fd00::/8]:9100-9199}).

A host name destination is allowed when a name entry matches it; otherwise
it is resolved and only the addresses that an IP/CIDR entry allows are
connected to, so job data can never make rawsvc an open relay, and a name
that resolves differently between check and connect (DNS rebinding) does
not get past the list.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any, Union

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import DNSLookupError
from twisted.internet.interfaces import IResolutionReceiver
from zope.interface import implementer

IPNetwork = Union[ipaddress.IPv4Network, ipaddress.IPv6Network]

_HOSTNAME = re.compile(r"(?=.{1,253}$)(?:[A-Za-z0-9_](?:[A-Za-z0-9_\-]{0,61}[A-Za-z0-9])?\.?)+")
_LOOPBACK = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("::1/128"))


class AddressError(ValueError):
    """A destination or allow-list entry that cannot be parsed; str() says why."""


def ip_or_none(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def _check_host(host: str, text: str) -> str:
    if not host:
        raise AddressError(f"{text!r} has no host")
    if ip_or_none(host) is None and not _HOSTNAME.fullmatch(host):
        raise AddressError(f"{text!r}: {host!r} is not a host name or IP address")
    return host.lower()


def _port(value: str, text: str) -> int:
    if not value.isdigit():
        raise AddressError(f"{text!r}: port {value!r} is not a number")
    port = int(value)
    if not 1 <= port <= 65535:
        raise AddressError(f"{text!r}: port {port} is out of range 1-65535")
    return port


@attrs.frozen
class Destination:
    """A parsed C{host:port}; C{str()} gives the canonical key."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> "Destination":
        text = text.strip()
        if text.startswith("["):
            host, sep, rest = text[1:].partition("]")
            if not sep or not rest.startswith(":"):
                raise AddressError(f"{text!r} is not [IPv6]:port")
            if not isinstance(ip_or_none(host), ipaddress.IPv6Address):
                raise AddressError(f"{text!r}: {host!r} in brackets is not an IPv6 address")
            port = rest[1:]
        else:
            host, sep, port = text.rpartition(":")
            if not sep:
                raise AddressError(f"{text!r} has no port; write host:port, e.g. 127.0.0.1:9100")
            if ":" in host:
                raise AddressError(f"{text!r}: write an IPv6 address in brackets, e.g. [::1]:9100")
        return cls(_check_host(host, text), _port(port, text))

    @property
    def ip(self) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return ip_or_none(self.host)

    def __str__(self) -> str:
        if isinstance(self.ip, ipaddress.IPv6Address):
            return f"[{self.host}]:{self.port}"
        return f"{self.host}:{self.port}"


@attrs.frozen
class AllowEntry:
    """One C{allowed_destinations} entry: a name or a network, and ports."""

    name: str | None
    network: IPNetwork | None
    low: int = 1
    high: int = 65535

    @classmethod
    def parse(cls, text: str) -> "AllowEntry":
        raw = text.strip()
        ports = ""
        if raw.startswith("["):
            host, sep, rest = raw[1:].partition("]")
            if not sep or (rest and not rest.startswith(":")):
                raise AddressError(f"{text!r} is not [IPv6 address or CIDR][:ports]")
            ports = rest[1:]
            if rest and not ports:
                raise AddressError(f"{text!r} has an empty port")
        elif raw.count(":") == 1:
            host, _, ports = raw.partition(":")
            if not ports:
                raise AddressError(f"{text!r} has an empty port")
        else:
            host = raw  # no port, or a bare IPv6 address/CIDR
        low, high = 1, 65535
        if ports:
            a, dash, b = ports.partition("-")
            low = _port(a, text)
            high = _port(b, text) if dash else low
            if high < low:
                raise AddressError(f"{text!r}: port range {low}-{high} is empty")
        if "/" in host or ip_or_none(host) is not None:
            try:
                network = ipaddress.ip_network(host, strict=False)
            except ValueError as e:
                raise AddressError(f"{text!r}: {e}") from None
            return cls(None, network, low, high)
        name = host.lower()
        bare = name[2:] if name.startswith("*.") else name
        if not bare or not _HOSTNAME.fullmatch(bare):
            raise AddressError(f"{text!r}: {host!r} is not a host name, IP address or CIDR")
        return cls(name, None, low, high)

    def port_ok(self, port: int) -> bool:
        return self.low <= port <= self.high

    def matches_name(self, host: str, port: int) -> bool:
        if self.name is None or not self.port_ok(port):
            return False
        host = host.lower().rstrip(".")
        if self.name.startswith("*."):
            return host.endswith(self.name[1:])
        return host == self.name.rstrip(".")

    def matches_ip(self, address: str, port: int) -> bool:
        ip = ip_or_none(address)
        return (
            self.network is not None
            and ip is not None
            and ip.version == self.network.version
            and ip in self.network
            and self.port_ok(port)
        )


@attrs.frozen
class AllowList:
    """The destinations C{send_tcp} may reach."""

    entries: tuple[AllowEntry, ...]
    everything: bool = False

    @classmethod
    def parse(cls, items: Iterable[str]) -> "AllowList":
        """Parse config entries; L{AddressError} names the bad item."""
        entries = []
        for i, item in enumerate(items):
            try:
                entries.append(AllowEntry.parse(item))
            except AddressError as e:
                raise AddressError(f"item {i}: {e}") from None
        return cls(tuple(entries))

    @classmethod
    def default(cls, literals: Iterable[Destination]) -> "AllowList":
        """What the config names literally, plus loopback (any port)."""
        entries = [AllowEntry(None, n) for n in _LOOPBACK]
        for d in literals:
            if d.ip is not None:
                entries.append(AllowEntry(None, ipaddress.ip_network(d.host), d.port, d.port))
            else:
                entries.append(AllowEntry(d.host, None, d.port, d.port))
        return cls(tuple(entries))

    @classmethod
    def allow_all(cls) -> "AllowList":
        return cls((), everything=True)

    def allows_name(self, dest: Destination) -> bool:
        """True when C{dest} is allowed whatever it resolves to."""
        if self.everything:
            return True
        if dest.ip is not None:
            return any(e.matches_ip(dest.host, dest.port) for e in self.entries)
        return any(e.matches_name(dest.host, dest.port) for e in self.entries)

    def may_allow(self, dest: Destination) -> bool:
        """False when C{dest} can never be allowed (checked at config time)."""
        if self.allows_name(dest):
            return True
        return dest.ip is None and any(e.network is not None and e.port_ok(dest.port) for e in self.entries)

    def filter(self, dest: Destination, addresses: Sequence[str]) -> list[str]:
        """The resolved C{addresses} of C{dest} that may be connected to."""
        if self.allows_name(dest):
            return list(addresses)
        return [a for a in addresses if any(e.matches_ip(a, dest.port) for e in self.entries)]


@implementer(IResolutionReceiver)
class _Receiver:
    def __init__(self) -> None:
        self.addresses: list[str] = []
        self.done: Deferred[list[str]] = Deferred()

    def resolutionBegan(self, resolution: Any) -> None:
        pass

    def addressResolved(self, address: Any) -> None:
        if address.host not in self.addresses:
            self.addresses.append(address.host)

    def resolutionComplete(self) -> None:
        self.done.callback(self.addresses)


def resolve(reactor: Any, dest: Destination) -> Deferred[list[str]]:
    """
    The IP addresses of C{dest}'s host (IPv4 first); fails with
    L{DNSLookupError} when there are none.
    """
    if dest.ip is not None:
        return succeed([dest.host])
    receiver = _Receiver()
    reactor.nameResolver.resolveHostName(receiver, dest.host, dest.port)

    def check(addresses: list[str]) -> list[str]:
        if not addresses:
            raise DNSLookupError(f"host name {dest.host!r} not found")
        return sorted(addresses, key=lambda a: ":" in a)

    return receiver.done.addCallback(check)
