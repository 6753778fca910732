"""
The self-fence (L{rawsvc.cluster.lease.Lease} with the
L{rawsvc.cluster.pool.DeliveryWorker}) on a L{MemoryReactorClock}: the
database is a stand-in whose answers the test gives (or withholds, as a
frozen or cut-off database would), the delivery is the real pool's machine
over a L{StringTransport}.
"""

from __future__ import annotations

import uuid

from twisted.internet.defer import Deferred, succeed
from twisted.internet.testing import MemoryReactorClock, StringTransport

from rawsvc.client.address import AllowList
from rawsvc.client.destinations import DestinationPool
from rawsvc.client.outcomes import STOPPED
from rawsvc.cluster import sql
from rawsvc.cluster.lease import Lease
from rawsvc.cluster.pool import DeliveryWorker, encode_settings
from rawsvc.client.protocol import SendSettings
from rawsvc.client.retry import RetryPolicy


class AbortRecorder(StringTransport):
    aborted = 0

    def abortConnection(self):
        self.aborted += 1
        super().abortConnection()

    def loseWriteConnection(self):
        self.half_closed = True


class FrozenDb:
    """Records what is run; answers only when told (C{answer})."""

    def __init__(self):
        self.calls: list[tuple[object, Deferred]] = []

    def run(self, fn):
        d: Deferred = Deferred()
        self.calls.append((fn, d))
        return d

    def pending(self):
        return [(fn, d) for fn, d in self.calls if not d.called]


def _setup(ttl=3.0, margin=1.0, interval=0.5):
    clock = MemoryReactorClock()
    lease_db, work_db = FrozenDb(), FrozenDb()
    lease = Lease(clock, lease_db.run, "n1", ttl, margin, interval, monotonic=clock.seconds)
    pool = DestinationPool(clock, allow=AllowList.parse(["127.0.0.1:9100"]))
    pool.gate = lease.check
    worker = DeliveryWorker(clock, pool, work_db.run, lease, "/nonexistent")
    lease.on_fenced.append(worker.fence)
    me = uuid.uuid4()
    lease.start(me, registered_at=0.0)
    return clock, lease_db, work_db, lease, pool, worker, me


def _claimed(me, payload=b"%!PS job\n" * 100):
    settings = encode_settings(SendSettings(retries=5, retry_delay=0.2, wait_for_eof=True, eof_timeout=60.0), RetryPolicy(0.2, 1.0, retries=5), None)
    return sql.Claimed(1, "job-1", 0, "127.0.0.1:9100", 1, 1, 1, settings, payload)


def _connect(clock):
    """Complete the pending TCP connection with a transport of ours."""
    host, port, factory, _, _ = clock.tcpClients[-1]
    proto = factory.buildProtocol(None)
    transport = AbortRecorder()
    proto.makeConnection(transport)
    return proto, transport


def test_past_the_deadline_connections_are_aborted_and_nothing_is_claimed():
    clock, lease_db, work_db, lease, pool, worker, me = _setup()
    worker._claimed([_claimed(me)], me)
    clock.advance(0)
    assert len(clock.tcpClients) == 1
    proto, transport = _connect(clock)
    assert transport.value().startswith(b"%!PS job")
    # Renewals are sent every 0.5 s but the database never answers: at 1.9 s the lease still holds.
    clock.pump([0.1] * 19)
    assert lease.valid() and not lease.fenced
    assert transport.aborted == 0 and not transport.disconnecting
    assert list(worker.running) == [1]  # connected, waiting for the printer's end of the job
    for fn, d in work_db.pending():
        d.callback([])  # the claim asked after the first one finds nothing more
    assert worker.claim() is not None  # a claim may still be asked
    # At 2.0 s (ttl 3 - margin 1 after the registration sent at 0) the node fences itself.
    clock.pump([0.1] * 2)
    assert lease.fenced and not lease.valid()
    assert transport.aborted == 1
    for fn, d in work_db.pending():
        d.callback([])
    calls = len(work_db.calls)
    worker.wake()
    clock.advance(0)
    assert worker.claim() is None and len(work_db.calls) == calls  # no claim while fenced
    # The aborted connection ends; the delivery is not tried again (no second connection).
    from twisted.internet.error import ConnectionAborted
    from twisted.python.failure import Failure

    proto.connectionLost(Failure(ConnectionAborted()))
    clock.pump([0.1] * 30)
    assert len(clock.tcpClients) == 1
    # Every byte had been handed over (a StringTransport takes all), so the attempt counts as
    # delivered: the finish asked is the fenced one, which the database refuses if the claim is gone.
    # Nothing is released (a release would put the head back in line while we may still hold it).
    finishes = [fn for fn, _ in work_db.calls if "_finish" in fn.__qualname__]
    assert len(finishes) == 1


def test_a_connection_that_completes_after_the_fence_sends_not_one_byte():
    # A node frozen between the gate (lease valid) and its TCP connect wakes past its deadline:
    # the fence runs while the connection is still being made (no transport to abort yet), and
    # the connection that completes after it must not stream the job: the takeover node may have
    # printed it, and the printer's next jobs, meanwhile (printer order A, B, A otherwise).
    clock, lease_db, work_db, lease, pool, worker, me = _setup()
    worker._claimed([_claimed(me)], me)
    clock.advance(0)
    assert len(clock.tcpClients) == 1  # connecting
    clock.advance(2.5)  # the freeze ends past the deadline (2.0): the fence comes first
    assert lease.fenced
    # The fence cancelled the pending connect: the connection never completes (a connection that
    # does complete after its delivery ended is aborted by the protocol before its first byte).
    assert clock.connectors[-1].stoppedConnecting
    clock.pump([0.1] * 30)
    assert len(clock.tcpClients) == 1  # and no attempt after it
    assert [fn for fn, _ in work_db.calls if "_finish" in fn.__qualname__] == []  # stopped: nothing to finish


def test_a_refused_renewal_fences_and_the_node_joins_again_as_a_new_incarnation():
    clock, lease_db, work_db, lease, pool, worker, me = _setup()
    clock.advance(0.5)  # the first renewal is sent
    fn, d = lease_db.pending()[0]
    d.callback(False)  # refused: the lease had expired, or was reaped
    assert lease.fenced
    clock.advance(0.5)  # the next tick registers a new incarnation
    fn, d = lease_db.pending()[0]
    new = uuid.uuid4()
    d.callback(new)
    assert lease.incarnation == new and not lease.fenced and lease.valid()
    assert lease.fences == 1


def test_a_renewal_answered_late_moves_the_deadline_from_its_send_time():
    clock, lease_db, work_db, lease, pool, worker, me = _setup()
    clock.advance(0.5)  # renewal sent at 0.5
    fn, d = lease_db.pending()[0]
    clock.advance(1.0)  # answered at 1.5
    d.callback(True)
    assert lease.deadline == 0.5 + 3.0 - 1.0  # from the send, not the answer
    clock.pump([0.1] * 9)  # 2.4: still valid (the old deadline 2.0 is gone)
    assert lease.valid()
    for _ in range(20):  # no more answers: fenced at 2.5
        clock.advance(0.05)
    assert lease.fenced


def test_a_fenced_worker_releases_nothing_and_a_stopped_delivery_is_not_finished():
    clock, lease_db, work_db, lease, pool, worker, me = _setup()
    lease.fence("test")
    result = worker._finish(pool_result(), _claimed(me), me)
    assert result is None


def pool_result():
    from rawsvc.client.outcomes import DeliveryResult

    return DeliveryResult(STOPPED, "127.0.0.1:9100", message="stopped")


__all__ = ["succeed"]


# A fence while the attempt has not connected yet (review finding fence.py) ---------------------

def _claimed_with(me, **send):
    settings = encode_settings(SendSettings(retries=5, retry_delay=0.2, **send), RetryPolicy(0.2, 1.0, retries=5), None)
    return sql.Claimed(1, "job-1", 0, "127.0.0.1:9100", 1, 1, 1, settings, b"%!PS job\n" * 100)


def test_fenced_during_the_preflight_exchange_the_job_is_never_sent():
    from twisted.internet.error import ConnectionAborted
    from twisted.python.failure import Failure

    clock, lease_db, work_db, lease, pool, worker, me = _setup()
    worker._claimed([_claimed_with(me, preflight="zpl", preflight_timeout=8.0)], me)
    clock.advance(0)
    status, transport = _connect(clock)  # the status connection; the printer is slow to answer
    assert transport.value() == b"~HS"
    clock.pump([0.1] * 21)  # 2.1 s: past the deadline
    assert lease.fenced
    assert transport.aborted == 1  # the status connection is dropped at the fence
    status.connectionLost(Failure(ConnectionAborted()))
    clock.pump([0.1] * 100)
    assert len(clock.tcpClients) == 1  # no connection for the job, ever
    assert worker.running == {}
    assert not [fn for fn, _ in work_db.calls if "_finish" in fn.__qualname__]  # fenced: nothing finished


def test_the_gate_is_asked_after_the_preflight_answer_before_sending():
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    clock, lease_db, work_db, lease, pool, worker, me = _setup()
    worker._claimed([_claimed_with(me, preflight="zpl", preflight_timeout=8.0)], me)
    clock.advance(0)
    status, transport = _connect(clock)
    lease.deadline = clock.seconds()  # the lease ran out; the deadline check has not run yet
    status.dataReceived(b"\x02030,0,0,1245,000,0,0,0,000,0,0,0\x03\r\n\x02000,0,0,0,0,2,4,0,00000000,1,000\x03\r\n"
                        b"\x021234,0\x03\r\n")  # ready
    assert not lease.fenced
    status.connectionLost(Failure(ConnectionDone()))
    assert lease.fenced  # asked right after the pre-flight (not by the deadline check's loop)
    clock.pump([0.1] * 50)
    assert len(clock.tcpClients) == 1  # ready, but the lease is gone: the job is not sent
    assert worker.running == {}


def test_fenced_while_connecting_the_connect_is_cancelled():
    clock, lease_db, work_db, lease, pool, worker, me = _setup()
    worker._claimed([_claimed_with(me)], me)
    clock.advance(0)
    assert len(clock.tcpClients) == 1
    connector = clock.connectors[-1]
    clock.pump([0.1] * 21)
    assert lease.fenced
    assert connector.stoppedConnecting
    clock.pump([0.1] * 50)
    assert len(clock.tcpClients) == 1 and worker.running == {}


def test_a_connection_made_after_the_lease_ran_out_is_aborted_before_one_byte():
    clock, lease_db, work_db, lease, pool, worker, me = _setup()
    worker._claimed([_claimed_with(me)], me)
    clock.advance(0)
    lease.deadline = clock.seconds()  # the lease ran out while connecting; no check ran yet
    proto, transport = _connect(clock)
    assert transport.value() == b""
    assert transport.aborted >= 1 and lease.fenced


# A finish the database did not answer (review finding finish2.py) -------------------------------

def _delivered(clock, work_db, worker, me):
    """Claim, connect, send every byte and let the printer close: the finish is asked."""
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    worker._claimed([_claimed_with(me)], me)
    clock.advance(0)
    proto, transport = _connect(clock)
    proto.connectionLost(Failure(ConnectionDone()))
    clock.advance(0)
    return [d for fn, d in work_db.pending() if "_finish" in fn.__qualname__]


def test_a_finish_whose_connection_dropped_is_tried_again_until_answered():
    from rawsvc.spool.pg_worker import Unavailable

    clock, lease_db, work_db, lease, pool, worker, me = _setup(ttl=30.0)
    finishes = _delivered(clock, work_db, worker, me)
    assert len(finishes) == 1
    finishes[0].errback(Unavailable("server closed the connection unexpectedly"))
    assert list(worker.running) == [1]  # the claim keeps its slot while the finish is retried
    clock.advance(0.1)
    again = [(fn, d) for fn, d in work_db.pending() if "_finish" in fn.__qualname__]
    assert len(again) == 1  # the fenced finish, asked again
    again[0][1].errback(Unavailable("still down"))
    clock.advance(0.1)
    assert not [d for fn, d in work_db.pending() if "_finish" in fn.__qualname__]
    clock.advance(0.1)  # the back-off doubles: 0.2 s
    again = [(fn, d) for fn, d in work_db.pending() if "_finish" in fn.__qualname__]
    assert len(again) == 1
    again[0][1].callback(True)
    assert worker.running == {} and worker.lost == 0


def test_finish_retries_stop_once_the_lease_is_lost():
    from rawsvc.spool.pg_worker import Unavailable

    clock, lease_db, work_db, lease, pool, worker, me = _setup()
    finishes = _delivered(clock, work_db, worker, me)
    finishes[0].errback(Unavailable("down"))
    lease.fence("test")
    clock.pump([0.1] * 30)
    assert worker.running == {}
    asked = [fn for fn, _ in work_db.calls if "_finish" in fn.__qualname__]
    assert len(asked) == 1  # nothing asked after the fence: the reaper requeues the claim


def test_a_delivery_finished_at_once_leaves_no_slot_taken():
    """A delivery that ends synchronously (not allowed; the database answers at once) frees its slot."""
    clock = MemoryReactorClock()
    lease = Lease(clock, FrozenDb().run, "n1", 30.0, 1.0, 0.5, monotonic=clock.seconds)
    pool = DestinationPool(clock, allow=AllowList.parse(["127.0.0.1:9100"]))
    asked = []

    def answer_at_once(fn):
        asked.append(fn)
        return succeed(True)

    worker = DeliveryWorker(clock, pool, answer_at_once, lease, "/nonexistent")
    me = uuid.uuid4()
    lease.start(me, registered_at=0.0)
    not_allowed = sql.Claimed(7, "job-7", 0, "127.0.0.2:9100", 1, 1, 1, _claimed_with(me).settings, b"x")
    worker._claimed([not_allowed], me)
    assert [fn for fn in asked if "_finish" in fn.__qualname__]
    assert worker.running == {}


def test_the_payload_copy_read_back_is_owner_only(tmp_path):
    import os
    import stat

    from rawsvc.cluster.pool import _read_payload

    class OneChunk:
        def execute(self, query, args):
            class Row:
                def fetchone(self):
                    return (0, b"secret job")
            return Row()

    old = os.umask(0o022)
    try:
        _, path = _read_payload(OneChunk(), "job-1", str(tmp_path / "files" / "cluster-1-1.job"))
    finally:
        os.umask(old)
    assert open(path, "rb").read() == b"secret job"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600


def test_send_tcp_keys_its_cluster_delivery_by_run_and_apart_for_on_error():
    """Review finding onerror.py / retry.py: each send_tcp a run reaches is a delivery of its own."""
    from rawsvc.client.outcomes import DELIVERED, DeliveryResult
    from rawsvc.context import BuildContext
    from rawsvc.errors import ActionError
    from rawsvc.flow import Flow
    from rawsvc.job import Job, Payload
    from rawsvc.plugins import find_action_type

    context = BuildContext()
    send_tcp = find_action_type("send_tcp")
    values, issues = send_tcp.options.validate({"destination": "127.0.0.1:9100"})
    assert issues == []
    send = send_tcp.from_config(values, context)
    alert = send_tcp.from_config(send_tcp.options.validate({"destination": "127.0.0.1:9101"})[0], context)
    asked = []

    class Recorder:
        def deliver(self, dest, source, settings, job_id, total, policy, action_index, run):
            asked.append((str(dest), action_index, run))
            return succeed(DeliveryResult(DELIVERED, str(dest), message="delivered"))

    class Fail:
        type_name = "fail"

        def run(self, job):
            raise ActionError("boom")

    context.destinations.cluster = Recorder()
    flow = Flow("f", [send, Fail()], on_error=[alert, alert])
    job = Job(trigger="t", payload=Payload(b"label"))
    job.run = 2  # run again twice by an operator
    flow.run(job)
    assert asked == [("127.0.0.1:9100", 0, 2), ("127.0.0.1:9101", -1, 2), ("127.0.0.1:9101", -2, 2)]
    assert job.variables["action_index"] == "1" and job.on_error_index is None


def test_the_holder_cancels_a_delivery_waiting_to_retry_when_asked():
    """A cancel asked on another node (flagged in the database) ends the holder's back-off wait."""
    from twisted.internet.error import ConnectionRefusedError
    from twisted.python.failure import Failure

    clock, lease_db, work_db, lease, pool, worker, me = _setup(ttl=30.0)
    worker._claimed([_claimed_with(me)], me)
    clock.advance(0)
    host, port, factory, _, _ = clock.tcpClients[-1]
    factory.clientConnectionFailed(clock.connectors[-1], Failure(ConnectionRefusedError()))
    clock.advance(0)
    assert list(worker.running) == [1]  # waiting to retry
    worker.apply_cancels()
    [(fn, d)] = [(fn, d) for fn, d in work_db.pending() if "apply_cancels" in fn.__qualname__]
    d.callback(["job-1"])
    clock.advance(0)
    finishes = [fn for fn, _ in work_db.pending() if "_finish" in fn.__qualname__]
    assert len(finishes) == 1
    assert len(clock.tcpClients) == 1  # not tried again


def test_the_fence_ends_a_delivery_waiting_for_a_paused_destination_and_a_resume_sends_nothing():
    """abort_all ends the wait for a resume at once (stopped), and a later resume connects nowhere."""
    from rawsvc.client.address import Destination

    clock = MemoryReactorClock()
    pool = DestinationPool(clock, allow=AllowList.parse(["127.0.0.1:9100"]))
    lease_ok = [True]
    pool.gate = lambda: lease_ok[0]
    pool.startService()
    assert pool.pause("127.0.0.1:9100", "op")
    first = pool.deliver_here(Destination.parse("127.0.0.1:9100"), b"one", SendSettings(retries=0), "job-1")
    second = pool.deliver_here(Destination.parse("127.0.0.1:9100"), b"two", SendSettings(retries=0), "job-2")
    results: list = []
    first.addCallback(results.append)
    clock.advance(0)
    assert clock.tcpClients == [] and results == []
    lease_ok[0] = False  # the node is fenced ...
    pool.abort_all()  # ... and its worker cuts every delivery: the paused one's wait ends now
    assert [r.outcome for r in results] == [STOPPED] and "lease" in results[0].message
    clock.advance(0)
    second.addCallback(results.append)
    assert [r.outcome for r in results] == [STOPPED, STOPPED]
    assert pool.resume("127.0.0.1:9100")
    clock.advance(0)
    assert clock.tcpClients == []
    assert pool.status()["127.0.0.1:9100"]["queued"] == 0


# A process that wakes from a freeze handles its sockets before its timers --------------------

class _ZombieTransport(AbortRecorder):
    half_closed = False

    def registerProducer(self, producer, streaming):
        self.producer = producer


def _zombie(source, settings, total=None):
    """A SendProtocol of a delivery whose lease gate is C{ok[0]}, connected to a recording transport."""
    from twisted.internet.task import Clock

    from rawsvc.client.machine import Delivery
    from rawsvc.client.protocol import SendProtocol

    ok = [True]
    machine = Delivery()
    machine.gate = lambda: ok[0]
    machine.connect()
    proto = SendProtocol(Clock(), source, settings, machine, total)
    transport = _ZombieTransport()
    proto.makeConnection(transport)
    return proto, transport, ok, proto.reactor


def test_a_zombie_woken_mid_stream_writes_not_one_more_chunk_and_never_half_closes():
    # The lease ran out during the freeze; on waking the transport asks the producer for more
    # before the lease's 0.1 s check runs: the gate, asked per chunk, aborts there.
    import io

    from rawsvc.client.protocol import _FileSender

    data = bytes(range(256)) * (3 * _FileSender.CHUNK_SIZE // 256)
    proto, transport, ok, _ = _zombie(lambda: io.BytesIO(data), SendSettings(wait_for_eof=True), len(data))
    transport.producer.resumeProducing()
    first = transport.value()
    assert first == data[:_FileSender.CHUNK_SIZE]
    ok[0] = False  # frozen past the deadline
    transport.producer.resumeProducing()
    assert transport.value() == first  # not one more byte
    assert transport.aborted == 1 and not transport.half_closed
    results = []
    proto.finished.addCallback(results.append)
    from twisted.internet.error import ConnectionAborted
    from twisted.python.failure import Failure

    proto.connectionLost(Failure(ConnectionAborted()))
    assert results[0].ending.value == "reset" and "lost its cluster lease" in results[0].error


def test_a_zombie_woken_before_its_disconnect_delay_resets_instead_of_closing_cleanly():
    # Without half-close the job ends at the printer with our close: past the deadline, that close
    # must be a reset (a fragment the printer drops), not the end of a whole job.
    from twisted.internet.error import ConnectionAborted
    from twisted.python.failure import Failure

    proto, transport, ok, clock = _zombie(b"^XA^FDlabel^FS^XZ", SendSettings(half_close=False, disconnect_delay=1.0))
    assert transport.value() == b"^XA^FDlabel^FS^XZ" and not transport.disconnecting
    ok[0] = False
    clock.advance(1.0)  # the delay's timer, run on waking
    assert transport.aborted == 1
    results = []
    proto.finished.addCallback(results.append)
    proto.connectionLost(Failure(ConnectionAborted()))
    # Every byte was acknowledged: the same result as when the fence's timer aborts it first.
    assert results[0].ending.value == "reset_draining" and "lost its cluster lease" in results[0].error


def test_a_zombie_woken_after_its_half_close_has_nothing_left_to_cut():
    # Our EOF went out before the freeze: the job's end is at the printer already, and a reset now
    # would only turn a delivered job into one reported as not sent (and sent again by another node).
    proto, transport, ok, clock = _zombie(b"^XA^XZ", SendSettings(disconnect_delay=1.0))
    assert transport.half_closed
    ok[0] = False
    clock.advance(1.0)
    assert transport.aborted == 0 and transport.disconnecting  # closed as it would have been
    results = []
    proto.finished.addCallback(results.append)
    proto.connectionLost()
    assert results[0].ending.value == "delay"


def test_the_fences_own_abort_after_every_byte_is_not_reported_as_the_printers_reset():
    # Every byte acknowledged (a StringTransport takes all), waiting for the printer's EOF, and the
    # fence aborts the connection: counted as delivered as before (the finish is fenced), but the
    # error says this node aborted it, not that the printer reset it.
    from twisted.internet.error import ConnectionAborted
    from twisted.python.failure import Failure

    from rawsvc.client.outcomes import from_attempt
    from rawsvc.client.protocol import FENCED

    proto, transport, ok, _ = _zombie(b"^XA^XZ", SendSettings(wait_for_eof=True))
    assert transport.half_closed
    results = []
    proto.finished.addCallback(results.append)
    proto.machine.abandoned = True  # as DestinationPool.abort_all marks it before it aborts
    proto.connectionLost(Failure(ConnectionAborted()))
    [r] = results
    assert (r.ending.value, r.error) == ("reset_draining", FENCED)
    report = from_attempt("127.0.0.1:9100", "127.0.0.1:9100", r, SendSettings(wait_for_eof=True))
    assert report.ok and report.message == f"delivered 6 bytes to 127.0.0.1:9100 ({FENCED})"
