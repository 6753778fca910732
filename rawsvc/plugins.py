"""
Finding action and trigger types: built-ins, the entry-point groups
C{rawsvc.actions} / C{rawsvc.triggers}, and dotted C{module:Name} paths.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from typing import Any

from zope.interface.exceptions import BrokenImplementation, BrokenMethodImplementation, DoesNotImplement, Invalid
from zope.interface.exceptions import MultipleInvalid  # type: ignore[attr-defined]  # not in its stubs
from zope.interface.verify import verifyObject

from rawsvc.errors import ConfigIssue
from rawsvc.interfaces import IActionType, ITriggerType

#: Built-in action types, loaded on first use.
BUILTIN_ACTIONS = {
    "log": "rawsvc.actions.log:LogAction",
    "file": "rawsvc.actions.file:FileAction",
    "parse": "rawsvc.actions.parse:ParseAction",
    "set": "rawsvc.actions.log:SetAction",
    "reply": "rawsvc.actions.reply:ReplyAction",
    "send_tcp": "rawsvc.actions.send_tcp:SendTcpAction",
    "http": "rawsvc.actions.http:HttpAction",
}

#: Built-in trigger types.
BUILTIN_TRIGGERS = {
    "tcp": "rawsvc.triggers.tcp:TcpTrigger",
    "printer": "rawsvc.triggers.printer:PrinterTrigger",
    "appsocket-status": "rawsvc.triggers.appsocket:AppSocketStatusTrigger",
    "tcp-client": "rawsvc.triggers.tcp_client:TcpClientTrigger",
    "http": "rawsvc.triggers.http_trigger:HttpTrigger",
    "folder": "rawsvc.triggers.folder:FolderTrigger",
    "serial": "rawsvc.triggers.serial_trigger:SerialTrigger",
}

ACTION_GROUP = "rawsvc.actions"
TRIGGER_GROUP = "rawsvc.triggers"


def load_dotted(path: str) -> Any:
    """Import C{module:Name} (or C{module.Name})."""
    if ":" in path:
        module, _, attr = path.partition(":")
    else:
        module, _, attr = path.rpartition(".")
    if not module or not attr:
        raise ConfigIssue(f"{path!r} is not a 'module:Name' path")
    try:
        obj: Any = importlib.import_module(module)
    except ImportError as e:
        raise ConfigIssue(f"cannot import module {module!r}: {e}") from None
    except Exception as e:  # a plugin's own import-time bug
        raise ConfigIssue(f"importing {module!r} failed: {type(e).__name__}: {e}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise ConfigIssue(f"module {module!r} has no {attr!r}") from None
    return obj


def _find(name: str, builtins: dict[str, str], group: str, iface, what: str) -> Any:
    if name in builtins:
        found = load_dotted(builtins[name])
    else:
        eps = [ep for ep in entry_points(group=group) if ep.name == name]
        if eps:
            try:
                found = eps[0].load()
            except Exception as e:
                raise ConfigIssue(
                    f"{what} type {name!r} from entry point {eps[0].value!r} failed to load: "
                    f"{type(e).__name__}: {e}"
                ) from None
        elif ":" in name:
            found = load_dotted(name)
        else:
            known = sorted(set(builtins) | {ep.name for ep in entry_points(group=group)})
            raise ConfigIssue(
                f"unknown {what} type {name!r}; known types: {', '.join(known)}, "
                "or a plugin as 'module:Name'"
            )
    why = not_provided(iface, found)
    if why is not None:
        raise ConfigIssue(f"{what} type {name!r} does not provide {iface.__name__}: {why}")
    return found


def not_provided(iface: Any, obj: Any) -> str | None:
    """
    Why C{obj} does not provide C{iface}, in one line for people (C{None}
    when it does): the missing attributes and methods by name, a method
    whose signature is wrong, a missing C{@implementer}.
    """
    try:
        verifyObject(iface, obj)
    except MultipleInvalid as e:
        problems = list(e.exceptions)
    except Invalid as e:
        problems = [e]
    else:
        return None
    missing: list[str] = []
    lines: list[str] = []
    for p in problems:
        if isinstance(p, DoesNotImplement):
            lines.append(f"it is not declared to (add @implementer({iface.__name__}))")
        elif isinstance(p, BrokenMethodImplementation):
            method = getattr(p.method, "__name__", str(p.method))
            lines.append(f"its method {method}() {p.mess}")
        elif isinstance(p, BrokenImplementation):
            missing.append(getattr(p.name, "__name__", str(p.name)).rsplit(".", 1)[-1])
        else:
            lines.append(str(p))
    if missing:
        lines.insert(0, "it lacks " + ", ".join(missing))
    return "; ".join(lines)


def find_action_type(name: str) -> Any:
    return _find(name, BUILTIN_ACTIONS, ACTION_GROUP, IActionType, "action")


def find_trigger_type(name: str) -> Any:
    return _find(name, BUILTIN_TRIGGERS, TRIGGER_GROUP, ITriggerType, "trigger")
