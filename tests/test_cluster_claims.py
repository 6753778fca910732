"""
Cluster mode's database guards (L{rawsvc.cluster.sql}) on a real
PostgreSQL, hammered from threads, each thread a connection and an
incarnation of its own, as nodes would be:

- the claim race: 12 claimers, 3,000 deliveries over 10 printers; no lost
  claim, never two in flight for one printer, strict ticket order by the
  database's clock; and the same harness without the locked-row re-check
  finds violations (the test has teeth);
- renewal against reap at the expiry instant, many times: never both.
"""

from __future__ import annotations

import threading
import time
import uuid

import pytest
import pytest_twisted


psycopg = pytest.importorskip("psycopg")

from rawsvc.cluster import sql  # noqa: E402
from rawsvc.spool.pg_schema import migrate  # noqa: E402

CLAIMERS = 12
DELIVERIES = 3000
PRINTERS = 10


def _connect(uri):
    return psycopg.connect(uri, autocommit=True)


def _prepare(uri, deliveries=DELIVERIES, printers=PRINTERS):
    """A migrated database holding C{deliveries} queued deliveries spread over C{printers}."""
    with _connect(uri) as conn:
        migrate(conn)
        with conn.transaction():
            for i in range(deliveries):
                sql.enqueue(conn, f"job{i:05d}", 0, f"printer{i % printers}:9100", {}, b"x", notify=False)


def _race(uri, recheck, claimers=CLAIMERS, deliveries=DELIVERIES):
    """
    Run the claimers until every delivery is done (or a time limit); what
    they saw: lost claims (a finish that found its claim gone), unique-index
    hits, claims of a printer that another claimer held at that moment, and
    deliveries finished.
    """
    in_flight: dict[str, str] = {}
    guard = threading.Lock()
    seen = {"lost": 0, "unique_hits": 0, "double": 0, "finished": 0, "errors": 0}
    stop = threading.Event()
    deadline = time.monotonic() + 25

    def claimer(n):
        name = f"claimer{n}"
        stats: dict[str, int] = {}
        try:
            with _connect(uri) as conn:
                me = sql.register(conn, name, 600)
                while not stop.is_set() and time.monotonic() < deadline:
                    claims = sql.claim(conn, me, 0.0, 2, recheck=recheck, stats=stats)
                    if not claims:
                        left = conn.execute("SELECT count(*) FROM rawsvc_deliveries"
                                            " WHERE state IN ('queued', 'sending')").fetchone()[0]
                        if left == 0:
                            break
                        time.sleep(0.001)
                        continue
                    mine = []
                    with guard:
                        for c in claims:
                            if c.destination in in_flight:
                                seen["double"] += 1
                            else:
                                in_flight[c.destination] = name
                                mine.append(c.destination)
                    time.sleep(0.0005)  # "sending"
                    for c in claims:
                        with guard:  # leaves the printer before its finish commits: no false alarm
                            if c.destination in mine:
                                in_flight.pop(c.destination, None)
                        ok = sql.finish(conn, c, me, True, {"outcome": "delivered"})
                        with guard:
                            if ok:
                                seen["finished"] += 1
                            else:
                                seen["lost"] += 1
        except Exception:
            with guard:
                seen["errors"] += 1
            raise
        finally:
            with guard:
                seen["unique_hits"] += stats.get("unique_hits", 0)

    threads = [threading.Thread(target=claimer, args=(n,)) for n in range(claimers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    stop.set()
    return seen


def _order_violations(uri):
    """Per printer, deliveries claimed before the previous ticket finished (by the database's clock)."""
    with _connect(uri) as conn:
        return conn.execute(
            "SELECT count(*) FROM (SELECT claimed_at, lag(finished_at) OVER w AS before"
            " FROM rawsvc_deliveries WINDOW w AS (PARTITION BY destination ORDER BY ticket)) t"
            " WHERE before IS NOT NULL AND claimed_at < before").fetchone()[0]


def _states(uri):
    with _connect(uri) as conn:
        return sql.counts(conn), conn.execute("SELECT max(claims) FROM rawsvc_deliveries").fetchone()[0]


def test_claim_race_loses_nothing_and_keeps_printer_order(pg_server):
    uri = pg_server.new_database("claims")
    _prepare(uri)
    seen = _race(uri, recheck=True)
    counts, most_claims = _states(uri)
    assert seen["errors"] == 0
    assert counts == {"queued": 0, "sending": 0, "done": DELIVERIES, "failed": 0}
    assert seen["finished"] == DELIVERIES
    assert seen["lost"] == 0
    assert seen["double"] == 0
    assert most_claims == 1  # nothing was claimed twice
    assert _order_violations(uri) == 0


def test_claim_race_without_the_locked_row_recheck_is_caught(pg_server):
    """The same harness, the known-wrong claim: the checks above find it out."""
    uri = pg_server.new_database("teeth")
    _prepare(uri)
    seen = _race(uri, recheck=False)
    counts, most_claims = _states(uri)
    order = _order_violations(uri)
    caught = seen["lost"] + seen["double"] + order + (most_claims > 1)
    print(f"without the re-check: {seen}, order violations {order}, most claims of one delivery {most_claims}")
    assert caught > 0, seen


def test_tickets_follow_commit_order_per_printer(pg_server):
    """Two writers enqueueing for one printer: tickets are 1..n without gaps, in commit order."""
    uri = pg_server.new_database("tickets")
    with _connect(uri) as conn:
        migrate(conn)

    def writer(n):
        with _connect(uri) as conn:
            for i in range(100):
                with conn.transaction():
                    sql.enqueue(conn, f"w{n}-{i}", 0, "p:9100", {}, b"", notify=False)
                    sql.enqueue(conn, f"w{n}-{i}", 0, "p:9100", {}, b"", notify=False)  # idempotent

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    with _connect(uri) as conn:
        tickets = [r[0] for r in conn.execute("SELECT ticket FROM rawsvc_deliveries ORDER BY xmin::text::bigint")]
        assert sorted(tickets) == list(range(1, 401))
        assert tickets == sorted(tickets)  # commit (transaction id) order is ticket order


def test_renewal_and_reap_never_both_win(pg_server):
    """
    Renew and reap one incarnation around its expiry instant, 500 times
    (the lease set to expire 3 ms ahead, both sides let go together, each
    after a random pause of 0-6 ms): never both renewed and reaped.
    """
    import random

    uri = pg_server.new_database("lease")
    with _connect(uri) as conn:
        migrate(conn)
    renewer, reaper = _connect(uri), _connect(uri)
    both = renewed = reaped = 0
    rounds = 500
    go = threading.Barrier(3)
    out: dict[str, bool] = {}
    me_box: list[uuid.UUID] = []
    done = threading.Event()

    def side(name, fn):
        try:
            while True:
                go.wait()
                if done.is_set():
                    return
                time.sleep(random.uniform(0, 0.006))
                out[name] = fn(me_box[0])
                go.wait()
        except threading.BrokenBarrierError:
            return

    threads = [threading.Thread(target=side, args=("renewed", lambda me: sql.renew(renewer, me, 5))),
               threading.Thread(target=side, args=("reaped", lambda me: me in sql.reap(reaper)))]
    for t in threads:
        t.start()
    try:
        for _ in range(rounds):
            me = sql.register(reaper, "racer", 600)
            reaper.execute("UPDATE rawsvc_nodes SET lease_until = clock_timestamp() + interval '3 ms'"
                           " WHERE incarnation = %s", (me,))
            me_box[:] = [me]
            out.clear()
            go.wait()  # let go
            go.wait()  # both answered
            if not out["reaped"] and not out["renewed"]:  # renewed too late: expired, not yet reaped
                out["reaped"] = me in sql.reap(reaper)
            both += out["renewed"] and out["reaped"]
            renewed += out["renewed"]
            reaped += out["reaped"]
            state = reaper.execute("SELECT state FROM rawsvc_nodes WHERE incarnation = %s", (me,)).fetchone()[0]
            assert state == ("alive" if out["renewed"] else "dead")
            reaper.execute("UPDATE rawsvc_nodes SET state = 'left' WHERE incarnation = %s", (me,))
    finally:
        done.set()
        go.abort()
        for t in threads:
            t.join(5)
        renewer.close()
        reaper.close()
    assert both == 0
    assert renewed + reaped == rounds
    assert renewed > 0 and reaped > 0, (renewed, reaped)  # the race was run on both sides of the instant


def test_dead_incarnations_deliveries_are_requeued_in_place(pg_server):
    uri = pg_server.new_database("requeue")
    _prepare(uri, deliveries=4, printers=2)
    with _connect(uri) as conn:
        dead = sql.register(conn, "dead", 600)
        alive = sql.register(conn, "alive", 600)
        claims = sql.claim(conn, dead, 0.0, 10)
        assert sorted(c.ticket for c in claims) == [1, 1]
        assert sql.claim(conn, alive, 0.0, 10) == []  # the heads are in flight
        conn.execute("UPDATE rawsvc_nodes SET lease_until = clock_timestamp() - interval '1 s'"
                     " WHERE incarnation = %s", (dead,))
        assert sql.reap(conn) == [dead]
        requeued = sql.requeue_stale(conn)
        assert sorted(r[0] for r in requeued) == sorted(c.id for c in claims)
        again = sql.claim(conn, alive, 0.0, 10)
        assert sorted((c.id, c.ticket, c.claims) for c in again) == sorted((c.id, 1, 2) for c in claims)
        assert not any(sql.finish(conn, c, dead, True, {}) for c in claims)  # the dead node's finish is fenced
        assert all(sql.finish(conn, c, alive, True, {}) for c in again)
        assert sql.renew(conn, dead, 10) is False  # a reaped lease is never revived


def test_two_writers_group_commits_of_enqueues_never_deadlock(pg_server):
    """
    Two spool writers (L{PgWorker} batches, as two nodes' group commits),
    each batch enqueueing for 8 printers in a shuffled order: the worker
    runs them sorted by destination, so no batch dies of a deadlock (unsorted, this harness saw
    122 of 640 enqueues fail with "deadlock detected").
    """
    import random

    from rawsvc.spool.pg_worker import WORK, Op, PgWorker

    uri = pg_server.new_database("deadlock")
    with _connect(uri) as conn:
        migrate(conn)
    failures: list[object] = []

    def writer(n):
        worker = PgWorker(None, uri, lambda: None, lambda conn: None)
        worker.conn = _connect(uri)
        try:
            for b in range(40):
                dests = [f"p{i}:9100" for i in range(8)]
                random.shuffle(dests)
                ops = [Op(WORK, (lambda d, j: lambda conn: sql.enqueue(conn, j, 0, d, {}, b"", notify=False))(
                    dest, f"w{n}-{b}-{dest}"), lambda ok, value: None, dest) for dest in dests]
                for op, ok, value in worker._transact(ops):
                    if not ok:
                        failures.append(value)
        finally:
            worker.conn.close()

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert failures == []
    with _connect(uri) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT (destination, ticket)) FROM rawsvc_deliveries"
                            ).fetchone() == (640, 640)


def test_claims_held_by_a_live_incarnation_that_does_not_run_them_are_requeued(pg_server):
    """A claim whose COMMIT reply was lost with the connection: requeued in place, the others kept."""
    uri = pg_server.new_database("orphans")
    _prepare(uri, deliveries=4, printers=2)
    with _connect(uri) as conn:
        me = sql.register(conn, "me", 600)
        other = sql.register(conn, "other", 600)
        mine = sql.claim(conn, me, 0.0, 1)
        theirs = sql.claim(conn, other, 0.0, 1)
        assert len(mine) == 1 and len(theirs) == 1
        assert sql.requeue_orphans(conn, me, [mine[0].id]) == []  # it runs it: kept
        requeued = sql.requeue_orphans(conn, me, [])  # the worker never heard of it
        assert [r[0] for r in requeued] == [mine[0].id]
        state = conn.execute("SELECT state, holder FROM rawsvc_deliveries WHERE id = %s", (mine[0].id,)).fetchone()
        assert state == ("queued", None)
        assert conn.execute("SELECT state FROM rawsvc_deliveries WHERE id = %s",
                            (theirs[0].id,)).fetchone()[0] == "sending"  # another node's claim is not touched
        again = sql.claim(conn, me, 0.0, 10)
        assert [(c.id, c.ticket, c.claims) for c in again] == [(mine[0].id, mine[0].ticket, 2)]


def test_an_interrupted_job_stays_unfinished_at_its_action(pg_server):
    """C{interrupted} (e.g. a fenced delivery) is no state of the table: the job stays open there."""
    from store_contract_base import make_job

    from rawsvc.spool import pg_ops

    uri = pg_server.new_database("interrupted")
    with _connect(uri) as conn:
        migrate(conn)
        me = sql.register(conn, "me", 600)
        job = make_job(b"label")
        with conn.transaction():
            pg_ops.add(conn, me, job, "f", {}, 1.0)
        with conn.transaction():  # refused by rawsvc_jobs_state_check before the fix
            pg_ops.finish(conn, job.job_id, "interrupted", "this node lost its cluster lease", 2, {"x": "1"}, None, 2.0)
        row = conn.execute("SELECT state, action_index, last_error, finished_at FROM rawsvc_jobs WHERE job_id = %s",
                           (job.job_id,)).fetchone()
        assert row == ("running", 2, "this node lost its cluster lease", None)


def test_cancel_ends_a_delivery_queued_in_the_database_and_tells_its_waiting_flow(pg_server):
    """An operator's cancel reaches a delivery queued behind a busy printer; one being sent is not touched."""
    from twisted.internet.defer import succeed

    from rawsvc.client.address import Destination
    from rawsvc.client.outcomes import CANCELLED
    from rawsvc.client.protocol import SendSettings
    from rawsvc.client.retry import RetryPolicy
    from rawsvc.cluster.pool import ClusterDeliveries

    uri = pg_server.new_database("cancel")
    with _connect(uri) as conn:
        migrate(conn)
        me = sql.register(conn, "me", 600)
        at_once = lambda fn, *_: succeed(fn(conn))  # noqa: E731  (the test's thread is the work thread)
        deliveries = ClusterDeliveries(at_once, at_once)
        dest = Destination.parse("127.0.0.1:9100")
        first = deliveries.deliver(dest, b"first", SendSettings(), "job-1", None, RetryPolicy(), 1)
        second = deliveries.deliver(dest, b"second", SendSettings(), "job-2", None, RetryPolicy(), 1)
        [sending] = sql.claim(conn, me, 0.0, 10)  # the first is at the printer; the second waits behind it
        assert sending.job_id == "job-1"
        assert not second.called
        assert sql.cancel_queued(conn, "job-1", {}) == []  # sending: not touched
        got = []
        assert deliveries.cancel("job-2").addCallback(got.append) and got == [True]
        results = []
        second.addCallback(results.append)
        assert results and results[0].outcome == CANCELLED
        assert conn.execute("SELECT state FROM rawsvc_deliveries WHERE job_id = 'job-2'").fetchone()[0] == "failed"
        assert sql.finish(conn, sending, me, True, {})
        assert sql.claim(conn, me, 0.0, 10) == []  # nothing left for the printer: job-2 is not sent


def test_a_job_run_again_gets_new_deliveries_while_a_resumed_run_finds_its_own(pg_server):
    """The key is (job, run, action): a retry (run + 1) or an on_error action (index < 0) sends again."""
    uri = pg_server.new_database("runs")
    with _connect(uri) as conn:
        migrate(conn)
        me = sql.register(conn, "me", 600)
        first = sql.enqueue(conn, "job-1", 0, "p:9100", {}, b"x")
        [claimed] = sql.claim(conn, me, 0.0, 10)
        assert sql.finish(conn, claimed, me, True, {})
        assert sql.enqueue(conn, "job-1", 0, "p:9100", {}, b"x") == first  # resumed / adopted: no second print
        again = sql.enqueue(conn, "job-1", 0, "p:9100", {}, b"x", run=1)  # an operator's retry
        on_error = sql.enqueue(conn, "job-1", -1, "alert:9100", {}, b"x", run=1)
        assert len({first, again, on_error}) == 3
        assert sql.enqueue(conn, "job-1", 0, "p:9100", {}, b"x", run=1) == again
        assert sorted(c.id for c in sql.claim(conn, me, 0.0, 10)) == sorted([again, on_error])


def test_schema_v2_rows_migrate_to_run_0(pg_server):
    from rawsvc.spool.pg_schema import MIGRATIONS, VERSION

    uri = pg_server.new_database("v2to3")
    with _connect(uri) as conn:
        with conn.transaction():
            conn.execute("CREATE TABLE rawsvc_schema (version integer NOT NULL)")
            conn.execute("INSERT INTO rawsvc_schema (version) VALUES (2)")
            for step in MIGRATIONS[:2]:
                conn.execute(step)
            conn.execute("INSERT INTO rawsvc_destinations (destination) VALUES ('p:9100')")
            conn.execute("INSERT INTO rawsvc_deliveries (job_id, action_index, destination, ticket, state)"
                         " VALUES ('old', 0, 'p:9100', 1, 'done')")
        assert migrate(conn) == (2, VERSION) and VERSION == 3
        assert conn.execute("SELECT run FROM rawsvc_deliveries WHERE job_id = 'old'").fetchone() == (0,)
        old = conn.execute("SELECT id FROM rawsvc_deliveries WHERE job_id = 'old'").fetchone()[0]
        assert sql.enqueue(conn, "old", 0, "p:9100", {}, b"x") == old


def test_a_cancel_of_a_delivery_being_sent_is_flagged_for_its_holder(pg_server):
    uri = pg_server.new_database("cancel_sending")
    with _connect(uri) as conn:
        migrate(conn)
        holder = sql.register(conn, "holder", 600)
        other = sql.register(conn, "other", 600)
        sql.enqueue(conn, "job-1", 0, "p:9100", {}, b"x")
        [claimed] = sql.claim(conn, holder, 0.0, 10)
        assert sql.cancel_queued(conn, "job-1", {}) == []
        assert sql.cancels_asked(conn, holder) == []
        assert sql.ask_cancel_sending(conn, "job-1") == 1
        assert sql.cancels_asked(conn, holder) == ["job-1"] and sql.cancels_asked(conn, other) == []
        assert sql.finish(conn, claimed, holder, False, {"outcome": "cancelled"})
        assert sql.cancels_asked(conn, holder) == []  # finished: nothing left to cancel


def _two_jobs_of(conn, owner):
    """Two unfinished jobs owned by C{owner}, the first inserted first (a table scan meets it first)."""
    from store_contract_base import make_job

    from rawsvc.spool import pg_ops

    jobs = [make_job(b"first"), make_job(b"second")]
    for job in jobs:
        with conn.transaction():
            pg_ops.add(conn, owner, job, "f", {}, 1.0)
    return [job.job_id for job in jobs]


def _fenced_and_joined(pg_server, name):
    """A new database; a node's fenced incarnation owning two running jobs, and its new one."""
    uri = pg_server.new_database(name)
    with _connect(uri) as conn:
        migrate(conn)
        old = sql.register(conn, "n1", 600)
        new = sql.register(conn, "n1-again", 600)
        return uri, old, new, _two_jobs_of(conn, old)


def _wait_until_blocked(conn, count=1, timeout=10.0):
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT count(*) FROM pg_locks WHERE NOT granted").fetchone()[0] < count:
        assert time.monotonic() < deadline, "nobody waited for the locked row"
        time.sleep(0.01)


def test_taking_back_jobs_never_deadlocks_with_a_batch_writing_them(pg_server):
    """
    A fenced node that joined again takes back its running jobs while its
    spool's batch writes the same rows in another order: before the fix
    (one UPDATE of both rows) the take-back held the first row while it
    waited for the second, which the batch held while it waited for the
    first: "deadlock detected" (CI saw it after a PostgreSQL restart).
    """
    from rawsvc.spool import pg_ops

    uri, old, new, (first, second) = _fenced_and_joined(pg_server, "take_back")
    with _connect(uri) as batch, _connect(uri) as work:
        result: list[object] = []
        taker = threading.Thread(target=lambda: result.append(_catch(sql.take_back, work, old, new, [first, second])))
        with batch.transaction():
            pg_ops.started(batch, second, 1, 2.0)  # the batch holds the second row
            taker.start()
            _wait_until_blocked(batch)  # the take-back waits for it
            pg_ops.started(batch, first, 1, 2.0)  # and the batch then writes the first
        taker.join(30)
        assert result == [2]
        owners = dict(batch.execute("SELECT job_id, owner FROM rawsvc_jobs").fetchall())
        assert owners == {first: new, second: new}


@pytest_twisted.inlineCallbacks
def test_the_node_takes_back_its_jobs_alone_not_in_a_batch_transaction(pg_server):
    """
    The node's work connection batches its operations into one transaction
    (group commit); there, the take-back's one-job transactions would be
    savepoints, and the batch would hold the first job while waiting for
    the second: the deadlock CI saw.  It runs alone (C{solo}), so the
    spool's batch writing both jobs in the other order goes through.
    """
    from psycopg.pq import TransactionStatus

    from twisted.internet import reactor

    from rawsvc.cluster.node import Db
    from rawsvc.spool import pg_ops

    uri, old, new, (first, second) = _fenced_and_joined(pg_server, "take_back_solo")
    db = Db(reactor, uri, "work")
    try:
        batched = yield db.run(lambda conn: conn.info.transaction_status)
        alone = yield db.run(lambda conn: conn.info.transaction_status, solo=True)
        assert (batched, alone) == (TransactionStatus.INTRANS, TransactionStatus.IDLE)
        with _connect(uri) as batch:
            with batch.transaction():
                pg_ops.started(batch, second, 1, 2.0)
                taking = db.run(lambda conn: sql.take_back(conn, old, new, [first, second]), solo=True)
                _wait_until_blocked(batch)
                pg_ops.started(batch, first, 1, 2.0)
            taken = yield taking
            assert taken == 2
            owners = dict(batch.execute("SELECT job_id, owner FROM rawsvc_jobs").fetchall())
            assert owners == {first: new, second: new}
    finally:
        yield db.stop()


def _catch(fn, *args):
    try:
        return fn(*args)
    except Exception as e:  # noqa: BLE001  (the test compares what came back)
        return e


def test_the_reaper_skips_a_job_row_another_transaction_holds_and_frees_it_next_round(pg_server):
    """
    Freeing the jobs of a dead incarnation never waits for a row held by
    another transaction (its node's batch, a take-back): waiting while
    holding the others could deadlock.  The held row is freed next round.
    """
    from rawsvc.spool import pg_ops

    uri = pg_server.new_database("reaper_skips")
    with _connect(uri) as conn:
        migrate(conn)
        dead = sql.register(conn, "dead", 600)
        first, second = _two_jobs_of(conn, dead)
        conn.execute("UPDATE rawsvc_nodes SET lease_until = clock_timestamp() - interval '1 s'"
                     " WHERE incarnation = %s", (dead,))
        assert sql.reap(conn) == [dead]
        with _connect(uri) as batch:
            with batch.transaction():
                pg_ops.started(batch, second, 1, 2.0)
                conn.execute("SET statement_timeout = '5s'")  # waiting would fail the test, not hang it
                sql.requeue_stale(conn)
                owners = dict(conn.execute("SELECT job_id, owner FROM rawsvc_jobs").fetchall())
                assert owners == {first: None, second: dead}
        sql.requeue_stale(conn)
        owners = dict(conn.execute("SELECT job_id, owner FROM rawsvc_jobs").fetchall())
        assert owners == {first: None, second: None}
