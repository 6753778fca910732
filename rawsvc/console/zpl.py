"""
ZPL to PNG with zplkit, offline: the one place that calls the renderer.

The printer profile is chosen on purpose: zplkit's C{zd621} profile (a
Zebra ZD621 desktop printer, the commonest label printer on a plant floor)
at 203 dpi on a 4 x 6 inch label (812 x 1218 dots), the shipping label
size.  A label's own C{^PW}/C{^LL} still set its size.  The renderer's own
limits (input bytes, labels, pixels) are set here too, so a hostile label
is cut off inside the library as well as by the caller's bounds.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal

#: The profile previews are drawn for (see the module docstring and README).
PROFILE: Final[Literal["zd621"]] = "zd621"
DPI = 203
WIDTH_DOTS = 4 * DPI
HEIGHT_DOTS = 6 * DPI
#: Most labels drawn for one job; the rest are counted in a warning.
MAX_LABELS = 20
#: Largest payload previewed (bytes).
MAX_BYTES = 4 * 1024 * 1024


@dataclass
class Rendered:
    """What a render gave: one PNG per label, the renderer's warnings, or why there is no image."""

    language: str
    pngs: list[bytes] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


def detect_language(head: bytes) -> str:
    """The print language the first bytes of a job look like: zpl, pjl, pdf, postscript, pcl, text or binary."""
    start = head[:4096].lstrip()
    if start.startswith(b"\x1b%-12345X") or start.startswith(b"@PJL"):
        inner = start.upper()
        if b"ZPL" in inner or b"^XA" in inner:
            return "zpl"
        return "pjl"
    if b"^XA" in head[:65536].upper() or start.startswith((b"~DG", b"~dg")):  # a format, or a stored graphic
        return "zpl"
    if start.startswith(b"%PDF"):
        return "pdf"
    if start.startswith(b"%!"):
        return "postscript"
    if start.startswith(b"\x1bE") or start.startswith(b"\x1b&"):
        return "pcl"
    sample = head[:4096]
    if sample and sum(32 <= b < 127 or b in (9, 10, 13) for b in sample) >= 0.95 * len(sample):
        return "text"
    return "binary" if sample else "empty"


def render(data: bytes) -> Rendered:
    """Draw every label of a ZPL payload (blocking; run it off the reactor, in a worker process)."""
    language = detect_language(data)
    if language != "zpl":
        return Rendered(language)
    if len(data) > MAX_BYTES:
        return Rendered(language, error=f"the job is {len(data)} bytes; previews are drawn up to {MAX_BYTES} bytes")
    import zplkit
    from zplkit.rendering import Limits, RenderError

    options = zplkit.Options(profile=PROFILE, width=WIDTH_DOTS, height=HEIGHT_DOTS, dpi=DPI)
    try:
        document = zplkit.render(data, options, limits=Limits(input_bytes=MAX_BYTES, labels=MAX_LABELS))
    except RenderError as e:
        return Rendered(language, error=f"the label could not be drawn: {e}")
    except ValueError as e:
        return Rendered(language, error=f"the label could not be drawn: {e}")
    out = Rendered(language, warnings=list(document.warnings))
    for label in document.labels:
        try:
            out.pngs.append(label.png())
        except ValueError as e:
            out.warnings.append(f"a label could not be drawn: {e}")
    return out
