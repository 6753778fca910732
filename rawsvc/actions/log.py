"""Actions C{log} (a templated log line) and C{set} (set variables)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from twisted.logger import Logger, LogLevel
from zope.interface import implementer, provider

from rawsvc import options as o
from rawsvc.errors import ConfigIssue
from rawsvc.interfaces import IAction, IActionType
from rawsvc.template import Template

if TYPE_CHECKING:
    from rawsvc.context import BuildContext

log = Logger(namespace="rawsvc.action.log")

_LEVELS = {"debug": LogLevel.debug, "info": LogLevel.info, "warn": LogLevel.warn, "error": LogLevel.error}


@provider(IActionType)
@implementer(IAction)
class LogAction:
    """Write a templated message to the service log."""

    type_name = "log"
    options = o.Schema(
        o.Option("message", str, "job ${job_id} from ${peer_host}: ${size} bytes", o.template,
                 doc="the line to log (template)"),
        o.Option("level", str, "info", o.one_of(*_LEVELS), doc="`debug`, `info`, `warn` or `error`"),
    )

    def __init__(self, message: Template, level: str = "info") -> None:
        self.message = message
        self.level = _LEVELS[level]

    @classmethod
    def from_config(cls, options: dict[str, Any], context: BuildContext) -> "LogAction":
        return cls(options["message"], options["level"])

    def run(self, job) -> None:
        text = self.message.render_text(job.variables)
        log.emit(self.level, "{message}", message=text, job_id=job.job_id, trigger=job.trigger)


def _assignments(value: dict) -> dict[str, Template]:
    out = {}
    for name, text in value.items():
        o.variable_name(name)
        if not isinstance(text, str):
            raise ConfigIssue(f"value of {name!r} must be a string template")
        out[name] = Template(text)
    return out


@provider(IActionType)
@implementer(IAction)
class SetAction:
    """Set variables from templates: C{{ type = "set", vars = { a = "${b}-x" } }}."""

    type_name = "set"
    options = o.Schema(o.Option("vars", dict, check=_assignments,
                                 doc="`{ name = \"template\", ... }`: each variable set to its rendered template"))

    def __init__(self, assignments: dict[str, Template]) -> None:
        self.assignments = assignments

    @classmethod
    def from_config(cls, options: dict[str, Any], context: BuildContext) -> "SetAction":
        return cls(options["vars"])

    def run(self, job) -> None:
        rendered = {k: t.render_text(job.variables) for k, t in self.assignments.items()}
        job.variables.update(rendered)
