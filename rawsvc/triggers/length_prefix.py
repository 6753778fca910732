"""
The C{length_prefix} framing: each message is a header of C{prefix_bytes}
(1, 2 or 4) giving its length as an unsigned integer (C{byte_order} big
or little), then that many bytes; with C{counts_header} the length
includes the header itself.  Without I/O; the body is sliced out of each
chunk, never read byte by byte, and streams straight into the payload.
"""

from __future__ import annotations

from zope.interface import implementer

from rawsvc.interfaces import IFramer
from rawsvc.triggers.framing import END, Data, Event

PREFIX_SIZES = (1, 2, 4)
BYTE_ORDERS = ("big", "little")


class LengthPrefixError(ValueError):
    """The stream carries a length that cannot be: the framing is lost for this connection."""


@implementer(IFramer)
class LengthPrefixFramer:
    """Length-prefixed messages; see the module docstring."""

    def __init__(self, prefix_bytes: int = 2, byte_order: str = "big", counts_header: bool = False) -> None:
        if prefix_bytes not in PREFIX_SIZES:
            raise ValueError(f"prefix_bytes must be 1, 2 or 4, not {prefix_bytes!r}")
        if byte_order not in BYTE_ORDERS:
            raise ValueError(f"byte_order must be 'big' or 'little', not {byte_order!r}")
        self.prefix_bytes = prefix_bytes
        self.byte_order: str = byte_order
        self.counts_header = counts_header
        self._head = b""  # header bytes read so far
        self._left: int | None = None  # body bytes still to come (None: reading a header)

    def _length(self, head: bytes) -> int:
        n = int.from_bytes(head, "big" if self.byte_order == "big" else "little")
        if self.counts_header:
            if n < self.prefix_bytes:
                raise LengthPrefixError(
                    f"a length of {n} is shorter than its own {self.prefix_bytes}-byte header "
                    "(prefix_counts_header = true)"
                )
            n -= self.prefix_bytes
        return n

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        pos, size = 0, len(data)
        while pos < size:
            if self._left is None:
                need = self.prefix_bytes - len(self._head)
                self._head += data[pos : pos + need]
                pos += need
                if len(self._head) < self.prefix_bytes:
                    break
                self._left = self._length(self._head)
                self._head = b""
                if self._left == 0:
                    self._left = None
                    events.append(END)  # an empty message (skip_empty decides)
                continue
            take = min(self._left, size - pos)
            events.append(Data(data[pos : pos + take]))
            pos += take
            self._left -= take
            if self._left == 0:
                self._left = None
                events.append(END)
        return events

    def end_of_input(self, how: str) -> list[Event]:
        """A message cut short is a partial job (C{partial} decides); a cut header is nothing."""
        self._head = b""
        return []


def encode(body: bytes, prefix_bytes: int = 2, byte_order: str = "big", counts_header: bool = False) -> bytes:
    """One message in this framing (for tests, tools and device simulators)."""
    n = len(body) + (prefix_bytes if counts_header else 0)
    return n.to_bytes(prefix_bytes, "big" if byte_order == "big" else "little") + body
