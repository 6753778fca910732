"""
Action C{parse}: set variables from the payload.

Formats: C{regex} (named groups), C{keyvalue} pairs, C{json} fields by
dotted path, C{csv} columns by header or index.  A payload that does not
parse fails the action, saying why.
"""

from __future__ import annotations

import csv
import io
import json
import re
from typing import TYPE_CHECKING, Any

from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.errors import ActionError, ConfigIssue, quoted
from rawsvc.interfaces import IAction, IActionType
from rawsvc.template import Template

if TYPE_CHECKING:
    from rawsvc.context import BuildContext

FORMATS = ("regex", "keyvalue", "json", "csv")


def _fields(value: dict) -> dict[str, Any]:
    for name, spec in value.items():
        o.variable_name(name)
        if isinstance(spec, bool) or not isinstance(spec, (str, int)):
            raise ConfigIssue(f"field {name!r} must name a path, a column header or a column index")
    return dict(value)


@provider(IActionType)
@implementer(IAction)
class ParseAction:
    """Pull variables out of the payload."""

    type_name = "parse"
    options = o.Schema(
        o.Option("format", str, "", o.one_of("", *FORMATS), shown_default="`\"regex\"` with a `regex` key",
                 doc="`regex`, `keyvalue`, `json` or `csv`"),
        o.Option("source", str, "${data}", o.template, doc="the text to parse (template)"),
        o.Option("regex", str, "", doc="regex: a pattern whose named groups `(?P<name>...)` become variables", shown_default="—"),
        o.Option("match", str, "search", o.one_of("search", "fullmatch"), doc="regex: `search` (anywhere) or `fullmatch` (the whole text)"),
        o.Option("fields", dict, {}, _fields, doc="json: `var = \"a.b.0\"`; csv and keyvalue: `var = \"Header\"` or a column index"),
        o.Option("pair_separator", str, "\n", doc="keyvalue: the text between pairs"),
        o.Option("assign", str, "=", doc="keyvalue: the text between a key and its value"),
        o.Option("csv_delimiter", str, ",", doc="csv: the field delimiter"),
        o.Option("header", bool, True, doc="csv: the first row holds column names"),
        o.Option("prefix", str, "", doc="prepended to the name of every variable set"),
    )

    def __init__(self, fmt: str, source: Template, *, pattern: re.Pattern[str] | None = None,
                 match: str = "search", fields: dict[str, Any] | None = None,
                 pair_separator: str = "\n", assign: str = "=", csv_delimiter: str = ",",
                 header: bool = True, prefix: str = "") -> None:
        self.format = fmt
        self.source = source
        self.pattern = pattern
        self.match = match
        self.fields = fields or {}
        self.pair_separator = pair_separator
        self.assign = assign
        self.csv_delimiter = csv_delimiter
        self.header = header
        self.prefix = prefix

    @classmethod
    def from_config(cls, options: dict[str, Any], context: BuildContext) -> "ParseAction":
        fmt = options["format"] or ("regex" if options["regex"] else "")
        if not fmt:
            raise ConfigIssue("is required: one of regex, keyvalue, json, csv (or give 'regex')", "format")
        pattern = None
        if fmt == "regex":
            if not options["regex"]:
                raise ConfigIssue("is required with format = \"regex\"", "regex")
            try:
                pattern = re.compile(options["regex"], re.MULTILINE)
            except re.error as e:
                raise ConfigIssue(f"bad regular expression: {e}", "regex") from None
            if not pattern.groupindex:
                raise ConfigIssue("has no named groups (?P<name>...), so it would set no variable", "regex")
            for name in pattern.groupindex:
                o.variable_name(name)
        elif options["regex"]:
            raise ConfigIssue(f"only applies to format = \"regex\", not {fmt!r}", "regex")
        if fmt == "csv":
            if len(options["csv_delimiter"]) != 1:
                raise ConfigIssue("must be one character", "csv_delimiter")
            if not options["fields"]:
                raise ConfigIssue("is required with format = \"csv\" (var = \"Header\" or column index)", "fields")
            if not options["header"] and any(isinstance(v, str) for v in options["fields"].values()):
                raise ConfigIssue("names columns by header but header = false; use indexes", "fields")
        if fmt == "keyvalue" and (not options["pair_separator"] or not options["assign"]):
            raise ConfigIssue("must not be empty", "pair_separator" if not options["pair_separator"] else "assign")
        if options["prefix"] and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", options["prefix"]):
            raise ConfigIssue(
                f"{options['prefix']!r} cannot start a variable name "
                "(letters, digits, _ . -; not starting with a digit)",
                "prefix",
            )
        return cls(fmt, options["source"], pattern=pattern, match=options["match"],
                   fields=options["fields"], pair_separator=options["pair_separator"],
                   assign=options["assign"], csv_delimiter=options["csv_delimiter"],
                   header=options["header"], prefix=options["prefix"])

    def run(self, job) -> None:
        text = self.source.render_text(job.variables)
        found = getattr(self, "_parse_" + self.format)(text)
        for name, value in found.items():
            job.variables[self.prefix + name] = value

    def _parse_regex(self, text: str) -> dict[str, str]:
        assert self.pattern is not None
        m = self.pattern.fullmatch(text) if self.match == "fullmatch" else self.pattern.search(text)
        if m is None:
            raise ActionError(f"payload {quoted(text, 60)} does not match regex {quoted(self.pattern.pattern)}")
        return {k: (v if v is not None else "") for k, v in m.groupdict().items()}

    def _parse_keyvalue(self, text: str) -> dict[str, str]:
        found: dict[str, str] = {}
        for n, pair in enumerate(text.split(self.pair_separator)):
            pair = pair.strip("\r\n ")
            if not pair:
                continue
            key, sep, value = pair.partition(self.assign)
            key = key.strip()
            if not sep or not key:
                raise ActionError(f"keyvalue pair {n + 1} {quoted(pair, 60)} has no {quoted(self.assign)}")
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", key):
                raise ActionError(f"keyvalue pair {n + 1}: {quoted(key, 60)} is not a usable variable name")
            found[key] = value.strip()
        if self.fields:
            return {var: _pick(found, str(key), "key") for var, key in self.fields.items()}
        return found

    def _parse_json(self, text: str) -> dict[str, str]:
        try:
            doc = json.loads(text)
        except ValueError as e:
            raise ActionError(f"payload is not JSON: {e}") from None
        if not self.fields:
            if not isinstance(doc, dict):
                raise ActionError("JSON payload is not an object; name 'fields' to pick values")
            return {k: _text(v) for k, v in doc.items() if not isinstance(v, (dict, list))
                    and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_.\-]*", k)}
        out = {}
        for var, path in self.fields.items():
            node: Any = doc
            for step in str(path).split("."):
                if isinstance(node, dict) and step in node:
                    node = node[step]
                elif isinstance(node, list) and step.lstrip("-").isdigit() and -len(node) <= int(step) < len(node):
                    node = node[int(step)]
                else:
                    raise ActionError(f"JSON payload has no field {quoted(str(path))} (for ${{{var}}})")
            out[var] = _text(node)
        return out

    def _parse_csv(self, text: str) -> dict[str, str]:
        rows = [r for r in csv.reader(io.StringIO(text), delimiter=self.csv_delimiter) if r]
        if self.header:
            if len(rows) < 2:
                raise ActionError("CSV payload needs a header row and a data row")
            header, row = rows[0], rows[1]
        else:
            if not rows:
                raise ActionError("CSV payload is empty")
            header, row = [], rows[0]
        out = {}
        for var, col in self.fields.items():
            if isinstance(col, int):
                index = col
            elif col in header:
                index = header.index(col)
            else:
                raise ActionError(f"CSV payload has no column {quoted(col)} (for ${{{var}}})")
            if not -len(row) <= index < len(row):
                raise ActionError(f"CSV row has {len(row)} columns; no column {index} (for ${{{var}}})")
            out[var] = row[index]
        return out


def _pick(found: dict[str, str], key: str, what: str) -> str:
    if key not in found:
        raise ActionError(f"payload has no {what} {quoted(key)}")
    return found[key]


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    return json.dumps(value)
