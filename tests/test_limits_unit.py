"""
Low-resources mode and refuse-never-fake without sockets: StringTransport
and task.Clock drive eviction, what counts as activity, the count of
max_connections, a sink's refusal and the spill budget, exactly.
"""

from __future__ import annotations

from test_connection_unit import connect, make_trigger
from twisted.internet.address import IPv4Address
from twisted.internet.testing import StringTransport


class HalfCloseTransport(StringTransport):
    """A StringTransport that records half-closes and aborts (resets)."""

    write_closed = False
    aborted = False

    def loseWriteConnection(self):
        self.write_closed = True

    def abortConnection(self):
        self.aborted = True
        self.disconnecting = True


def connect_hc(trigger):
    proto = trigger.build_protocol()
    transport = HalfCloseTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    return proto, transport


def test_keep_alive_delimiters_are_not_activity(tmp_path):
    trigger, clock = make_trigger(tmp_path, idle_timeout=10, execute_on='"delimiter"', delimiter='"\\r\\n"')
    proto, transport = connect(trigger)
    talker, talker_transport = connect(trigger)
    for _ in range(9):
        clock.advance(1)
        proto.dataReceived(b"\r\n")
        talker.dataReceived(b"x")  # job bytes are activity
    clock.advance(1)  # 10 s after the accept: only keep-alives since
    assert transport.disconnecting
    assert not talker_transport.disconnecting


def test_at_the_cap_the_longest_silent_connection_is_evicted(tmp_path):
    trigger, clock = make_trigger(tmp_path, max_connections=3, refusal='"BYE ${reason}\\n"',
                                  execute_on='"delimiter"', delimiter='"\\n"')
    conns = []
    for i in range(3):
        conns.append(connect(trigger))
        clock.advance(1)
    conns[0][0].dataReceived(b"partial")  # the oldest spoke last: the second is silent longest
    clock.advance(1)
    new, new_transport = connect(trigger)
    assert conns[1][1].value() == b"BYE silent for 3.0 s while a new client waited (max_connections = 3)\n"
    assert conns[1][1].disconnecting
    assert not conns[0][1].disconnecting and not conns[2][1].disconnecting
    assert not new_transport.disconnecting and new in trigger.counted
    assert (trigger.counters.evicted, trigger.counters.connections_refused) == (1, 0)


def test_a_connection_with_a_job_in_flight_is_never_evicted(tmp_path):
    trigger, clock = make_trigger(tmp_path, max_connections=1, refusal='"BUSY ${reason}\\n"',
                                  execute_on='"delimiter"', delimiter='"\\n"')
    busy, busy_transport = connect(trigger)
    busy.dataReceived(b"job\n")  # its flow runs (the sink holds it)
    _, transport = connect(trigger)
    assert transport.value() == b"BUSY too many connections (max_connections = 1)\n"
    assert not busy_transport.disconnecting
    assert (trigger.counters.evicted, trigger.counters.connections_refused) == (0, 1)


def test_a_client_whose_input_ended_no_longer_counts(tmp_path):
    trigger, clock = make_trigger(tmp_path, max_connections=1, refusal='"BUSY ${reason}\\n"')
    first, first_transport = connect(trigger)
    first.dataReceived(b"job")
    first.readConnectionLost()  # half-closed; its flow still runs
    assert first not in trigger.counted and first in trigger.connections
    _, transport = connect(trigger)
    assert transport.value() == b"" and not transport.disconnecting
    assert trigger.counters.connections_refused == 0


def test_a_job_the_sink_refuses_resets_without_a_refusal_text(tmp_path):
    trigger, clock = make_trigger(tmp_path)
    proto, transport = connect_hc(trigger)
    proto.dataReceived(b"job")
    proto.readConnectionLost()
    job, d = trigger.sink.jobs[0]
    job.state, job.error = "refused", "spool unavailable: database or disk is full"
    d.callback(job)
    assert transport.value() == b""
    assert transport.aborted  # a reset: never a clean close the client takes for success


def test_a_job_the_sink_refuses_gets_the_refusal_text_then_a_half_close(tmp_path):
    trigger, clock = make_trigger(tmp_path, execute_on='"delimiter"', delimiter='"\\n"',
                                  refusal='"REFUSED ${reason}\\n"')
    proto, transport = connect_hc(trigger)
    proto.dataReceived(b"job\n")
    job, d = trigger.sink.jobs[0]
    job.state, job.error = "refused", "spool unavailable: database or disk is full"
    d.callback(job)
    assert transport.value() == b"REFUSED spool unavailable: database or disk is full\n"
    assert transport.write_closed and not transport.disconnecting and not transport.aborted
    proto.dataReceived(b"more\n")  # read and thrown away until the client closes
    assert len(trigger.sink.jobs) == 1
    proto.readConnectionLost()
    assert transport.disconnecting


def test_the_spill_budget_refuses_past_its_limit_and_comes_back(tmp_path):
    from rawsvc.job import Payload, PayloadError, SpillBudget

    budget = SpillBudget(1000)
    a = Payload(spool_dir=str(tmp_path), threshold=100, budget=budget)
    a.write(b"x" * 600)
    b = Payload(spool_dir=str(tmp_path), threshold=100, budget=budget)
    try:
        b.write(b"y" * 600)
    except PayloadError as e:
        assert "spill budget (1000 bytes" in str(e)
    else:
        raise AssertionError("the budget let 1,200 bytes through")
    assert b.path is None or not (tmp_path / b.path).exists()
    assert budget.used == 600
    a.discard()
    assert budget.used == 0 and list(tmp_path.iterdir()) == []


def make_printer(tmp_path, **keys):
    from twisted.internet.task import Clock

    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from test_connection_unit import HeldSink

    lines = "".join(f"{k} = {v}\n" for k, v in keys.items())
    text = (
        f'[service]\nstate_dir = "{tmp_path}"\nspool = false\n'
        '[[trigger]]\nname = "p"\ntype = "printer"\nlisten = "tcp:0:interface=127.0.0.1"\nflow = "f"\n'
        + lines
        + '[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n'
    )
    clock = Clock()
    trigger = loads(text, "unit.toml", BuildContext(reactor=clock)).triggers["p"]
    trigger.sink = HeldSink()
    return trigger, clock


def test_a_silent_printer_client_yields_to_a_waiting_one_after_the_default_5_s(tmp_path):
    trigger, clock = make_printer(tmp_path)
    silent, silent_transport = connect_hc(trigger)
    clock.advance(1)
    waiting, waiting_transport = connect_hc(trigger)
    assert trigger.waiting[0] is waiting
    clock.advance(3.9)  # 4.9 s of silence
    assert not silent_transport.disconnecting
    clock.advance(0.2)
    assert silent_transport.disconnecting and not silent_transport.aborted  # nothing was lost: a clean close
    assert trigger.counters.evicted == 1
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    silent.connectionLost(Failure(ConnectionDone()))
    assert trigger.active is waiting and not trigger.waiting


def test_a_printer_client_silent_long_yields_at_once_when_another_arrives(tmp_path):
    trigger, clock = make_printer(tmp_path)
    silent, silent_transport = connect_hc(trigger)
    clock.advance(60)  # alone: only idle_timeout (90 s) applies
    assert not silent_transport.disconnecting
    connect_hc(trigger)
    clock.advance(0)
    assert silent_transport.disconnecting


def test_a_printer_client_sending_a_job_is_not_cut_off_by_busy_idle_timeout(tmp_path):
    trigger, clock = make_printer(tmp_path, eoj_ctrl_d="false")
    sender, sender_transport = connect_hc(trigger)
    sender.dataReceived(b"%!PS job bytes")
    connect_hc(trigger)
    clock.advance(30)
    assert not sender_transport.disconnecting
    clock.advance(61)  # idle_timeout: 90 s after its last byte
    assert sender_transport.disconnecting


def test_the_printer_idle_timeout_defaults_to_90_s(tmp_path):
    trigger, clock = make_printer(tmp_path)
    _, transport = connect_hc(trigger)
    clock.advance(89.9)
    assert not transport.disconnecting
    clock.advance(0.2)
    assert transport.disconnecting
