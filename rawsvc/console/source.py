"""
Where the console reads jobs: the SQLite spool (read-only connections on a
thread, never the reactor; the store's writer is not touched), the
PostgreSQL spool (every node's jobs, on connections of the console's own:
L{PgJobs}), or, for a service without a spool, the sink's in-memory
history (L{IJobHistory}).
Both answer the same questions with the same JSON-able records.
"""

from __future__ import annotations

import sqlite3
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.threads import deferToThreadPool

from rawsvc.console.zpl import detect_language
from rawsvc.interfaces import IJobHistory
from rawsvc.job import Payload
from rawsvc.spool import browse
from rawsvc.spool.schema import db_path


class NoSuchJob(KeyError):
    """The console knows no job of that id; C{str()} is for people."""

    def __str__(self) -> str:
        return f"no job {self.args[0]}"


@dataclass(frozen=True)
class JobQuery:
    """The filters of a job list page (empty: any)."""

    states: tuple[str, ...] = ()
    triggers: tuple[str, ...] = ()
    destinations: tuple[str, ...] = ()
    since: float | None = None
    until: float | None = None
    text: str | None = None
    cursor: int | None = None
    limit: int = 50


@dataclass
class Page:
    """One page of jobs, newest first, and the cursor of the next page (None: the last page)."""

    jobs: list[dict[str, Any]] = field(default_factory=list)
    next_cursor: int | None = None


#: Payload bytes read to tell a job's language.
HEAD_BYTES = 65536


def _row_record(row: Any) -> dict[str, Any]:
    return {
        "job_id": row["job_id"],
        "seq": row["seq"],
        "trigger": row["trigger"],
        "flow": row["flow"],
        "state": row["state"],
        "peer": f"{row['peer_host']}:{row['peer_port']}" if row["peer_host"] else "",
        "received_at": row["received_at"],
        "finished_at": row["finished_at"],
        "size": row["size"],
        "error": row["last_error"],
        "destination": row["destination"],
    }


class SpoolJobs:
    """The jobs of the spool in C{state_dir}, read on C{threadpool}."""

    has_payloads = True

    def __init__(self, state_dir: str, reactor: Any, threadpool: Any,
                 flush: Callable[[], Deferred[Any]] | None = None) -> None:
        self.state_dir = state_dir
        self.reactor = reactor
        self.threadpool = threadpool
        #: The service's store's flush: the spool acknowledges a job at its journal's fdatasync and
        #: writes the index (what this reads) just behind, so every read waits for the writes before it.
        self.flush = flush

    def _run(self, f: Any, *args: Any) -> Deferred[Any]:
        if self.flush is None:
            return deferToThreadPool(self.reactor, self.threadpool, self._with_conn, f, *args)
        d = self.flush()
        d.addCallback(lambda _: deferToThreadPool(self.reactor, self.threadpool, self._with_conn, f, *args))
        return d

    def _with_conn(self, f: Any, *args: Any) -> Any:
        # A read-only connection of the console's own (WAL: it never blocks
        # the service's writer, nor the writer it), opened per request.
        path = db_path(self.state_dir)
        try:
            conn = sqlite3.connect(f"file:{urllib.parse.quote(path)}?mode=ro", uri=True, isolation_level=None,
                                   timeout=10)
        except sqlite3.Error:
            conn = sqlite3.connect(":memory:")  # no spool yet: nothing in it
        conn.row_factory = sqlite3.Row
        try:
            return f(conn, *args)
        except sqlite3.OperationalError as e:
            if "no such table" not in str(e):
                raise
            if isinstance(args[0], JobQuery):  # the spool is being created: no jobs yet
                return Page()
            raise NoSuchJob(args[0]) from None
        finally:
            conn.close()

    def page(self, q: JobQuery) -> Deferred[Page]:
        """The page of jobs C{q} asks for."""
        return self._run(self._page, q)

    def _page(self, conn: sqlite3.Connection, q: JobQuery) -> Page:
        rows = browse.page_jobs(conn, states=q.states, triggers=q.triggers, destinations=q.destinations,
                                since=q.since, until=q.until, text=q.text, before=q.cursor, limit=q.limit)
        page = Page([_row_record(r) for r in rows[: q.limit]])
        if len(rows) > q.limit:
            page.next_cursor = rows[q.limit - 1]["seq"]
        return page

    def _row(self, conn: sqlite3.Connection, job_id: str) -> sqlite3.Row:
        row = conn.execute(f"SELECT {', '.join(browse.COLUMNS)} FROM jobs WHERE job_id = ?", (job_id,)).fetchone()
        if row is None:
            raise NoSuchJob(job_id)
        return row

    def detail(self, job_id: str) -> Deferred[dict[str, Any]]:
        """Everything recorded of one job (no payload): fails with L{NoSuchJob}."""
        return self._run(self._detail, job_id)

    def _detail(self, conn: sqlite3.Connection, job_id: str) -> dict[str, Any]:
        row = self._row(conn, job_id)
        head = browse.payload_head(conn, self.state_dir, row, HEAD_BYTES)
        return _detail_record(row, browse.job_record(row)["variables"], head)

    def payload(self, job_id: str, limit: int | None = None) -> Deferred[bytes]:
        """The payload of one job (its first C{limit} bytes when given)."""
        return self._run(self._payload, job_id, limit)

    def _payload(self, conn: sqlite3.Connection, job_id: str, limit: int | None) -> bytes:
        row = self._row(conn, job_id)
        if limit is None:
            return b"".join(browse.payload_chunks(conn, self.state_dir, row))
        return browse.payload_head(conn, self.state_dir, row, limit)

    def payload_into(self, job_id: str, payload: Payload) -> Deferred[Payload]:
        """Copy the payload of one job into C{payload} (closed after), a chunk at a time, on the thread."""
        return self._run(self._payload_into, job_id, payload)

    def _payload_into(self, conn: sqlite3.Connection, job_id: str, payload: Payload) -> Payload:
        return _copy_into(browse.payload_chunks(conn, self.state_dir, self._row(conn, job_id)), payload)


def _detail_record(row: Any, variables: dict[str, Any], head: bytes) -> dict[str, Any]:
    """A job's page: its record, variables, language, delivery and timeline."""
    record = _row_record(row)
    record.update(
        variables=variables,
        language=variables.get("pjl_language", "").lower() or detect_language(head),
        payload_size=row["size"],
        attempt=row["attempt"],
        delivery={
            "destination": row["destination"],
            "bytes_delivered": row["bytes_delivered"],
            "attempt": row["delivery_attempt"],
            "last_error": row["last_error"],
            "next_try": row["next_try"],
        },
        timeline=_timeline(row),
    )
    return record


def _timeline(row: Any) -> list[dict[str, Any]]:
    """What the spool recorded of a job, in time order."""
    events: list[dict[str, Any]] = [{"at": row["received_at"], "event": "received", "detail": f"{row['size']} bytes"}]
    if row["started_at"]:
        events.append({"at": row["started_at"], "event": "flow started", "detail": f"run {row['attempt']}"})
    if row["destination"]:
        detail = f"to {row['destination']}: {row['bytes_delivered']} bytes, attempt {row['delivery_attempt']}"
        events.append({"at": row["updated_at"], "event": "delivery", "detail": detail})
    if row["state"] == "waiting" and row["next_try"]:
        events.append({"at": row["next_try"], "event": "next try", "detail": row["last_error"] or ""})
    if row["finished_at"]:
        events.append({"at": row["finished_at"], "event": row["state"], "detail": row["last_error"] or ""})
    return sorted(events, key=lambda e: e["at"])


class PgJobs:
    """The jobs of the PostgreSQL spool, every node's (L{rawsvc.spool.pg_reader.PgReader})."""

    has_payloads = True

    def __init__(self, reader: Any) -> None:
        self.reader = reader

    def page(self, q: JobQuery) -> Deferred[Page]:
        return self.reader.run(self._page, q)

    @staticmethod
    def _page(conn: Any, q: JobQuery) -> Page:
        from rawsvc.spool import pg_browse

        rows = pg_browse.page_jobs(conn, states=q.states, triggers=q.triggers, destinations=q.destinations,
                                   since=q.since, until=q.until, text=q.text, before=q.cursor, limit=q.limit)
        page = Page([_row_record(r) for r in rows[: q.limit]])
        if len(rows) > q.limit:
            page.next_cursor = rows[q.limit - 1]["seq"]
        return page

    @staticmethod
    def _row(conn: Any, job_id: str) -> dict[str, Any]:
        from rawsvc.spool import pg_browse

        row = pg_browse.get_job(conn, job_id)
        if row is None:
            raise NoSuchJob(job_id)
        return row

    def detail(self, job_id: str) -> Deferred[dict[str, Any]]:
        return self.reader.run(self._detail, job_id)

    def _detail(self, conn: Any, job_id: str) -> dict[str, Any]:
        from rawsvc.spool import pg_browse

        row = self._row(conn, job_id)
        return _detail_record(row, pg_browse.full_variables(row), pg_browse.payload_head(conn, job_id, HEAD_BYTES))

    def payload(self, job_id: str, limit: int | None = None) -> Deferred[bytes]:
        return self.reader.run(self._payload, job_id, limit)

    def _payload(self, conn: Any, job_id: str, limit: int | None) -> bytes:
        from rawsvc.spool import pg_browse

        self._row(conn, job_id)
        if limit is None:
            return b"".join(pg_browse.payload_chunks(conn, job_id))
        return pg_browse.payload_head(conn, job_id, limit)

    def payload_into(self, job_id: str, payload: Payload) -> Deferred[Payload]:
        """Copy the payload of one job into C{payload} (closed after), a chunk at a time, on the reader's thread."""
        return self.reader.run(self._payload_into, job_id, payload)

    def _payload_into(self, conn: Any, job_id: str, payload: Payload) -> Payload:
        from rawsvc.spool import pg_browse

        self._row(conn, job_id)
        return _copy_into(pg_browse.payload_chunks(conn, job_id), payload)


def _copy_into(chunks: Any, payload: Payload) -> Payload:
    """Write C{chunks} into C{payload} and close it (it spills to its file past its threshold); discard it on error."""
    try:
        for chunk in chunks:
            payload.write(chunk)
        payload.close()
    except BaseException:
        payload.discard()
        raise
    return payload


class MemoryJobs:
    """A service without a spool: the sink's recent jobs (no payloads kept)."""

    has_payloads = False

    def __init__(self, sink: Any, history: int = 1000) -> None:
        self.sink = sink
        self.history = history

    def _jobs(self) -> list[Any]:
        if not IJobHistory.providedBy(self.sink):
            return []
        return sorted(self.sink.recent(self.history), key=lambda j: -j.seq)

    @staticmethod
    def _record(job: Any) -> dict[str, Any]:
        s = job.summary()
        return {"job_id": s["job_id"], "seq": job.seq, "trigger": s["trigger"], "flow": None, "state": s["state"],
                "peer": s["peer"], "received_at": s["received_at"], "finished_at": s["finished_at"],
                "size": s["size"], "error": s["error"], "destination": None}

    def page(self, q: JobQuery) -> Deferred[Page]:
        out: list[dict[str, Any]] = []
        for job in self._jobs():
            r = self._record(job)
            if q.cursor is not None and r["seq"] >= q.cursor:
                continue
            if (q.states and r["state"] not in q.states) or (q.triggers and r["trigger"] not in q.triggers) \
                    or q.destinations or (q.since is not None and r["received_at"] < q.since) \
                    or (q.until is not None and r["received_at"] >= q.until) \
                    or (q.text and q.text not in r["job_id"]
                        and not any(q.text in str(v) for v in job.variables.snapshot().values())):
                continue
            out.append(r)
            if len(out) > q.limit:
                break
        page = Page(out[: q.limit])
        if len(out) > q.limit:
            page.next_cursor = out[q.limit - 1]["seq"]
        return succeed(page)

    def detail(self, job_id: str) -> Deferred[dict[str, Any]]:
        for job in self._jobs():
            if job.job_id == job_id:
                r = self._record(job)
                r.update(variables=dict(job.variables.snapshot()), language=None, payload_size=r["size"],
                         delivery={}, timeline=[{"at": r["received_at"], "event": "received",
                                                 "detail": f"{r['size']} bytes"}])
                return succeed(r)
        return Deferred.fromCoroutine(_raise(NoSuchJob(job_id)))

    def payload(self, job_id: str, limit: int | None = None) -> Deferred[bytes]:
        return Deferred.fromCoroutine(_raise(NoSuchJob(job_id)))


async def _raise(e: Exception) -> Any:
    raise e
