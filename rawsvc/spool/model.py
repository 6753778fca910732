"""
What every job store engine shares (see L{rawsvc.interfaces.IJobStore}):
the record of a stored job (L{StoredJob}), the error a store fails with
(L{SpoolError}), and which states are unfinished and which finished.
Nothing here knows SQLite.
"""

from __future__ import annotations

import json
from typing import Any

import attrs

#: States of a job that is still to run (it comes back after a restart).
#: C{waiting}: its delivery waits to retry; C{held}: its printer is not ready (pre-flight).
UNFINISHED = ("queued", "running", "waiting", "held")
#: States of a job that ended; only these are ever purged.
FINISHED = ("done", "failed", "cancelled")

#: Variables a store may leave out of L{StoredJob.variables}: the record's
#: own fields give them back (L{StoredJob.all_variables}).
DERIVED = ("job_id", "trigger", "peer_host", "peer_port", "size")


class SpoolError(Exception):
    """The spool cannot store jobs (unwritable, full, not open); the message is for people."""


def _field(row: Any, keys: set[str], name: str, default: Any = None) -> Any:
    return row[name] if name in keys else default


@attrs.define
class StoredJob:
    """
    One job as the store gives it back.  The first fields are what the job
    was given when it was added; then how far it got.  C{payload} holds the
    bytes unless C{payload_path} names a file of the store's that does
    (records of L{rawsvc.interfaces.IJobStore.query} carry no payload).
    """

    seq: int  # arrival order: larger is later
    job_id: str
    trigger: str
    flow: str
    state: str
    peer_host: str
    peer_port: int
    encoding: str
    size: int
    received_at: float
    action_index: int  # the first action not completed
    attempt: int  # how often its flow started
    variables: dict[str, str]
    payload: bytes | None
    payload_path: str | None
    queued_at: float | None = None
    started_at: float | None = None
    updated_at: float | None = None
    finished_at: float | None = None
    last_error: str | None = None
    destination: str | None = None
    bytes_delivered: int = 0
    delivery_attempt: int = 0
    next_try: float | None = None
    run: int = 0  # how often an operator ran it again (retry, reprint): part of its deliveries' key

    @classmethod
    def from_row(cls, row: Any) -> "StoredJob":
        """
        From a row of the C{jobs} columns (an C{sqlite3.Row}, a dict ...),
        C{variables} as JSON text; columns the row lacks take their defaults.
        """
        keys = set(row.keys())
        return cls(
            row["seq"], row["job_id"], row["trigger"], row["flow"], row["state"], row["peer_host"],
            row["peer_port"], row["encoding"], row["size"], row["received_at"], row["action_index"],
            row["attempt"], json.loads(row["variables"] or "{}"), _field(row, keys, "payload"),
            _field(row, keys, "payload_path"), _field(row, keys, "queued_at"), _field(row, keys, "started_at"),
            _field(row, keys, "updated_at"), _field(row, keys, "finished_at"), _field(row, keys, "last_error"),
            _field(row, keys, "destination"), _field(row, keys, "bytes_delivered", 0) or 0,
            _field(row, keys, "delivery_attempt", 0) or 0, _field(row, keys, "next_try"),
        )

    def all_variables(self) -> dict[str, str]:
        """The variables with those L{DERIVED} from the fields (what the job had)."""
        fields = (self.job_id, self.trigger, self.peer_host, str(self.peer_port), str(self.size))
        return {**dict(zip(DERIVED, fields)), **self.variables}

    def payload_bytes(self) -> bytes:
        """The payload's bytes: read from C{payload_path}, or C{payload}."""
        if self.payload_path is not None:
            with open(self.payload_path, "rb") as f:
                return f.read()
        return self.payload or b""
