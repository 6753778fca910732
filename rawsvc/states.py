"""
The states a job can be in, in one place, and the parsing of the
comma-separated filters on them that C{rawsvc jobs} and C{/jobs} share.
"""

from __future__ import annotations

from collections.abc import Iterable

#: Every state a job can be in, in the order of a job's life.
JOB_STATES = ("queued", "running", "waiting", "done", "failed", "cancelled", "interrupted", "refused")


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
