"""
Loading and validating the TOML config, completely, before anything listens.

Every problem is collected and reported with the file, the table and the
key; the caller gets either a L{Config} (flows and triggers built, nothing
started) or a L{ConfigError} listing them all.

The C{rawsvc} commands that only need the state directory read the config
through L{service_config}: the same parsing, the same top-level and
C{[service]} checks and the same path resolution as L{load}, nothing built.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from typing import Any

import attrs
from zope.interface.verify import verifyObject

from rawsvc import options as o
from rawsvc.addresses import clashes
from rawsvc.context import DEFAULT_STATE_DIR, BuildContext, config_relative
from rawsvc.errors import ConfigError, ConfigIssue
from rawsvc.flow import Flow
from rawsvc.interfaces import IAction, IReferencingTriggerType, ITrigger
from rawsvc.plugins import find_action_type, find_trigger_type, load_dotted, not_provided
from rawsvc.wiring import build_sink

#: The config file C{twistd rawsvc}, C{rawsvc check-config} and C{rawsvc jobs} read when given none.
DEFAULT_CONFIG = "etc/rawsvc.toml"

def _state_dir(value: str) -> str:
    """An empty C{state_dir} is the default one."""
    return value or DEFAULT_STATE_DIR


def _spool(value: bool | str) -> bool | str:
    """C{true}, C{false}, or a PostgreSQL URI (C{postgresql://...}); anything else is a config error."""
    if isinstance(value, bool):
        return value
    from rawsvc.spool.pg_schema import is_pg_uri

    if not is_pg_uri(value):
        raise ConfigIssue("must be true, false or a PostgreSQL URI (\"postgresql://user@host:port/database\"), "
                          f"not the string {value!r}")
    return value


SERVICE_OPTIONS = o.Schema(
    o.Option("state_dir", str, DEFAULT_STATE_DIR, _state_dir,
             doc="spool, host keys, temporary files (created with mode 0700). A relative path is taken from the "
                 "config file's folder (`etc/x.toml` with `\"../var/x\"` is `<repo>/var/x`, whatever the working "
                 "directory), alike for `twistd rawsvc` and the `rawsvc` commands that take `-c`; the service logs "
                 "the absolute path it uses, and so does every command. One service at a time per `state_dir` (an "
                 "exclusive lock on `state_dir/lock`, holding its pid)"),
    o.Option("allowed_destinations", list, None, o.string_list,
             doc="where `send_tcp` may connect (see `send_tcp`)", shown_default="literal destinations + loopback"),
    o.Option("spill_threshold", int, 1 << 20, o.positive,
             doc="bytes past which a job's payload moves from memory to a file"),
    o.Option("spool", (bool, str), True, _spool,
             doc="store accepted jobs durably before acknowledging them: `true` in SQLite in `state_dir`, `false` "
                 "in memory only (nothing survives a restart), or a PostgreSQL libpq URI "
                 "`\"postgresql://user@host:port/db\"` (see \"PostgreSQL spool\")"),
    o.Option("retention_days", (int, float), 7.0, o.non_negative, doc="purge finished jobs after this many days"),
    o.Option("retention_mb", (int, float), 1024.0, o.non_negative,
             doc="purge the oldest finished jobs beyond this size"),
    o.Option("min_free_mb", (int, float), 100.0, o.non_negative,
             doc="free-space floor: while the filesystem of `state_dir` has less free than this, each retention "
                 "pass also purges the oldest finished jobs (0: no floor)"),
    o.Option("history", int, 1000, o.positive, doc="finished jobs kept in memory for status pages"),
    o.Option("stop_grace", (int, float), 30.0, o.non_negative,
             doc="seconds a stop waits for jobs in flight; what it cuts off resumes at the next start "
                 "(see \"Stopping and restarting\")"),
    o.Option("log_jobs", bool, False,
             doc="log every finished job at info (failures are always logged at warn; job history is in the "
                 "spool, `/jobs` and `rawsvc jobs`)"),
    o.Option("log_format", str, "text", o.one_of("text", "json"),
             doc="`text` (twistd's lines) or `json`: one JSON object per line (time, level, namespace, message and "
                 "the event's fields: job_id, trigger, destination, error ...) to twistd's log file or stdout"),
)

#: Admin sections: name -> dotted path to their Schema, loaded on first use.
ADMIN_SECTIONS = {
    "manhole": "rawsvc.admin.manhole:MANHOLE_OPTIONS",
    "http": "rawsvc.admin.web:HTTP_OPTIONS",
}

FLOW_OPTIONS = o.Schema(
    o.Option("name", str, doc="the flow's name, which triggers give as their `flow`"),
    o.Option("actions", list, doc="the actions, in order (at least one): inline tables or `[[flow.actions]]`"),
    o.Option("on_error", list, [],
             doc="actions run when an action fails, with `${error}` set (e.g. a `reply` to the sender)"),
    o.Option("description", str, "", doc="free text"),
)

TOP_LEVEL = ("service", "cluster", "trigger", "flow", "admin")


@attrs.define(eq=False)
class Config:
    """
    A validated config: built flows and triggers, nothing started.
    C{service} is the validated C{[service]} table as a dict; C{settings}
    the same values as a frozen L{o.Settings} (C{config.settings.stop_grace}).
    """

    path: str
    service: dict[str, Any]
    flows: dict[str, Flow]
    triggers: dict[str, ITrigger]
    admin: dict[str, dict[str, Any]]
    context: BuildContext
    settings: o.Settings = attrs.field(factory=lambda: SERVICE_OPTIONS.settings())

    def summary(self) -> str:
        """check-config's one line: what the config defines, and the absolute state_dir it uses."""
        kinds = ", ".join(
            f"{name} ({t.type_name})" for name, t in self.triggers.items()
        )
        return (
            f"{self.path}: OK: {len(self.triggers)} trigger(s) [{kinds}], "
            f"{len(self.flows)} flow(s) [{', '.join(self.flows)}]"
            + (f", admin: {', '.join(self.admin)}" if self.admin else "")
            + f"; state_dir {self.context.state_dir}"
        )


@attrs.frozen
class ServiceConfig:
    """
    What the C{rawsvc} commands need of a config: its validated C{[service]}
    table and the absolute state directory the service would use.  C{path}
    is None when there was no config file to read (every default, the
    state directory taken from the working directory).
    """

    path: str | None
    settings: o.Settings
    state_dir: str


class _Errors:
    def __init__(self, path: str) -> None:
        self.path = path
        self.lines: list[str] = []

    def add(self, table: str, issue: ConfigIssue | str, key: str | None = None) -> None:
        if isinstance(issue, ConfigIssue):
            key = issue.key or key
            message = issue.message
        else:
            message = issue
        where = f"{self.path}: {table}"
        if key:
            where += f": key '{key}'"
        self.lines.append(f"{where}: {message}")

    def extend(self, table: str, issues: list[ConfigIssue]) -> None:
        for issue in issues:
            self.add(table, issue)


def load(path: str, context: BuildContext | None = None, require_trigger: bool = True) -> Config:
    """
    Read, validate and build the config at C{path}: what C{twistd rawsvc}
    and C{rawsvc check-config} run, so a config without a trigger is an error.
    """
    return loads(_read(path), path, context, require_trigger)


def service_config(path: str | None = None) -> ServiceConfig:
    """
    The C{[service]} table of the config at C{path} (None: L{DEFAULT_CONFIG}
    when that file exists), read and checked as L{load} reads and checks it
    (TOML, the top level, every C{[service]} key), nothing else built; its
    C{state_dir} resolved from the config file's folder as the service
    resolves it.  Without a path and without the default file: every
    default, the state directory taken from the working directory.
    Problems raise the L{ConfigError} that C{rawsvc check-config} would
    list for them.
    """
    if path is None:
        if not os.path.exists(DEFAULT_CONFIG):
            defaults = SERVICE_OPTIONS.settings()
            return ServiceConfig(None, defaults, config_relative("<memory>", defaults.state_dir))
        path = DEFAULT_CONFIG
    errors = _Errors(path)
    doc = _parse(_read(path), path)
    settings = _service(doc, errors)
    _cluster(doc, settings, errors)
    if errors.lines:
        raise ConfigError(errors.lines)
    return ServiceConfig(path, settings, config_relative(path, settings.state_dir))


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as e:
        raise ConfigError([f"{path}: cannot read config: {e.strerror}"]) from None


def _parse(raw: bytes | str, path: str) -> dict[str, Any]:
    if isinstance(raw, bytes):
        try:
            raw = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise ConfigError([f"{path}: not UTF-8 text (byte {e.start})"]) from None
    try:
        return tomllib.loads(raw)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError([f"{path}: TOML syntax error: {e}"]) from None


def _service(doc: dict[str, Any], errors: _Errors) -> o.Settings:
    """Check the top level's keys and validate [service]: its settings (defaults where a key is wrong)."""
    for key in doc:
        if key not in TOP_LEVEL:
            errors.add("top level", f"unknown table or key (expected one of: {', '.join(TOP_LEVEL)})", key)
    service_table = doc.get("service", {})
    if not isinstance(service_table, dict):
        errors.add("[service]", "must be a table")
        service_table = {}
    values, issues = SERVICE_OPTIONS.validate(service_table)
    errors.extend("[service]", issues)
    return SERVICE_OPTIONS.settings(values)


def _cluster(doc: dict[str, Any], settings: o.Settings, errors: _Errors) -> dict[str, Any] | None:
    """The validated C{[cluster]} table (defaults filled in) with a PostgreSQL spool, else None."""
    from rawsvc.cluster.settings import CLUSTER_OPTIONS, check
    from rawsvc.spool.pg_schema import is_pg_uri

    table = doc.get("cluster")
    if table is not None and not isinstance(table, dict):
        errors.add("[cluster]", "must be a table")
        table = {}
    if not is_pg_uri(settings.spool):
        if table is not None:
            errors.add("[cluster]", "needs a PostgreSQL spool: [service] spool = \"postgresql://user@host:port/db\"")
        return None
    values, issues = CLUSTER_OPTIONS.validate(table or {})
    errors.extend("[cluster]", issues)
    if not issues:
        errors.extend("[cluster]", check(values))
    return values


def loads(raw: bytes | str, path: str = "<memory>", context: BuildContext | None = None,
          require_trigger: bool = False) -> Config:
    """
    Validate and build a config from its TOML text.  A config of flows
    alone is accepted unless C{require_trigger} (tests build flows so).
    """
    errors = _Errors(path)
    doc = _parse(raw, path)
    settings = _service(doc, errors)
    service = dict(settings)

    if context is None:
        context = BuildContext(config_path=path)
    context.cluster_options = _cluster(doc, settings, errors)
    context.config_path = path
    context.state_dir = config_relative(path, settings.state_dir)
    context.service_options = service

    flows = _load_flows(doc.get("flow", []), errors, context, settings)
    if doc.get("trigger") and not errors.lines:
        # Wiring (rawsvc.wiring): the sink for these flows, handed to every trigger as it is built.
        build_sink(context, flows)
    triggers = _load_triggers(doc.get("trigger", []), flows, errors, context)
    admin = _load_admin(doc.get("admin", {}), errors)
    if require_trigger and not doc.get("trigger"):
        errors.add("top level", "the config defines no [[trigger]]; rawsvc would do nothing")
    _check_listeners(context, admin, errors)

    if errors.lines:
        raise ConfigError(errors.lines)
    return Config(path, service, flows, triggers, admin, context, settings)


def _table_list(value: Any, name: str, errors: _Errors) -> list[Any]:
    if isinstance(value, dict):
        errors.add(f"[{name}]", f"must be written [[{name}]] (a list of tables)")
        return []
    if not isinstance(value, list):
        errors.add("top level", f"must be a list of [[{name}]] tables", name)
        return []
    return value


def _load_flows(value: Any, errors: _Errors, context: BuildContext, settings: o.Settings) -> dict[str, Flow]:
    flows: dict[str, Flow] = {}
    for i, table in enumerate(_table_list(value, "flow", errors)):
        label = f"[[flow]] #{i + 1}"
        if not isinstance(table, dict):
            errors.add(label, "must be a table")
            continue
        name = table.get("name")
        if isinstance(name, str) and name:
            label = f"[[flow]] {name!r}"
        values, issues = FLOW_OPTIONS.validate(table)
        errors.extend(label, issues)
        if "name" in values and not values["name"]:
            errors.add(label, "must not be empty", "name")
        if isinstance(name, str) and name in flows:
            errors.add(label, f"duplicate flow name {name!r}", "name")
        actions = _load_actions(values.get("actions", []), label, "actions", errors, context)
        if "actions" in values and not values["actions"]:
            errors.add(label, "must list at least one action", "actions")
        handlers = _load_actions(values.get("on_error", []), label, "on_error", errors, context)
        if isinstance(name, str) and name and name not in flows:
            flows[name] = Flow(name, actions, handlers, log_jobs=settings.log_jobs)
    return flows


def _load_actions(items: list, label: str, key: str, errors: _Errors, context: BuildContext) -> list:
    built = []
    for j, table in enumerate(items):
        where = f"{label} {key}[{j}]"
        if not isinstance(table, dict):
            errors.add(where, "must be a table such as { type = \"log\", message = \"...\" }")
            continue
        type_name = table.get("type")
        if not isinstance(type_name, str):
            errors.add(where, "is required (a string naming the action type)", "type")
            continue
        where = f"{where} ({type_name})"
        try:
            action_type = find_action_type(type_name)
        except ConfigIssue as e:
            errors.add(where, e, "type")
            continue
        values, issues = action_type.options.validate(table, ignore=("type",))
        errors.extend(where, issues)
        if issues:
            continue
        try:
            action = action_type.from_config(values, context)
        except ConfigIssue as e:
            errors.add(where, e)
            continue
        except Exception as e:  # a plugin's bug: an error line, not a traceback
            errors.add(where, f"cannot be built: {type(e).__name__}: {e}")
            continue
        why = not_provided(IAction, action)
        if why is not None:
            errors.add(where, f"type {type_name!r} built a {type(action).__name__}, which does not provide IAction: {why}")
            continue
        built.append(action)
    return built


def _load_triggers(value: Any, flows: Mapping[str, Flow], errors: _Errors, context: BuildContext) -> dict[str, ITrigger]:
    tables: list[tuple[str, Any, dict[str, Any]]] = []
    names: set[str] = set()
    for i, table in enumerate(_table_list(value, "trigger", errors)):
        label = f"[[trigger]] #{i + 1}"
        if not isinstance(table, dict):
            errors.add(label, "must be a table")
            continue
        name = table.get("name")
        named = isinstance(name, str) and bool(name)
        if isinstance(name, str) and name:  # named, spelled out so the type narrows
            label = f"[[trigger]] {name!r}"
            if name in names:
                errors.add(label, f"duplicate trigger name {name!r}", "name")
                continue
            names.add(name)
        else:
            errors.add(label, "is required (a non-empty string)", "name")
        type_name = table.get("type")
        if not isinstance(type_name, str):
            errors.add(label, "is required (a string: tcp, printer, appsocket-status or a plugin)", "type")
            continue
        try:
            trigger_type = find_trigger_type(type_name)
        except ConfigIssue as e:
            errors.add(label, e, "type")
            continue
        values, issues = trigger_type.options.validate(table)
        # A missing name was reported above; do not repeat the schema's line.
        errors.extend(label, [i for i in issues if named or i.key != "name"])
        for key, val in values.items():
            if (key == "flow" or key.endswith("_flow")) and isinstance(val, str) and val and val not in flows:
                errors.add(label, f"names flow {val!r}, which is not defined", key)
                issues.append(ConfigIssue("", key))
        if not issues and isinstance(name, str) and name:
            context.trigger_options[name] = dict(values, type=type_name)
            tables.append((label, trigger_type, values))
    context.flows = dict(flows)
    triggers = context.triggers
    # A trigger that names other triggers (a status responder its printer)
    # is built after them, so it is handed them at build time.
    tables.sort(key=lambda t: IReferencingTriggerType.providedBy(t[1]))
    for label, trigger_type, values in tables:
        try:
            trigger = trigger_type.from_config(values, context)
        except ConfigIssue as e:
            errors.add(label, e)
            continue
        except Exception as e:  # a plugin's bug: an error line, not a traceback
            errors.add(label, f"cannot be built: {type(e).__name__}: {e}")
            continue
        why = not_provided(ITrigger, trigger)
        if why is not None:
            errors.add(label, f"type {trigger_type.type_name!r} built a {type(trigger).__name__}, "
                              f"which does not provide ITrigger: {why}")
            continue
        triggers[values["name"]] = trigger
    # Back in the config's order (status pages and logs list them so).
    built = dict(triggers)
    triggers.clear()
    triggers.update((name, built[name]) for name in context.trigger_options if name in built)
    return triggers


def _check_listeners(context: BuildContext, admin: dict[str, dict[str, Any]], errors: _Errors) -> None:
    """No two listeners on one address."""
    listeners = [(f"[[trigger]] {name!r}", opts.get("listen")) for name, opts in context.trigger_options.items()]
    listeners += [(f"[admin.{section}]", opts.get("listen")) for section, opts in admin.items()]
    for label, mine, earlier, other in clashes(listeners):
        errors.add(label, f"{mine.describe()} clashes with {earlier}, which listens on {other.describe()}; "
                          "give each listener its own address (tcp:0 takes any free port)", "listen")


def _load_admin(value: Any, errors: _Errors) -> dict[str, dict[str, Any]]:
    if not isinstance(value, dict):
        errors.add("[admin]", "must be a table with [admin.manhole] and/or [admin.http]")
        return {}
    admin: dict[str, dict[str, Any]] = {}
    for section, table in value.items():
        where = f"[admin.{section}]"
        if section not in ADMIN_SECTIONS:
            errors.add("[admin]", f"unknown section (expected one of: {', '.join(ADMIN_SECTIONS)})", section)
            continue
        if not isinstance(table, dict):
            errors.add(where, "must be a table")
            continue
        try:
            schema = load_dotted(ADMIN_SECTIONS[section])
        except ConfigIssue as e:
            errors.add(where, f"not available in this build: {e}")
            continue
        values, issues = schema.validate(table)
        if not issues and section == "http":
            from rawsvc.console.auth import check_options

            issues = check_options(values)  # who may log in, and not without it off loopback
        errors.extend(where, issues)
        if not issues:
            admin[section] = values
    return admin
