"""The STX/ETX framer, without I/O: rawsvc.testing.run_framer on byte streams."""

from __future__ import annotations

import pytest
from rawsvc.interfaces import IFramer
from rawsvc.testing import FramedJob, run_framer, run_framer_every_split
from zope.interface.verify import verifyObject

from rawsvc_stx.framing import ACK, NAK, StxEtxFramer, check_byte, frame, xor_of


def test_it_is_a_framer():
    assert verifyObject(IFramer, StxEtxFramer())


def test_check_bytes_worked_by_hand():
    # "A" ETX: 0x41 ^ 0x03 = 0x42; LRC = -(0x41 + 0x03) mod 256 = 0xBC.
    assert check_byte("xor", b"A\x03") == 0x42
    assert check_byte("lrc", b"A\x03") == 0xBC
    assert frame(b"A", "xor") == b"\x02A\x03\x42"


def test_xor_of_long_data_equals_the_byte_by_byte_xor():
    data = bytes(range(256)) * 3 + b"\x7f\x01"
    expected = 0
    for b in data:
        expected ^= b
    assert xor_of(data) == expected and xor_of(b"") == 0


def test_each_frame_is_a_job_acked_when_done():
    run = run_framer(StxEtxFramer(), [b"\x02W+0012.5kg\x03\r\n\x02W+0013.0kg\x03"])
    assert run.jobs == [
        FramedJob(b"W+0012.5kg", {"frame": "1", "frame_check": "none"}, ACK, NAK),
        FramedJob(b"W+0013.0kg", {"frame": "2", "frame_check": "none"}, ACK, NAK),
    ]


@pytest.mark.parametrize("check", ["none", "xor", "lrc"])
def test_any_split_of_a_stream_gives_the_same_frames(check):
    stream = frame(b"first", check) + b"\r\n" + frame(b"\x05 inside is data", check) + frame(b"x", check)
    run = run_framer_every_split(lambda: StxEtxFramer(check), stream)
    assert run.payloads == [b"first", b"\x05 inside is data", b"x"]


def test_a_wrong_check_byte_drops_the_frame_and_answers_nak():
    run = run_framer_every_split(lambda: StxEtxFramer("xor"), b"\x02A\x03\x41" + frame(b"B", "xor"))
    assert run.dropped == [(b"A", "check byte 0x41 does not match the frame's xor 0x42")]
    assert run.replies == NAK and run.payloads == [b"B"]


def test_enq_between_frames_is_answered_ack_and_an_empty_frame_is_a_keep_alive():
    run = run_framer(StxEtxFramer(), [b"\x05\r\n\x02\x03\x05"])
    assert run.replies == ACK * 3 and run.jobs == []


def test_an_stx_inside_a_frame_starts_it_over():
    run = run_framer_every_split(StxEtxFramer, b"\x02half\x02whole\x03")
    assert run.dropped == [(b"half", "STX inside a frame: the device started over")]
    assert run.payloads == [b"whole"]


def test_a_frame_cut_off_by_the_end_of_input_is_dropped_not_processed():
    run = run_framer_every_split(lambda: StxEtxFramer("lrc"), b"\x02no end", how="close")
    assert run.jobs == [] and run.pending == b""
    assert run.dropped == [(b"no end", "frame cut off by the end of input (close)")]


def test_answer_false_writes_nothing_back():
    run = run_framer(StxEtxFramer("xor", answer=False), [b"\x05\x02A\x03\x00" + frame(b"B", "xor")])
    assert run.replies == b"" and run.jobs == [FramedJob(b"B", {"frame": "1", "frame_check": "xor"})]
