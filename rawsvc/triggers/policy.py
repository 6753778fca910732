"""
The base of a trigger's connection policy: every hook of
L{rawsvc.interfaces.IConnectionPolicy}, doing nothing.

Subclass it and override only what your trigger adds; the printer's
(L{rawsvc.triggers.printer.PrinterPolicy}) holds clients in a queue,
answers status queries and keeps the printer's state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from zope.interface import implementer

from rawsvc.interfaces import IConnectionPolicy

if TYPE_CHECKING:
    from rawsvc.job import Job
    from rawsvc.triggers.connection import FramedConnection


@implementer(IConnectionPolicy)
class ConnectionPolicy:
    """Serve every client, answer no query, note nothing."""

    def __init__(self, conn: "FramedConnection") -> None:
        self.conn = conn

    def accepted(self) -> None:
        """The client was accepted: it is served as it is."""

    def query(self, value: Any) -> bytes | None:
        """No answers: a C{Query} is ignored."""
        return None

    def job_began(self, meta: Mapping[str, str]) -> None:
        """A job began to arrive."""

    def job_abandoned(self) -> None:
        """The job that began never reached the sink."""

    def job_submitted(self, job: "Job") -> None:
        """C{job} goes to the sink now."""

    def job_finished(self, job: "Job") -> None:
        """C{job}'s flow ended."""

    def done(self) -> None:
        """The connection has closed and its jobs have finished."""
