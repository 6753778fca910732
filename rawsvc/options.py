"""
A small declarative schema for config tables.

Each trigger and action type declares its keys as L{Option}s, each once:
its TOML type, default, check and documentation together.  The same
declarations drive three things:

  - validation: L{Schema.validate} checks every key (unknown keys, types,
    ranges, custom checks) and collects every problem instead of stopping
    at the first;
  - construction: L{Schema.settings} turns validated values into a frozen
    L{Settings} record (C{settings.idle_timeout}), defaults filled in from
    the declaration, so a constructor never copies a default;
  - documentation: L{rawsvc.keytables} renders each schema as README's key
    table (C{rawsvc config-keys}).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Any, NoReturn

import attrs

from rawsvc.errors import ConfigIssue
from rawsvc.template import Template, check_encoding

class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}


@attrs.frozen
class Option:
    """
    One config key: its name, its TOML type(s), a default (or L{REQUIRED}),
    an optional C{check} that converts the value or raises L{ConfigIssue},
    and its documentation.

    C{doc} is README's "meaning" cell, in Markdown (one line, no C{|}).
    C{shown_default} is README's "default" cell when the TOML value of
    C{default} would mislead (C{""} that means "the payload, untouched",
    C{None} that means "no cap"); Markdown too.
    """

    name: str
    kind: type | tuple[type, ...]
    default: Any = REQUIRED
    check: Callable[[Any], Any] | None = None
    doc: str = ""
    shown_default: str | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def convert(self, value: Any) -> Any:
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        ok = isinstance(value, kinds) and not (
            isinstance(value, bool) and bool not in kinds
        )
        if not ok and float in kinds and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
            ok = True
        if not ok:
            want = " or ".join(_KIND_NAMES.get(k, k.__name__) for k in kinds)
            raise ConfigIssue(f"must be {want}, not {_describe(value)}")
        if self.check is not None:
            value = self.check(value)
        return value

    def default_value(self) -> Any:
        """The default as a validated table holds it (converted by the check; None stays None)."""
        if self.default is not None and self.check is not None:
            return self.check(self.default)
        return self.default


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


class Settings(Mapping[str, Any]):
    """
    The validated values of one config table, read-only: C{settings.key}
    or C{settings["key"]} (a L{Mapping}, so code written for the plain dict
    of L{Schema.validate} keeps working).  Built by L{Schema.settings}.
    """

    __slots__ = ("_values",)
    _values: Mapping[str, Any]

    def __init__(self, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_values", MappingProxyType(dict(values)))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._values[name]
        except KeyError:
            raise AttributeError(f"no setting {name!r} (known: {', '.join(self._values)})") from None

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise attrs.exceptions.FrozenInstanceError()

    def __delattr__(self, name: str) -> NoReturn:
        raise attrs.exceptions.FrozenInstanceError()

    def __getitem__(self, key: str) -> Any:
        return self._values[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return "Settings(" + ", ".join(f"{k}={v!r}" for k, v in self._values.items()) + ")"


class Schema:
    """An ordered set of L{Option}s."""

    def __init__(self, *options: Option | Iterable[Option]) -> None:
        self.options: dict[str, Option] = {}
        for o in options:
            for opt in [o] if isinstance(o, Option) else o:
                self.options[opt.name] = opt

    def __add__(self, other: "Schema") -> "Schema":
        return Schema(*self.options.values(), *other.options.values())

    def __iter__(self) -> Iterator[Option]:
        return iter(self.options.values())

    def settings(self, values: Mapping[str, Any] | None = None, **more: Any) -> Settings:
        """
        A frozen L{Settings} record of C{values} (the converted values
        L{validate} returned), every key this schema declares present: one
        left out takes its declared default, converted by its check as
        L{validate} converts it.  A key the schema does not declare, or a
        required one left out, is a L{ValueError}: a programming error, not
        a config one (the config was validated before).
        """
        given = dict(values or {}, **more)
        unknown = [k for k in given if k not in self.options]
        if unknown:
            raise ValueError(f"not declared in this schema: {', '.join(unknown)}")
        out: dict[str, Any] = {}
        for opt in self.options.values():
            if opt.name in given:
                out[opt.name] = given[opt.name]
            elif opt.required:
                raise ValueError(f"{opt.name!r} is required and has no default")
            else:
                out[opt.name] = opt.default_value()
        return Settings(out)

    def validate(
        self, table: Mapping[str, Any], ignore: Iterable[str] = ()
    ) -> tuple[dict[str, Any], list[ConfigIssue]]:
        """
        Check C{table}; return the converted values (defaults filled in) and
        every problem found, each with its key.
        """
        values: dict[str, Any] = {}
        issues: list[ConfigIssue] = []
        skip = set(ignore)
        for key in table:
            if key not in self.options and key not in skip:
                near = _closest(key, self.options)
                issues.append(
                    ConfigIssue(
                        "unknown key" + (f" (did you mean {near!r}?)" if near else ""),
                        key,
                    )
                )
        for opt in self.options.values():
            if opt.name in table:
                try:
                    values[opt.name] = opt.convert(table[opt.name])
                except ConfigIssue as e:
                    issues.append(ConfigIssue(e.message, opt.name))
            elif opt.required:
                issues.append(ConfigIssue("is required", opt.name))
            else:
                values[opt.name] = opt.default_value()
        return values, issues


def _closest(key: str, names: Iterable[str]) -> str | None:
    import difflib

    found = difflib.get_close_matches(key, list(names), n=1, cutoff=0.75)
    return found[0] if found else None


# Checks shared by many options --------------------------------------------


def template(value: str) -> Template:
    return Template(value)


def optional_template(value: str) -> Template | None:
    return Template(value) if value != "" else None


def encoding(value: str) -> str:
    return check_encoding(value)


def _finite(value: float) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigIssue(f"must be a finite number, not {value!r}")


def positive(value: float) -> float:
    _finite(value)
    if value <= 0:
        raise ConfigIssue(f"must be greater than 0, not {value!r}")
    return value


def non_negative(value: float) -> float:
    _finite(value)
    if value < 0:
        raise ConfigIssue(f"must be 0 or more, not {value!r}")
    return value


def one_of(*choices: str) -> Callable[[str], str]:
    def check(value: str) -> str:
        if value not in choices:
            raise ConfigIssue(
                f"must be one of {', '.join(repr(c) for c in choices)}, not {value!r}"
            )
        return value

    return check


def regex(value: str) -> re.Pattern[str]:
    try:
        return re.compile(value)
    except re.error as e:
        raise ConfigIssue(f"bad regular expression: {e}") from None


def variable_name(value: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", value):
        raise ConfigIssue(
            f"{value!r} is not a variable name (letters, digits, _ . -; not starting with a digit)"
        )
    return value


def string_list(value: list) -> list[str]:
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise ConfigIssue(f"item {i} must be a string, not {_describe(item)}")
    return list(value)


def byte_string(value: str) -> bytes:
    """A delimiter or marker written as text; TOML escapes give control bytes."""
    if value == "":
        raise ConfigIssue("must not be empty")
    try:
        return value.encode("latin-1")
    except UnicodeEncodeError:
        return value.encode("utf-8")


def server_endpoint(value: str) -> str:
    """A Twisted server endpoint string (C{tcp:9100:interface=127.0.0.1})."""
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    if ":" not in value:
        raise ConfigIssue(
            f"{value!r} is not an endpoint string; write e.g. 'tcp:9100:interface=127.0.0.1'"
        )
    try:
        serverFromString(MemoryReactor(), value)
    except Exception as e:
        raise ConfigIssue(f"bad endpoint string {value!r}: {e}") from None
    return value


def udp_endpoint(value: str) -> tuple[int, str]:
    """C{udp:PORT[:interface=ADDR]} -> (port, interface)."""
    parts = value.split(":")
    if parts[0] != "udp" or len(parts) < 2:
        raise ConfigIssue(f"{value!r} is not a UDP endpoint; write 'udp:9101:interface=127.0.0.1'")
    try:
        port = int(parts[1])
    except ValueError:
        raise ConfigIssue(f"bad port {parts[1]!r} in {value!r}") from None
    if not 0 <= port <= 65535:
        raise ConfigIssue(f"port {port} out of range in {value!r}")
    interface = "127.0.0.1"
    rest = ":".join(parts[2:])
    if rest:
        # interface=::1 holds colons; only 'interface' is accepted.
        key, eq, val = rest.partition("=")
        if key != "interface" or not eq or not val:
            raise ConfigIssue(f"bad option {rest!r} in {value!r}; only interface=ADDR is accepted")
        interface = val.replace("\\:", ":")
    return port, interface
