"""
The TCP trigger's connection logic without sockets: StringTransport and a
task.Clock drive framing, reply order, half-close and the deadline timer.
"""

from __future__ import annotations

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer

from rawsvc.config import loads
from rawsvc.context import BuildContext
from rawsvc.interfaces import IJobSink, ITrigger


@implementer(IJobSink)
class HeldSink:
    """A job sink whose flows finish when the test says so."""

    def __init__(self):
        self.jobs = []

    def submit(self, job, flow_name, counters=None):
        d = Deferred()
        self.jobs.append((job, d))
        return d

    def finish(self, index, reply=None):
        job, d = self.jobs[index]
        if reply is not None:
            job.reply_channel.reply(reply)
        job.state = "queued"
        job.state = "running"
        job.state = "done"
        d.callback(job)


def make_trigger(tmp_path, **keys):
    lines = "".join(f"{k} = {v}\n" for k, v in keys.items())
    text = (
        f'[service]\nstate_dir = "{tmp_path}"\nspool = false\n'
        '[[trigger]]\nname = "t"\ntype = "tcp"\nlisten = "tcp:0:interface=127.0.0.1"\nflow = "f"\n'
        + lines
        + '[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n'
    )
    clock = Clock()
    config = loads(text, "unit.toml", BuildContext(reactor=clock))
    trigger = config.triggers["t"]
    trigger.sink = HeldSink()
    return trigger, clock


def connect(trigger):
    proto = trigger.build_protocol()
    transport = StringTransport(peerAddress=IPv4Address("TCP", "127.0.0.1", 40000))
    proto.makeConnection(transport)
    return proto, transport


def test_tcp_trigger_provides_itrigger(tmp_path):
    from zope.interface.verify import verifyObject

    trigger, _ = make_trigger(tmp_path)
    assert verifyObject(ITrigger, trigger)


def test_a_connection_is_the_push_producer_of_its_own_writes(tmp_path):
    from twisted.internet.interfaces import IPushProducer
    from zope.interface.verify import verifyObject

    trigger, _ = make_trigger(tmp_path)
    proto, transport = connect(trigger)
    assert transport.producer is proto and transport.streaming
    assert verifyObject(IPushProducer, proto)
    proto.pauseProducing()  # the client reads no replies: its write buffer is full
    assert "backpressure" in proto.reading_paused and transport.producerState == "paused"
    proto.resumeProducing()
    assert proto.reading_paused == frozenset() and transport.producerState == "producing"


def test_replies_are_held_until_earlier_jobs_finish(tmp_path):
    trigger, clock = make_trigger(tmp_path, execute_on='"delimiter"', delimiter='"\\n"')
    proto, transport = connect(trigger)
    proto.dataReceived(b"a\nb\n")
    sink = trigger.sink
    assert [j.payload.bytes() for j, _ in sink.jobs] == [b"a", b"b"]
    sink.finish(1, b"B\n")
    assert transport.value() == b""  # job a still running
    sink.finish(0, b"A\n")
    assert transport.value() == b"A\nB\n"


def test_half_close_closes_once_every_job_has_answered(tmp_path):
    trigger, clock = make_trigger(tmp_path)
    proto, transport = connect(trigger)
    proto.dataReceived(b"job")
    proto.readConnectionLost()
    assert transport.disconnecting is False
    trigger.sink.finish(0, b"OK")
    assert transport.value() == b"OK"
    assert transport.disconnecting is True


def test_idle_timeout_closes_after_silence_only(tmp_path):
    trigger, clock = make_trigger(tmp_path, idle_timeout=10, refusal='"BYE ${reason}\\n"')
    proto, transport = connect(trigger)
    clock.advance(6)
    proto.dataReceived(b"x")  # activity moves the deadline
    clock.advance(6)
    assert not transport.disconnecting
    clock.advance(5)
    assert transport.disconnecting
    assert transport.value() == b"BYE idle for 10 s (idle_timeout)\n"


def test_idle_timeout_waits_while_a_flow_runs(tmp_path):
    trigger, clock = make_trigger(tmp_path, idle_timeout=10, execute_on='"delimiter"', delimiter='"\\n"')
    proto, transport = connect(trigger)
    proto.dataReceived(b"slow\n")
    clock.advance(25)
    assert not transport.disconnecting  # the client waits for its answer
    trigger.sink.finish(0, b"done\n")
    clock.advance(11)
    assert transport.disconnecting


def test_job_timeout_refuses_a_job_that_trickles(tmp_path):
    trigger, clock = make_trigger(tmp_path, job_timeout=5, idle_timeout=0, refusal='"ERR ${reason}\\n"')
    proto, transport = connect(trigger)
    for _ in range(6):
        proto.dataReceived(b"x")
        clock.advance(1)
    assert transport.value() == b"ERR job not complete after 5 s (job_timeout)\n"
    assert transport.disconnecting
    assert trigger.sink.jobs == []
    assert trigger.counters.jobs_refused == 1


def test_no_timer_is_left_after_the_connection_closes(tmp_path):
    trigger, clock = make_trigger(tmp_path, idle_timeout=10, job_timeout=5)
    proto, transport = connect(trigger)
    proto.dataReceived(b"x")
    from twisted.internet.error import ConnectionDone
    from twisted.python.failure import Failure

    proto.connectionLost(Failure(ConnectionDone()))
    assert clock.getDelayedCalls() == []


@pytest.mark.parametrize("split", [1, 2, 3, 7])
def test_length_framing_is_independent_of_chunking(tmp_path, split):
    trigger, clock = make_trigger(tmp_path, execute_on='"length"', length=3)
    proto, transport = connect(trigger)
    data = b"abcdefghi"
    for i in range(0, len(data), split):
        proto.dataReceived(data[i : i + split])
    assert [j.payload.bytes() for j, _ in trigger.sink.jobs] == [b"abc", b"def", b"ghi"]


@pytest.mark.parametrize(
    "given, expected",
    [
        ("tcp:9100", "tcp:9100:backlog=1024"),
        ("tcp:9100:interface=127.0.0.1", "tcp:9100:interface=127.0.0.1:backlog=1024"),
        ("tcp:9100:backlog=5", "tcp:9100:backlog=5"),
        ("unix:/run/rawsvc.sock", "unix:/run/rawsvc.sock"),
    ],
)
def test_tcp_endpoints_get_a_deeper_listen_backlog(given, expected):
    from rawsvc.triggers.base import with_backlog

    assert with_backlog(given, 1024) == expected


def test_job_timeout_shorter_than_idle_timeout_fires_on_time(tmp_path):
    trigger, clock = make_trigger(
        tmp_path, execute_on='"delimiter"', delimiter='"\\n"', job_timeout=10, refusal='"ERR ${reason}\\n"'
    )
    proto, transport = connect(trigger)  # idle_timeout: the default 300 s
    for _ in range(11):
        clock.advance(1)
        proto.dataReceived(b"x")  # trickles, never ends the job
    assert transport.value() == b"ERR job not complete after 10 s (job_timeout)\n"


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_timeouts_must_be_finite(tmp_path, value):
    from rawsvc.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        make_trigger(tmp_path, idle_timeout=value)
    assert f"key 'idle_timeout': must be a finite number" in str(e.value)


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"refusal": '"ERR ${nosuch}"'}, "key 'refusal': uses ${nosuch}; a refusal knows only ${reason}, ${peer_host}, ${trigger}"),
        ({"backlog": 100000000000}, "key 'backlog': must be between 1 and 65535"),
    ],
)
def test_listener_values_that_would_fail_at_run_time_are_config_errors(tmp_path, keys, message):
    from rawsvc.errors import ConfigError

    with pytest.raises(ConfigError) as e:
        make_trigger(tmp_path, **keys)
    assert message in str(e.value)
