"""
The SQL of cluster mode (C{shared/CLUSTER.md} 4.4-4.6): plain functions
of a psycopg connection (autocommit off or on: each opens its own
transaction block with C{conn.transaction()}, a savepoint when one is
open), run on a thread of the node's (never the reactor's).

Times that decide who may do what are the database's (C{clock_timestamp()},
not C{now()}: a renewal that waited on the reaper's row lock must see the
time after the wait).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from typing import Any

import attrs
from psycopg.types.json import Jsonb

#: Delivery states, and the ones still open.
QUEUED, SENDING, DONE, FAILED = "queued", "sending", "done", "failed"
STATES = (QUEUED, SENDING, DONE, FAILED)

WORK_CHANNEL, DONE_CHANNEL, REQUESTS_CHANNEL = "rawsvc_work", "rawsvc_done", "rawsvc_requests"


@attrs.frozen
class Claimed:
    """A delivery this incarnation claimed: what its fenced finish must name."""

    id: int
    job_id: str
    action_index: int
    destination: str
    ticket: int
    fence: int
    claims: int
    settings: dict[str, Any]
    data: bytes | None


# Nodes --------------------------------------------------------------------------

def register(conn: Any, node_name: str, ttl: float) -> uuid.UUID:
    """A new incarnation of C{node_name}, alive, its lease C{ttl} seconds from now (DB clock)."""
    me = uuid.uuid4()
    with conn.transaction():
        conn.execute("INSERT INTO rawsvc_nodes (incarnation, node_name, lease_until)"
                     " VALUES (%s, %s, clock_timestamp() + make_interval(secs => %s))", (me, node_name, ttl))
    return me


def renew(conn: Any, me: uuid.UUID, ttl: float) -> bool:
    """Extend a lease that is still valid now; an expired (or reaped, or left) lease is never revived."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE rawsvc_nodes SET lease_until = clock_timestamp() + make_interval(secs => %s)"
            " WHERE incarnation = %s AND state = 'alive' AND lease_until > clock_timestamp() RETURNING lease_until",
            (ttl, me)).fetchone()
    return row is not None


def leave(conn: Any, me: uuid.UUID) -> None:
    """A clean stop: C{left}; its deliveries still sending go back to their place at once."""
    with conn.transaction():
        conn.execute("UPDATE rawsvc_nodes SET state = 'left' WHERE incarnation = %s", (me,))
    requeue_stale(conn)


def reap(conn: Any) -> list[uuid.UUID]:
    """Mark every alive incarnation whose lease ran out dead; the ones marked."""
    with conn.transaction():
        rows = conn.execute("UPDATE rawsvc_nodes SET state = 'dead' WHERE state = 'alive'"
                            " AND lease_until < clock_timestamp() RETURNING incarnation").fetchall()
    return [r[0] for r in rows]


def requeue_stale(conn: Any) -> list[tuple[int, str, str]]:
    """
    Deliveries C{sending} by dead or departed incarnations back to C{queued},
    in place (same id, same ticket: again the head of their printer's line);
    the jobs of such incarnations lose their owner (free to adopt).  The
    requeued C{(id, job_id, destination)}; a C{rawsvc_work} NOTIFY per destination.
    """
    with conn.transaction():
        rows = conn.execute(
            "WITH stale AS (SELECT d.id FROM rawsvc_deliveries d JOIN rawsvc_nodes n ON n.incarnation = d.holder"
            "  WHERE d.state = 'sending' AND n.state IN ('dead', 'left') FOR UPDATE OF d SKIP LOCKED)"
            " UPDATE rawsvc_deliveries d SET state = 'queued', holder = NULL FROM stale WHERE d.id = stale.id"
            " RETURNING d.id, d.job_id, d.destination").fetchall()
        # SKIP LOCKED: a job row locked meanwhile (its node's own batch, a take-back) is left for the
        # next round; waiting for it while holding others could deadlock with that transaction.
        conn.execute(
            "WITH orphans AS (SELECT seq FROM rawsvc_jobs WHERE owner IN"
            "  (SELECT incarnation FROM rawsvc_nodes WHERE state IN ('dead', 'left'))"
            "  AND state IN ('queued', 'running', 'waiting') ORDER BY seq FOR UPDATE SKIP LOCKED)"
            " UPDATE rawsvc_jobs j SET owner = NULL FROM orphans WHERE j.seq = orphans.seq")
        for dest in sorted({r[2] for r in rows}):
            conn.execute("SELECT pg_notify(%s, %s)", (WORK_CHANNEL, dest))
    return [(int(r[0]), r[1], r[2]) for r in rows]


def adopt(conn: Any, me: uuid.UUID, limit: int = 100) -> list[str]:
    """Take up to C{limit} unfinished jobs without an owner, in C{seq} order; their ids."""
    with conn.transaction():
        rows = conn.execute(
            "WITH free AS (SELECT seq FROM rawsvc_jobs WHERE owner IS NULL AND state IN ('queued', 'running', 'waiting')"
            "  ORDER BY seq LIMIT %s FOR UPDATE SKIP LOCKED)"
            " UPDATE rawsvc_jobs j SET owner = %s FROM free WHERE j.seq = free.seq"
            " AND EXISTS (SELECT 1 FROM rawsvc_nodes WHERE incarnation = %s AND state = 'alive')"
            " RETURNING j.seq, j.job_id", (limit, me, me)).fetchall()
    return [job_id for _, job_id in sorted(rows)]


def take_back(conn: Any, old: uuid.UUID, new: uuid.UUID, job_ids: list[str]) -> int:
    """
    Jobs whose flows still run here, owned by our fenced incarnation (or by
    nobody yet): ours again.  One job a transaction: a transaction that
    waits for a row while it holds none is in no deadlock (another node's
    reaper may be freeing the same jobs, the spool's batch writing them).
    """
    taken = 0
    for job_id in sorted(set(job_ids)):
        with conn.transaction():
            cur = conn.execute("UPDATE rawsvc_jobs SET owner = %s WHERE job_id = %s AND (owner = %s OR owner IS NULL)"
                               " AND state IN ('queued', 'running', 'waiting')", (new, job_id, old))
            taken += int(cur.rowcount or 0)
    return taken


# Deliveries ---------------------------------------------------------------------

def enqueue(conn: Any, job_id: str, action_index: int, destination: str, settings: dict[str, Any],
            data: bytes | None, notify: bool = True, run: int = 0) -> int:
    """
    The delivery of C{job_id}'s action C{action_index} (of its run C{run},
    bumped by each operator retry; an C{on_error} action's index is
    negative) to C{destination},
    with the next ticket of that printer (taken under the destination row's
    lock, held to COMMIT: ticket order is commit order); the delivery's id.
    Idempotent: a resumed flow that enqueues again finds the row it made.
    """
    with conn.transaction():
        row = conn.execute("SELECT id FROM rawsvc_deliveries WHERE job_id = %s AND run = %s AND action_index = %s",
                           (job_id, run, action_index)).fetchone()
        if row is not None:
            return int(row[0])
        row = conn.execute(
            "WITH dst AS (INSERT INTO rawsvc_destinations AS t (destination) VALUES (%s)"
            "  ON CONFLICT (destination) DO UPDATE SET next_ticket = t.next_ticket + 1"
            "  RETURNING t.next_ticket AS ticket)"
            " INSERT INTO rawsvc_deliveries (job_id, run, action_index, destination, ticket, settings, data)"
            " SELECT %s, %s, %s, %s, dst.ticket, %s, %s FROM dst"
            " ON CONFLICT (job_id, run, action_index) DO NOTHING RETURNING id",
            (destination, job_id, run, action_index, destination, Jsonb(settings), data)).fetchone()
        if row is None:  # made meanwhile by another enqueue of the same action
            row = conn.execute("SELECT id FROM rawsvc_deliveries WHERE job_id = %s AND run = %s AND action_index = %s",
                               (job_id, run, action_index)).fetchone()
        if notify:
            conn.execute("SELECT pg_notify(%s, %s)", (WORK_CHANNEL, destination))
    return int(row[0])


_CLAIM = """
WITH me AS (
  SELECT incarnation FROM rawsvc_nodes
   WHERE incarnation = %(me)s AND state = 'alive'
     AND lease_until > clock_timestamp() + make_interval(secs => %(margin)s)
     FOR SHARE
), heads AS (
  SELECT h.id FROM rawsvc_destinations dst
  CROSS JOIN LATERAL (SELECT o.id, o.state FROM rawsvc_deliveries o
                       WHERE o.destination = dst.destination AND o.state IN ('queued', 'sending')
                       ORDER BY o.ticket LIMIT 1) h
   WHERE h.state = 'queued'
), candidates AS (
  SELECT d.id FROM rawsvc_deliveries d
   WHERE d.id IN (SELECT id FROM heads)
     {recheck}
     AND EXISTS (SELECT 1 FROM me)
   ORDER BY d.id LIMIT %(free)s
     FOR UPDATE OF d SKIP LOCKED
)
UPDATE rawsvc_deliveries d
   SET state = 'sending', holder = %(me)s, fence = d.fence + 1, claims = d.claims + 1,
       claimed_at = clock_timestamp()
  FROM candidates c WHERE d.id = c.id
RETURNING d.id, d.job_id, d.action_index, d.destination, d.ticket, d.fence, d.claims, d.settings, d.data
"""
#: The locked-row re-check: under READ COMMITTED, C{FOR UPDATE} re-evaluates only the predicates
#: on the locked row's newest version, not the CTE's snapshot (see CLUSTER.md 4.5).
RECHECK = "AND d.state = 'queued'"


def claim(conn: Any, me: uuid.UUID, margin: float, free: int, recheck: bool = True,
          stats: dict[str, int] | None = None) -> list[Claimed]:
    """
    Claim up to C{free} printer heads (the lowest open ticket of each
    printer, when it is queued, not sending), as long as this incarnation's
    lease is alive with C{margin} seconds to spare.  A C{UniqueViolation}
    (another claim of the same printer committed between) claims nothing:
    try again later (counted in C{stats["unique_hits"]} when given).
    C{recheck=False} is the known-wrong variant, for the claim-race test to
    show that it has teeth.
    """
    import psycopg

    if free <= 0:
        return []
    sql = _CLAIM.format(recheck=RECHECK if recheck else "")
    try:
        with conn.transaction():
            rows = conn.execute(sql, {"me": me, "margin": margin, "free": int(free)}).fetchall()
    except psycopg.errors.UniqueViolation:
        if stats is not None:
            stats["unique_hits"] = stats.get("unique_hits", 0) + 1
        return []
    return [Claimed(int(r[0]), r[1], int(r[2]), r[3], int(r[4]), int(r[5]), int(r[6]), dict(r[7] or {}),
                    None if r[8] is None else bytes(r[8])) for r in rows]


def finish(conn: Any, claimed: Claimed, me: uuid.UUID, ok: bool, result: dict[str, Any]) -> bool:
    """
    The fenced finish: store the result only while this claim still holds
    (same holder, same fence, still sending); False when the claim was lost
    (the caller logs a possible repeat, nothing is stored).
    """
    with conn.transaction():
        row = conn.execute(
            "UPDATE rawsvc_deliveries SET state = %s, result = %s, holder = NULL, finished_at = clock_timestamp()"
            " WHERE id = %s AND holder = %s AND fence = %s AND state = 'sending' RETURNING id",
            (DONE if ok else FAILED, Jsonb(result), claimed.id, me, claimed.fence)).fetchone()
        if row is not None:
            conn.execute("SELECT pg_notify(%s, %s)", (WORK_CHANNEL, claimed.destination))
            conn.execute("SELECT pg_notify(%s, %s)", (DONE_CHANNEL, str(claimed.id)))
    return row is not None


def release(conn: Any, claimed: Claimed, me: uuid.UUID) -> bool:
    """Give a claim back unfinished (a clean stop cut it off): queued again, in place."""
    with conn.transaction():
        row = conn.execute(
            "UPDATE rawsvc_deliveries SET state = 'queued', holder = NULL"
            " WHERE id = %s AND holder = %s AND fence = %s AND state = 'sending' RETURNING id",
            (claimed.id, me, claimed.fence)).fetchone()
        if row is not None:
            conn.execute("SELECT pg_notify(%s, %s)", (WORK_CHANNEL, claimed.destination))
    return row is not None


def requeue_orphans(conn: Any, me: uuid.UUID, keep: Iterable[int]) -> list[tuple[int, str, str]]:
    """
    Deliveries C{sending} held by this incarnation (C{me}) but not among
    C{keep} (the ones its worker runs) back to C{queued}, in place: a claim
    whose COMMIT went through while its reply was lost with the connection.
    The requeued C{(id, job_id, destination)}; a C{rawsvc_work} NOTIFY per destination.
    """
    with conn.transaction():
        rows = conn.execute(
            "UPDATE rawsvc_deliveries SET state = 'queued', holder = NULL"
            " WHERE holder = %s AND state = 'sending' AND NOT (id = ANY(%s)) RETURNING id, job_id, destination",
            (me, list(keep))).fetchall()
        for dest in sorted({r[2] for r in rows}):
            conn.execute("SELECT pg_notify(%s, %s)", (WORK_CHANNEL, dest))
    return [(int(r[0]), r[1], r[2]) for r in rows]


def cancel_queued(conn: Any, job_id: str, result: dict[str, Any]) -> list[int]:
    """
    An operator's cancel: C{job_id}'s deliveries still C{queued} end
    C{failed} with C{result} (fenced by the state: one a node claimed
    meanwhile is not touched); their ids.  A C{rawsvc_done} NOTIFY each
    (the waiting flow), a C{rawsvc_work} per destination (the next head).
    """
    with conn.transaction():
        rows = conn.execute(
            "UPDATE rawsvc_deliveries SET state = 'failed', result = %s, finished_at = clock_timestamp()"
            " WHERE job_id = %s AND state = 'queued' RETURNING id, destination",
            (Jsonb(result), job_id)).fetchall()
        for r in rows:
            conn.execute("SELECT pg_notify(%s, %s)", (DONE_CHANNEL, str(r[0])))
        for dest in sorted({r[1] for r in rows}):
            conn.execute("SELECT pg_notify(%s, %s)", (WORK_CHANNEL, dest))
    return [int(r[0]) for r in rows]


def ask_cancel_sending(conn: Any, job_id: str) -> int:
    """
    An operator's cancel of C{job_id}'s delivery that a node is sending:
    flag it for its holder (a C{rawsvc_requests} NOTIFY wakes the nodes);
    how many were flagged.
    """
    with conn.transaction():
        cur = conn.execute("UPDATE rawsvc_deliveries SET cancel_asked = true WHERE job_id = %s AND state = 'sending'",
                           (job_id,))
        flagged = int(cur.rowcount or 0)
        if flagged:
            conn.execute("SELECT pg_notify(%s, %s)", (REQUESTS_CHANNEL, ""))
    return flagged


def cancels_asked(conn: Any, me: uuid.UUID) -> list[str]:
    """The job ids of the deliveries this incarnation sends whose cancel an operator asked."""
    rows = conn.execute("SELECT job_id FROM rawsvc_deliveries WHERE holder = %s AND state = 'sending' AND cancel_asked",
                        (me,)).fetchall()
    return [r[0] for r in rows]


def results(conn: Any, ids: Iterable[int]) -> dict[int, tuple[str, dict[str, Any]]]:
    """The finished ones of deliveries C{ids}: id -> (state, result)."""
    rows = conn.execute("SELECT id, state, result FROM rawsvc_deliveries WHERE id = ANY(%s)"
                        " AND state IN ('done', 'failed')", (list(ids),)).fetchall()
    return {int(r[0]): (r[1], dict(r[2] or {})) for r in rows}


def payload_pieces(conn: Any, job_id: str) -> Iterable[bytes]:
    """The stored payload of C{job_id}, one row at a time (inline, or its chunks in order)."""
    row = conn.execute("SELECT chunks, payload FROM rawsvc_jobs WHERE job_id = %s", (job_id,)).fetchone()
    if row is None:
        raise LookupError(f"job {job_id} is not in the spool")
    chunks, inline = row
    if not chunks:
        yield bytes(inline or b"")
        return
    for n in range(chunks):
        piece = conn.execute("SELECT data FROM rawsvc_payload_chunks WHERE job_id = %s AND n = %s",
                             (job_id, n)).fetchone()
        if piece is None:
            raise LookupError(f"the payload of job {job_id} is incomplete in the database (chunk {n})")
        yield bytes(piece[0])


def counts(conn: Any) -> dict[str, int]:
    """Deliveries by state, cluster-wide (every state present, 0 when none)."""
    found = dict(conn.execute("SELECT state, count(*) FROM rawsvc_deliveries GROUP BY state").fetchall())
    return {state: int(found.get(state, 0)) for state in STATES}
