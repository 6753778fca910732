"""
The stx-etx trigger's connections, without sockets: rawsvc.testing's
load_trigger builds it through rawsvc's real config loader (options
validated, as in production) with a task.Clock and a stub sink.
"""

from __future__ import annotations

import pytest
from rawsvc.errors import ConfigError
from rawsvc.interfaces import ITrigger
from rawsvc.testing import connect, load_trigger
from zope.interface.verify import verifyObject

from rawsvc_stx.framing import ACK, NAK, frame


def test_the_entry_point_gives_the_trigger_type(tmp_path):
    trigger = load_trigger("stx-etx", tmp_path)
    assert verifyObject(ITrigger, trigger) and trigger.type_name == "stx-etx"


def test_ack_waits_for_the_flow_and_answers_go_in_frame_order(tmp_path):
    trigger = load_trigger("stx-etx", tmp_path, check="xor")
    proto, transport = connect(trigger)
    proto.dataReceived(frame(b"one", "xor") + frame(b"two", "xor") + b"\x02bad\x03\x00")
    assert trigger.sink.payloads == [b"one", b"two"]
    assert transport.value() == b""  # nothing stored and processed yet
    trigger.sink.finish(1, state="failed", error="no such item")
    trigger.sink.finish(0)
    assert transport.value() == ACK + NAK + NAK  # one done, two failed, the bad frame
    job = trigger.sink.jobs[1].job
    assert job.variables["frame"] == "2" and job.variables["frame_check"] == "xor"


def test_a_frame_larger_than_max_job_bytes_is_refused_with_a_nak(tmp_path):
    trigger = load_trigger("stx-etx", tmp_path, max_job_bytes=8)
    proto, transport = connect(trigger)
    proto.dataReceived(frame(b"far too long for it"))
    assert trigger.sink.jobs == [] and transport.value() == NAK


def test_a_silent_device_is_closed_after_idle_timeout(tmp_path):
    trigger = load_trigger("stx-etx", tmp_path, idle_timeout=30)
    proto, transport = connect(trigger)
    trigger.reactor.advance(29)
    assert not transport.disconnecting
    trigger.reactor.advance(2)
    assert transport.disconnecting


@pytest.mark.parametrize("key, value, message", [
    ("check", "crc", "key 'check': must be one of"),
    ("answer", "yes", "key 'answer': must be true or false"),
])
def test_bad_options_are_config_errors_naming_the_key(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        load_trigger("stx-etx", tmp_path, **{key: value})
