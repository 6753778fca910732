"""
The STX/ETX device protocol, sans-IO: bytes in, framing events out.

Many industrial devices (scales, barcode and RFID readers, PLC gateways,
lab instruments) send each message as one frame::

    STX (0x02)  data ...  ETX (0x03)  [check byte]

and wait for the host's answer: ACK (0x06) when the frame was taken, NAK
(0x15) when it was not (the device sends it again).  The optional check
byte (a block check character) is computed over the data and the ETX:

- C{xor}: every byte XORed together (the BCC of DIN 66019 / 3964R style
  links);
- C{lrc}: the two's complement of their sum, modulo 256 (ISO 1155).

Here each good frame is one rawsvc job: its data (without STX, ETX and the
check byte) is the payload, and its C{End} asks for ACK once the job's
flow has ended done, NAK when it failed or was refused.  A frame whose
check byte is wrong is dropped and answered NAK at once (in reply order).
An empty frame (STX ETX) is a keep-alive: ACK, no job.  ENQ (0x05) between
frames asks whether the host is there: ACK.  Other bytes between frames
(CR LF, EOT, line noise) are ignored.  An STX inside a frame means the
device started over: the partial frame is dropped.  A frame cut off by the
end of input is dropped (never processed as a partial job).
"""

from __future__ import annotations

from zope.interface import implementer

from rawsvc.interfaces import IFramer
from rawsvc.triggers.api import Data, Drop, End, Event, Reply

STX, ETX, ENQ, ACK, NAK = b"\x02", b"\x03", b"\x05", b"\x06", b"\x15"

#: The check bytes a frame may carry.
CHECKS = ("none", "xor", "lrc")


def xor_of(data: bytes) -> int:
    """Every byte of C{data} XORed together, without a per-byte Python loop (folded as one integer)."""
    n = len(data)
    x = int.from_bytes(data, "little")
    while n > 1:
        half = (n + 1) // 2
        x = (x & ((1 << (8 * half)) - 1)) ^ (x >> (8 * half))
        n = half
    return x


def check_byte(check: str, data: bytes) -> int:
    """The check byte a device sends after C{data} (the bytes after STX, ETX included)."""
    if check == "xor":
        return xor_of(data)
    if check == "lrc":
        return -sum(data) & 0xFF
    raise ValueError(f"check must be one of {', '.join(CHECKS[1:])}, not {check!r}")


def frame(data: bytes, check: str = "none") -> bytes:
    """One frame as a device sends it (for tests and clients)."""
    body = data + ETX
    return STX + body + (bytes([check_byte(check, body)]) if check != "none" else b"")


@implementer(IFramer)
class StxEtxFramer:
    """
    Frames one device connection.  C{check} is C{none}, C{xor} or C{lrc};
    with C{answer} false nothing is written back (a device that expects no
    ACK/NAK).
    """

    def __init__(self, check: str = "none", answer: bool = True) -> None:
        if check not in CHECKS:
            raise ValueError(f"check must be one of {', '.join(CHECKS)}, not {check!r}")
        self.check = check
        self.ack, self.nak = (ACK, NAK) if answer else (b"", b"")
        self.frames = 0  # good frames so far on this connection
        self._in_frame = False
        self._want_check = False  # ETX seen, the check byte is next
        self._xor = 0  # over the frame's data and ETX
        self._sum = 0
        self._size = 0  # data bytes in the current frame

    def feed(self, data: bytes) -> list[Event]:
        events: list[Event] = []
        pos, n = 0, len(data)
        while pos < n:
            if self._want_check:
                self._checked(data[pos], events)
                pos += 1
            elif not self._in_frame:
                i = data.find(STX, pos)
                between = data[pos : i if i >= 0 else n]
                if self.ack and ENQ in between:
                    events.append(Reply(self.ack * between.count(ENQ)))
                if i < 0:
                    break
                self._in_frame = True
                self._xor = self._sum = self._size = 0
                pos = i + 1
            else:
                pos = self._frame_bytes(data, pos, events)
        return events

    def _frame_bytes(self, data: bytes, pos: int, events: list[Event]) -> int:
        """Bytes inside a frame, from C{pos}: data up to its ETX (or a new STX)."""
        etx = data.find(ETX, pos)
        stx = data.find(STX, pos, etx if etx >= 0 else len(data))
        if stx >= 0:
            if stx > pos:
                events.append(Data(data[pos:stx]))  # what is thrown away does not depend on the split
            events.append(Drop("STX inside a frame: the device started over"))
            self._in_frame = False
            return stx
        end = etx if etx >= 0 else len(data)
        chunk = data[pos:end]
        if chunk:
            events.append(Data(chunk))
            self._size += len(chunk)
            if self.check == "xor":
                self._xor ^= xor_of(chunk)
            elif self.check == "lrc":
                self._sum += sum(chunk)
        if etx < 0:
            return len(data)
        self._in_frame = False
        self._xor ^= ETX[0]
        self._sum += ETX[0]
        if self.check == "none":
            self._good(events)
        else:
            self._want_check = True
        return etx + 1

    def _checked(self, got: int, events: list[Event]) -> None:
        self._want_check = False
        want = self._xor if self.check == "xor" else -self._sum & 0xFF
        if got == want:
            self._good(events)
            return
        events.append(Drop(f"check byte 0x{got:02X} does not match the frame's {self.check} 0x{want:02X}"))
        if self.nak:
            events.append(Reply(self.nak))

    def _good(self, events: list[Event]) -> None:
        if not self._size:
            if self.ack:
                events.append(Reply(self.ack))  # a keep-alive: answered, no job
            return
        self.frames += 1
        events.append(End({"frame": str(self.frames), "frame_check": self.check}, ack=self.ack, nak=self.nak))

    def end_of_input(self, how: str) -> list[Event]:
        """A frame cut off by the end of input is dropped: a device sends it again."""
        if self._in_frame or self._want_check:
            self._in_frame = self._want_check = False
            return [Drop(f"frame cut off by the end of input ({how})")]
        return []
