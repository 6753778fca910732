"""
The states a job can be in, in one place: L{JobState} and the one table of
allowed transitions, L{TRANSITIONS}, that the flow, the sinks, the store and
the admin side all go by; and the parsing of the comma-separated filters on
states that C{rawsvc jobs} and C{/jobs} share.

A job's life::

    received -> queued -> running -> done
       |          |          |-> waiting -> running (its delivery retries)
       |          |          |-> held -> running (its printer's pre-flight check said "not ready";
       |          |          |           checked again, it runs) (held <-> waiting both ways)
       |          |          |-> failed -> cancelled (an operator's cancel ended it)
       |          |          |         `-> interrupted (it failed as the service stopped: it resumes)
       |          |          `-> interrupted (the service stopped under it; it resumes at the
       |          |                           next start) -> cancelled
       |          `-> failed (its flow crashed before running)
       `-> refused (the sink could not store it; its flow never ran)

A transition outside the table is a bug: under C{RAWSVC_STRICT_STATES=1}
(the test suite sets it) it raises L{InvalidJobTransition}; in production
it is logged as an error and the new state is taken, so that a bug in the
bookkeeping never costs a job.
"""

from __future__ import annotations

import enum
import os
from collections.abc import Iterable, Mapping

from twisted.logger import Logger

log = Logger(namespace="rawsvc.states")


class JobState(enum.StrEnum):
    """What a job is doing; the values are what status pages, the spool and the CLI show."""

    RECEIVED = "received"  # built by a trigger, not yet handed to a flow
    QUEUED = "queued"  # stored (or taken), waiting for its flow to start
    RUNNING = "running"
    WAITING = "waiting"  # its delivery waits to retry (back-off)
    HELD = "held"  # its printer is not ready (pre-flight check); nothing sent, checked again later
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    INTERRUPTED = "interrupted"
    REFUSED = "refused"


S = JobState

#: state -> the states it may go to.  Final states go nowhere: a retried
#: job is a new run, rebuilt from the spool, that starts at C{received}.
TRANSITIONS: Mapping[JobState, frozenset[JobState]] = {
    # RUNNING: a flow run on its own, without a sink (rawsvc.flow.run_job: tests, the CLI).
    S.RECEIVED: frozenset({S.QUEUED, S.REFUSED, S.RUNNING}),
    S.QUEUED: frozenset({S.RUNNING, S.FAILED}),
    S.RUNNING: frozenset({S.WAITING, S.HELD, S.DONE, S.FAILED, S.INTERRUPTED}),
    S.WAITING: frozenset({S.RUNNING, S.HELD, S.DONE, S.FAILED, S.INTERRUPTED}),
    S.HELD: frozenset({S.RUNNING, S.WAITING, S.DONE, S.FAILED, S.INTERRUPTED}),
    # A job that failed while the service stopped is left to resume: INTERRUPTED.
    S.FAILED: frozenset({S.CANCELLED, S.INTERRUPTED}),
    S.INTERRUPTED: frozenset({S.CANCELLED}),
    S.DONE: frozenset(),
    S.CANCELLED: frozenset(),
    S.REFUSED: frozenset(),
}

#: Every state a stored job can be in (filters accept these), in the order of a job's life.
JOB_STATES = tuple(s.value for s in JobState if s is not S.RECEIVED)


def route(old: str, new: str) -> list[JobState]:
    """
    The shortest way from C{old} to C{new} along L{TRANSITIONS} (the states
    after C{old}, ending with C{new}; [] when they are equal).  Test
    doubles use it to end a job the way a real sink would.
    """
    start, goal = JobState(old), JobState(new)
    paths: dict[JobState, list[JobState]] = {start: []}
    frontier = [start]
    while frontier and goal not in paths:
        nxt = []
        for state in frontier:
            for target in sorted(TRANSITIONS[state]):
                if target not in paths:
                    paths[target] = paths[state] + [target]
                    nxt.append(target)
        frontier = nxt
    if goal not in paths:
        raise InvalidJobTransition(f"no way from {start} to {goal} (see rawsvc.states.TRANSITIONS)")
    return paths[goal]


class InvalidJobTransition(RuntimeError):
    """A job was moved between two states the table does not connect: a bug."""


def _strict() -> bool:
    return os.environ.get("RAWSVC_STRICT_STATES", "") not in ("", "0")


#: value -> member, for a state set as a plain string (a dict lookup, not an Enum call).
MEMBERS: Mapping[str, JobState] = {s.value: s for s in JobState}


def transition(job_id: str, old: str, new: str) -> JobState:
    """
    The state C{new} for a job in C{old}, checked against L{TRANSITIONS}.
    Setting the state it is in already is no transition, and allowed.
    (L{rawsvc.job.Job.state} checks the allowed moves inline, on every job,
    and calls this for the rest.)
    """
    target = JobState(new)
    if old == target:
        return target
    if target not in TRANSITIONS[JobState(old)]:
        message = f"job {job_id}: no transition from {old} to {target} (see rawsvc.states.TRANSITIONS)"
        if _strict():
            raise InvalidJobTransition(message)
        log.error("{message}; taken anyway (a bug: please report it)", message=message)
    return target


class FilterError(ValueError):
    """A filter value is not one of the accepted ones; the message says which are."""


def split_list(value: str | None) -> list[str]:
    """C{"a, b,,c"} -> C{["a", "b", "c"]}; None or blank -> C{[]}."""
    if not value:
        return []
    return [item.strip() for item in value.split(",") if item.strip()]


def parse_states(value: str | None) -> list[str]:
    """The states of a C{state} filter, each checked against L{JOB_STATES}."""
    return check_values("state", split_list(value), JOB_STATES)


def check_values(what: str, values: list[str], accepted: Iterable[str]) -> list[str]:
    accepted = tuple(accepted)
    for value in values:
        if value not in accepted:
            raise FilterError(f"unknown {what} {value!r}; use one of: {', '.join(accepted)}")
    return values


def parse_limit(value: str | None, default: int, maximum: int) -> int:
    """A C{limit}: a positive integer up to C{maximum}; C{default} when not given."""
    if value is None or value == "":
        return default
    try:
        limit = int(value)
    except ValueError:
        limit = 0
    if not 1 <= limit <= maximum:
        raise FilterError(f"limit must be a positive whole number from 1 to {maximum}, not {value!r}")
    return limit
