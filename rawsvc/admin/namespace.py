"""
What an administrator sees and does: shared by the SSH manhole's REPL
namespace and the HTTP status pages.  With a PostgreSQL spool the jobs
are the cluster's (L{rawsvc.spool.pg_control}): C{recent()} lists every
node's, C{retry} and C{cancel} reach the node that runs the job.

Every answer is plain JSON-able data; L{Report} only adds a readable
C{repr} for the REPL.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger

from rawsvc.interfaces import IJobControl, IJobHistory, ISimulatedPrinter
from rawsvc.spool import pg_control
from rawsvc.spool.pg_control import cluster_of, job_control

if TYPE_CHECKING:
    from rawsvc.interfaces import ITrigger
    from rawsvc.service import RawService

log = Logger(namespace="rawsvc.admin")


class Report(dict):
    """A JSON-able dict that prints as indented JSON in the REPL."""

    def __repr__(self) -> str:
        return json.dumps(self, indent=2, default=str)


class ReportList(list):
    def __repr__(self) -> str:
        return json.dumps(self, indent=2, default=str)


def destinations(service: RawService) -> dict[str, Any]:
    """The outbound pool's per-destination status, or C{{}} when there is none."""
    pool = service.destinations
    if pool is None:
        return {}
    try:
        return dict(pool.status())
    except Exception:
        log.failure("destination pool status() failed")
        return {}


def trigger_status(trigger: ITrigger) -> dict[str, Any]:
    """One trigger: its own C{status()}, type, listening flag and counters."""
    try:
        entry = dict(trigger.status())
    except Exception:
        log.failure("status() of trigger {name} failed", name=trigger.name)
        entry = {"state": "status unavailable"}
    entry.setdefault("type", trigger.type_name)
    entry["listening"] = bool(trigger.listening)
    entry["counters"] = trigger.counters.as_dict()
    return entry


def status(service: RawService) -> Report:
    """
    Each trigger by name with its counters, each printer's state (triggers
    whose status has a C{state}), each destination's queue.
    """
    triggers = {name: trigger_status(t) for name, t in service.triggers.items()}
    printers = {name: t["state"] for name, t in triggers.items() if "state" in t}
    return Report(triggers=triggers, printers=printers, destinations=destinations(service))


def health(service: RawService) -> tuple[bool, dict[str, Any]]:
    """
    (every listener up?, per listener C{{"up", "type", "state"}}).  A
    trigger is up while it listens and is not paused.
    """
    listeners: dict[str, Any] = {}
    for name, trigger in service.triggers.items():
        try:
            st = trigger.status()
        except Exception:
            st = {}
        up = bool(trigger.listening) and not st.get("paused", False)
        entry = {"up": up, "type": trigger.type_name}
        if "state" in st:
            entry["state"] = st["state"]
        listeners[name] = entry
    return all(v["up"] for v in listeners.values()), listeners


def connections(service: RawService) -> ReportList:
    """Open connections per trigger, from each trigger's C{connection_list()}."""
    out = ReportList()
    for name, trigger in service.triggers.items():
        try:
            listed = trigger.connection_list()
        except Exception:
            log.failure("connection_list() of trigger {name} failed", name=name)
            out.append({"trigger": name, "open": trigger.counters.connections_open})
            continue
        out.extend(dict(p, trigger=name) for p in listed)
    return out


def _trigger(service: RawService, name: str) -> ITrigger:
    try:
        return service.triggers[name]
    except KeyError:
        known = ", ".join(sorted(service.triggers)) or "none"
        raise KeyError(f"no trigger named {name!r}; known: {known}") from None


def pause(service: RawService, name: str) -> str:
    """Stop trigger C{name} accepting (a printer then reports paused)."""
    _trigger(service, name).pause()
    log.info("trigger {name} paused by an administrator", name=name)
    return f"paused {name}"


def resume(service: RawService, name: str) -> Deferred:
    """
    Let trigger C{name} accept again: fires with C{"resumed NAME"} once it
    listens, or fails saying why it cannot (its port was taken meanwhile).
    """
    d = maybeDeferred(_trigger(service, name).resume)
    log.info("trigger {name} resumed by an administrator", name=name)
    return d.addCallback(lambda _: f"resumed {name}")


def _printer(service: Any, name: str) -> Any:
    trigger = _trigger(service, name)
    if not ISimulatedPrinter.providedBy(trigger):
        raise KeyError(f"trigger {name!r} is not a virtual printer (type {trigger.type_name})")
    return trigger


def printer(service: Any, name: str) -> Report:
    """A virtual printer's state now: its snapshot, conditions and held jobs included."""
    import attrs

    snap = attrs.asdict(_printer(service, name).snapshot())
    snap["conditions"] = list(snap["conditions"])
    return Report(snap)


def condition(service: Any, name: str, condition: str, on: bool = True) -> Report:
    """
    Put virtual printer C{name} in a simulated C{condition} (C{paper_out},
    C{head_open}, C{ribbon_out}, C{paused}, C{offline}), or take it out
    (C{on=False}; C{condition="all"} clears every one).
    """
    trigger = _printer(service, name)
    if condition == "all" and not on:
        trigger.clear_conditions()
    else:
        trigger.set_condition(condition, on)
    log.info("printer {name}: condition {condition} {how} by an administrator", name=name,
             condition=condition, how="set" if on else "cleared")
    return printer(service, name)


class RetryUnsupported(Exception):
    """The job sink keeps no jobs it could run again."""


def retry(service: RawService, job_id: str) -> Any:
    """Run a finished or failed job again, when the job sink supports it."""
    control = job_control(service)
    if not IJobControl.providedBy(control):
        raise RetryUnsupported(
            f"retry is not supported by this job sink ({type(service.sink).__name__} keeps "
            "no payloads); it needs the durable spool"
        )
    log.info("job {job_id} retried by an administrator", job_id=job_id)
    return control.retry(job_id)


def cancel(service: RawService, job_id: str) -> Any:
    """Cancel a job (at once when its delivery waits to retry), when the job sink supports it."""
    control = job_control(service)
    if not IJobControl.providedBy(control):
        raise RetryUnsupported(
            f"cancel is not supported by this job sink ({type(service.sink).__name__} keeps "
            "no jobs); it needs the durable spool"
        )
    log.info("job {job_id} cancelled by an administrator", job_id=job_id)
    return control.cancel(job_id)


def recent_jobs(service: RawService, limit: int = 50) -> list[dict[str, Any]]:
    if not IJobHistory.providedBy(service.sink):
        return []
    return [job.summary() for job in service.sink.recent(limit)]


def recent(service: RawService, limit: int = 20) -> Any:
    """
    The manhole's C{recent()}: the newest jobs, of every node with a
    PostgreSQL spool (a Deferred the manhole prints when it fires), else
    this service's.
    """
    cluster = cluster_of(service)
    if cluster is None:
        return ReportList(recent_jobs(service, limit))
    return pg_control.recent(cluster, limit).addCallback(ReportList)


def repl_namespace(service: RawService) -> dict[str, Any]:
    """The manhole's namespace: the live service and the helpers."""
    return {
        "service": service,
        "triggers": service.triggers,
        "flows": service.flows,
        "jobs": service.sink,
        "status": lambda: status(service),
        "connections": lambda: connections(service),
        "pause": lambda name: pause(service, name),
        "resume": lambda name: resume(service, name),
        "retry": lambda job_id: retry(service, job_id),
        "cancel": lambda job_id: cancel(service, job_id),
        "recent": lambda limit=20: recent(service, limit),
        "printer": lambda name: printer(service, name),
        "condition": lambda name, cond, on=True: condition(service, name, cond, on),
        "clear": lambda name, cond="all": condition(service, name, cond, False),
    }
