"""
Templates: C{${name}} substitutes a variable, C{$$} is a literal C{$}.

An unknown variable is an error naming the variable, never an empty string.
Templates are parsed once, at config time, so a malformed one is a config
error; rendering is a join over pre-split parts.
"""

from __future__ import annotations

import codecs
import re
from collections.abc import Mapping
from typing import Union

from rawsvc.errors import ConfigIssue, TemplateError
from rawsvc.job import Variables

#: Encodings an action may name; C{auto} passes payload bytes through.
ENCODINGS = ("utf-8", "ascii", "latin-1", "cp437", "cp1252", "utf-16", "auto")

_TOKEN = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_.\-]*)\}|(\$)|)")

Value = Union[str, bytes]


def check_encoding(name: str) -> str:
    """
    Validate an encoding name from the config and return its canonical form.
    """
    if not isinstance(name, str):
        raise ConfigIssue("must be a string naming an encoding")
    if name == "auto":
        return name
    try:
        canonical = codecs.lookup(name).name
    except (LookupError, ValueError):  # ValueError: a NUL in the name
        raise ConfigIssue(
            f"unknown encoding {name!r}; use one of {', '.join(ENCODINGS)}"
        ) from None
    allowed = {codecs.lookup(e).name for e in ENCODINGS if e != "auto"}
    if canonical not in allowed:
        raise ConfigIssue(
            f"unsupported encoding {name!r}; use one of {', '.join(ENCODINGS)}"
        )
    return canonical


def encode_text(text: str, encoding: str) -> bytes:
    """
    Encode C{text}; C{auto} means UTF-8 for text.  Failures are
    L{TemplateError}s that say which character could not be encoded.
    """
    codec = "utf-8" if encoding == "auto" else encoding
    try:
        # auto: payload bytes that were not valid UTF-8 (decoded with
        # surrogateescape, e.g. a saved reply) go back out untouched.
        return text.encode(codec, "surrogateescape" if encoding == "auto" else "strict")
    except UnicodeEncodeError as e:
        bad = e.object[e.start : e.end]
        raise TemplateError(
            f"cannot encode {bad!r} at position {e.start} as {codec}"
            + (
                " (payload bytes that are not valid text: use encoding = \"auto\")"
                if any(0xDC80 <= ord(c) <= 0xDCFF for c in bad)
                else ""
            )
        ) from None


class Template:
    """
    A parsed template.  C{render_text} gives a string, C{render} bytes in an
    encoding; with C{auto}, a variable whose value is bytes (the raw payload)
    is inserted untouched.
    """

    __slots__ = ("source", "_parts", "names")

    def __init__(self, source: str) -> None:
        if not isinstance(source, str):
            raise ConfigIssue("must be a string (a template)")
        self.source = source
        parts: list[tuple[bool, str]] = []
        pos = 0
        for m in _TOKEN.finditer(source):
            if m.start() > pos:
                parts.append((False, source[pos : m.start()]))
            if m.group(1):
                parts.append((True, m.group(1)))
            elif m.group(2):
                parts.append((False, "$"))
            else:
                rest = source[m.start() : m.start() + 12]
                raise ConfigIssue(
                    f"bad template at position {m.start()} ({rest!r}): write "
                    "${name} for a variable and $$ for a literal $"
                )
            pos = m.end()
        if pos < len(source):
            parts.append((False, source[pos:]))
        # Merge adjacent literals.
        merged: list[tuple[bool, str]] = []
        for is_var, text in parts:
            if merged and not is_var and not merged[-1][0]:
                merged[-1] = (False, merged[-1][1] + text)
            else:
                merged.append((is_var, text))
        self._parts = tuple(merged)
        self.names = tuple(t for v, t in merged if v)

    def __repr__(self) -> str:
        return f"Template({self.source!r})"

    @property
    def is_single_variable(self) -> bool:
        """True when the template is exactly one C{${name}}."""
        return len(self._parts) == 1 and self._parts[0][0]

    def _lookup(self, variables: Mapping[str, Value], name: str, raw: bool = False) -> Value:
        try:
            if raw and isinstance(variables, Variables):
                return variables.raw(name)
            return variables[name]
        except KeyError:
            raise TemplateError(f"unknown variable ${{{name}}}") from None

    def render_text(self, variables: Mapping[str, Value]) -> str:
        out = []
        for is_var, text in self._parts:
            if is_var:
                value = self._lookup(variables, text)
                if isinstance(value, bytes):
                    value = value.decode("utf-8", "surrogateescape")
                out.append(value)
            else:
                out.append(text)
        return "".join(out)

    def render(self, variables: Mapping[str, Value], encoding: str) -> bytes:
        if encoding != "auto":
            return encode_text(self.render_text(variables), encoding)
        out = []
        for is_var, text in self._parts:
            if is_var:
                value = self._lookup(variables, text, raw=True)
                out.append(value if isinstance(value, bytes) else encode_text(value, "auto"))
            else:
                out.append(encode_text(text, "auto"))
        return b"".join(out)


def render(source: str, variables: Mapping[str, Value]) -> str:
    """Parse and render C{source} in one go (for one-off use)."""
    return Template(source).render_text(variables)

