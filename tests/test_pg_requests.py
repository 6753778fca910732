"""
The cluster's retry/cancel requests in PostgreSQL: a request is claimed by
exactly one node (many claimers at once), only by the node owning its job
while that node is alive, taken over once the claimer is gone, and never
again once answered.  The reading side (L{rawsvc.spool.pg_browse}) sends
the wake-up with the request, and a node's listener calls its poll on the
reactor.
"""

from __future__ import annotations

import threading

import pytest
import pytest_twisted

from rawsvc.spool import pg_browse, pg_ops
from rawsvc.spool.pg_listen import RequestWakeups
from rawsvc.spool.pg_schema import migrate

pytestmark = pytest.mark.slow


@pytest.fixture
def db(pg_server):
    import psycopg

    uri = pg_server.new_database("req")
    with psycopg.connect(uri, autocommit=True) as conn:
        migrate(conn)
    return uri


def connect(uri):
    import psycopg

    return psycopg.connect(uri, autocommit=True)


def add_job(conn, job_id: str, owner) -> None:
    conn.execute("INSERT INTO rawsvc_jobs (job_id, trigger, flow, state, owner, peer_host, peer_port, encoding, size,"
                 " received_at) VALUES (%s, 't', 'f', 'waiting', %s, '127.0.0.1', 1, 'utf-8', 0, 0)", (job_id, owner))


def request(uri: str, job_id: str, action: str = "retry") -> int:
    with pg_browse.connect(uri) as conn:
        return pg_browse.add_request(conn, job_id, action)


def test_many_claimers_at_once_claim_each_request_exactly_once(db):
    with connect(db) as conn:
        nodes = [pg_ops.register(conn, f"node{i}") for i in range(4)]
    ids = [request(db, f"ghost-{i}") for i in range(200)]  # no live owner: every node may take them
    barrier, taken, errors = threading.Barrier(8), [], []

    def claimer(me) -> None:
        try:
            with connect(db) as conn:
                barrier.wait()
                for _ in range(20):
                    with conn.transaction():
                        taken.extend(rid for rid, _, _ in pg_ops.take_requests(conn, me))
        except Exception as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=claimer, args=(nodes[i % 4],)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    # Each node takes its own claims again until it answers them: count claims per request across nodes.
    with connect(db) as conn:
        claims = dict(conn.execute("SELECT id, result FROM rawsvc_requests").fetchall())
    assert sorted(set(taken)) == ids
    assert all(claims[rid].startswith("taken by ") for rid in ids)
    by_request: dict[int, set] = {}
    for me in nodes:
        with connect(db) as conn:
            for rid, _, _ in pg_ops.take_requests(conn, me):
                by_request.setdefault(rid, set()).add(me)
    assert sorted(by_request) == ids and all(len(owners) == 1 for owners in by_request.values())


def test_only_the_live_owner_takes_a_request_for_its_job_and_a_dead_claimer_is_taken_over(db):
    with connect(db) as conn:
        a, b = pg_ops.register(conn, "a"), pg_ops.register(conn, "b")
        add_job(conn, "of-a", a)
    mine = request(db, "of-a", "cancel")
    ghost = request(db, "ghost")
    with connect(db) as conn:
        assert pg_ops.take_requests(conn, b) == [(ghost, "ghost", "retry")]  # of-a is a's while a lives
        assert pg_ops.take_requests(conn, a) == [(mine, "of-a", "cancel")]  # the ghost is b's claim now
        assert pg_ops.take_requests(conn, b) == [(ghost, "ghost", "retry")]  # b's own claim, until answered
        pg_ops.answer(conn, ghost, True, "done", 1.0)
        assert pg_ops.take_requests(conn, b) == []
        assert pg_browse.request_answer(pg_browse.connect(db), ghost) == (True, "done")

        conn.execute("UPDATE rawsvc_nodes SET state = 'dead' WHERE incarnation = %s", (a,))
        assert pg_ops.take_requests(conn, b) == [(mine, "of-a", "cancel")]  # a is gone: its job and claim are free
        pg_ops.answer(conn, mine, False, "no", 2.0)
        assert pg_ops.take_requests(conn, a) == pg_ops.take_requests(conn, b) == []


def test_a_request_wakes_the_listening_nodes(db):
    with connect(db) as listener:
        listener.execute(f"LISTEN {pg_browse.CHANNEL}")
        rid = request(db, "ghost", "cancel")
        [note] = list(listener.notifies(timeout=5, stop_after=1))
    assert (note.channel, note.payload) == (pg_browse.CHANNEL, str(rid))


@pytest_twisted.inlineCallbacks
def test_the_service_is_woken_by_a_request_on_the_reactor_and_stops_listening(db):
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.threads import deferToThread

    woken: Deferred = Deferred()
    calls = []

    def wake():
        calls.append(threading.current_thread() is threading.main_thread())
        if not woken.called:
            woken.callback(None)

    wakeups = RequestWakeups(db, reactor, wake)
    wakeups.start()
    try:
        assert (yield deferToThread(wakeups.listening.wait, 20))
        yield deferToThread(request, db, "ghost", "cancel")
        yield woken.addTimeout(20, reactor)
        assert calls == [True]  # on the reactor's thread
    finally:
        wakeups.stop()
    thread = wakeups._thread
    yield deferToThread(thread.join, 10)
    assert not thread.is_alive() and not wakeups.listening.is_set()
