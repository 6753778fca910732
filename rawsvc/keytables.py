"""
README's configuration key tables, generated from the option declarations.

Every table of keys a user can write is named here (C{service}, C{flow},
C{trigger.tcp}, C{action.send_tcp}, C{admin.http} ...) and rendered from
its L{rawsvc.options.Schema} by L{markdown_table}.  README holds each one
between markers::

    <!-- keys: trigger.tcp -->
    | key | default | meaning |
    ...
    <!-- /keys -->

L{update} rewrites every marked block of a text from the declarations;
C{rawsvc config-keys --update README.md} does that to a file and
C{tests/test_readme_tables.py} fails while README and the declarations
disagree.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from rawsvc import options as o

#: The built-in tables, in README's order.
TRIGGER_TYPES = ("tcp", "tcp-client", "http", "folder", "serial", "printer", "appsocket-status")
ACTION_TYPES = ("log", "set", "reply", "file", "send_tcp", "http", "parse")
ADMIN_TABLES = ("manhole", "http")

HEADER = "| key | default | meaning |\n| --- | --- | --- |\n"

_BLOCK = re.compile(
    r"(?P<open><!-- keys: (?P<name>[^ ]+) -->\n)(?P<body>.*?)(?P<close><!-- /keys -->)", re.S
)


class UnknownTable(LookupError):
    """A table name that names no schema; C{str()} says which names exist."""


def table_names() -> list[str]:
    """Every built-in table's name, in README's order."""
    return (
        ["service", "cluster", "flow"]
        + [f"trigger.{t}" for t in TRIGGER_TYPES]
        + [f"action.{a}" for a in ACTION_TYPES]
        + [f"admin.{a}" for a in ADMIN_TABLES]
    )


def schema_of(name: str) -> o.Schema:
    """
    The schema of table C{name}: C{service}, C{flow}, C{trigger.TYPE},
    C{action.TYPE} or C{admin.SECTION}; a plugin's trigger or action type
    works as its config names it.
    """
    from rawsvc.config import ADMIN_SECTIONS, FLOW_OPTIONS, SERVICE_OPTIONS
    from rawsvc.errors import ConfigIssue
    from rawsvc.plugins import find_action_type, find_trigger_type, load_dotted

    kind, _, rest = name.partition(".")
    try:
        if name == "service":
            return SERVICE_OPTIONS
        if name == "flow":
            return FLOW_OPTIONS
        if name == "cluster":
            from rawsvc.cluster.settings import CLUSTER_OPTIONS

            return CLUSTER_OPTIONS
        if kind == "trigger" and rest:
            return find_trigger_type(rest).options
        if kind == "action" and rest:
            return find_action_type(rest).options
        if kind == "admin" and rest in ADMIN_SECTIONS:
            schema = load_dotted(ADMIN_SECTIONS[rest])
            assert isinstance(schema, o.Schema)
            return schema
    except ConfigIssue as e:
        raise UnknownTable(f"{name}: {e.message}") from None
    raise UnknownTable(
        f"no table {name!r}; tables: service, cluster, flow, trigger.TYPE, action.TYPE, "
        f"admin.{'/'.join(ADMIN_SECTIONS)} (built in: {', '.join(table_names())})"
    )


def render(name: str) -> str:
    """Table C{name} as Markdown, its folded rows chosen as README shows them."""
    schema = schema_of(name)
    kind, _, type_name = name.partition(".")
    if kind == "trigger" and type_name != "tcp":
        from rawsvc.triggers.base import LISTENER_OPTIONS

        return markdown_table(schema, common=LISTENER_OPTIONS, common_label="(listener keys)",
                              common_note="as for `tcp`")
    return markdown_table(schema)


def markdown_table(schema: o.Schema, *, common: o.Schema | None = None, common_label: str = "",
                   common_note: str = "") -> str:
    """
    C{schema} as a Markdown table, one row per key in declaration order:
    key, default (L{shown_default}) and the key's C{doc}.  Keys whose very
    declaration is also in C{common} (inherited, not overridden) fold into
    one first row, C{common_label}, listing them and ending in
    C{common_note}.
    """
    rows = []
    folded = [opt.name for opt in schema if common is not None and common.options.get(opt.name) is opt]
    if folded:
        names = ", ".join(f"`{n}`" for n in folded)
        rows.append((common_label, "", f"{names}, {common_note}" if common_note else names))
    for opt in schema:
        if opt.name not in folded:
            rows.append((f"`{opt.name}`", shown_default(opt), opt.doc))
    return HEADER + "".join("|" + "|".join(f" {_cell(c)} " if c else " " for c in row) + "|\n" for row in rows)


def shown_default(opt: o.Option) -> str:
    """README's default cell: C{required}, the TOML value in backticks, or C{shown_default}."""
    if opt.shown_default is not None:
        return opt.shown_default
    if opt.required:
        return "required"
    if opt.default is None:
        return "—"
    return f"`{toml_value(opt.default)}`"


def toml_value(value: Any) -> str:
    """C{value} written as TOML: C{"\\r\\n"}, C{300}, C{0.5}, C{true}, C{["a"]}, C{{}}."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)  # JSON's escapes are TOML's
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {toml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def blocks(text: str) -> list[str]:
    """The names of the marked tables in C{text}, in order."""
    return [m.group("name") for m in _BLOCK.finditer(text)]


def update(text: str, names: Iterable[str] | None = None) -> str:
    """
    C{text} with every marked table (or those in C{names}) regenerated from
    the declarations.  An unknown table name is an L{UnknownTable}.
    """
    wanted = set(names) if names is not None else None

    def replace(m: re.Match[str]) -> str:
        if wanted is not None and m.group("name") not in wanted:
            return m.group(0)
        return m.group("open") + render(m.group("name")) + m.group("close")

    return _BLOCK.sub(replace, text)
