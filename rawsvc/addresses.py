"""
Where a listener listens, read from its endpoint string, and whether two
listeners would fight over one address: C{check-config} and C{twistd
rawsvc} refuse a config where they would, rather than fail half-started.

Linux rules: on one port of one protocol, a wildcard interface (0.0.0.0)
clashes with every IPv4 address and C{::} with every address (dual-stack
sockets); port 0 means any free port and never clashes; TCP and UDP are
separate; a UNIX socket clashes with another on the same path.
"""

from __future__ import annotations

import ipaddress
import os
from typing import Any

import attrs

_TCP_KINDS = {"tcp": "0.0.0.0", "ssl": "0.0.0.0", "tcp6": "::"}


@attrs.frozen
class Address:
    """One listening address: C{proto} is tcp, udp or unix."""

    proto: str
    port: int = 0
    interface: str = ""
    path: str = ""

    def describe(self) -> str:
        if self.proto == "unix":
            return f"unix socket {self.path}"
        where = "all interfaces" if _wildcard(self.interface) else self.interface
        return f"{self.proto} port {self.port} on {where}"

    def clashes(self, other: "Address") -> bool:
        if self.proto != other.proto:
            return False
        if self.proto == "unix":
            return self.path == other.path
        if self.port == 0 or self.port != other.port:
            return False
        a, b = _ip(self.interface), _ip(other.interface)
        if a is None or b is None:  # a host name: only the very same one is known to clash
            return self.interface == other.interface
        if a == b or _wildcard(self.interface) and a.version == 6 or _wildcard(other.interface) and b.version == 6:
            return True
        return a.version == b.version and (_wildcard(self.interface) or _wildcard(other.interface))


def _ip(text: str) -> Any:
    try:
        return ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        return None


def _wildcard(text: str) -> bool:
    ip = _ip(text)
    return ip is not None and ip.is_unspecified


def _split(description: str) -> list[str]:
    """Split an endpoint string at its unescaped colons (C{\\:} is a colon)."""
    parts, current, chars = [], [], iter(description)
    for c in chars:
        if c == "\\":
            current.append(next(chars, ""))
        elif c == ":":
            parts.append("".join(current))
            current = []
        else:
            current.append(c)
    parts.append("".join(current))
    return parts


def address_of(listen: Any) -> Address | None:
    """
    The address of a listener's C{listen} value: a server endpoint string,
    or the C{(port, interface)} of a UDP trigger.  None when it cannot be
    told (a plugin's endpoint type): such a listener is not checked.
    """
    if isinstance(listen, tuple) and len(listen) == 2:
        return Address("udp", int(listen[0]), str(listen[1]))
    if not isinstance(listen, str):
        return None
    kind, *rest = _split(listen)
    kind = kind.lower()
    positional = [p for p in rest if "=" not in p]
    options = dict(p.split("=", 1) for p in rest if "=" in p)
    if kind == "unix":
        path = options.get("address") or (positional[0] if positional else "")
        return Address("unix", path=os.path.abspath(path)) if path else None
    if kind in _TCP_KINDS or kind == "udp":
        try:
            port = int(options.get("port") or (positional[0] if positional else ""))
        except ValueError:
            return None
        default = _TCP_KINDS.get(kind, "0.0.0.0")
        return Address("udp" if kind == "udp" else "tcp", port, options.get("interface") or default)
    return None


def clashes(listeners: list[tuple[str, Any]]) -> list[tuple[str, Address, str, Address]]:
    """
    C{[(label, listen)]} in config order -> C{[(label, its address, earlier
    label, earlier address)]} for each listener that clashes with an earlier one.
    """
    seen: list[tuple[str, Address]] = []
    found = []
    for label, listen in listeners:
        address = address_of(listen)
        if address is None:
            continue
        for earlier, other in seen:
            if address.clashes(other):
                found.append((label, address, earlier, other))
                break
        seen.append((label, address))
    return found
