"""PJL/ZPL parsing and replies, the printer framer and the printer state machine (pure)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rawsvc.triggers import pjl
from rawsvc.triggers.pjl import UEL
from rawsvc.triggers.printer_state import InvalidTransition, PrinterState
from printer_support import frame_stream


def frame(chunks, **kw):
    """Feed chunks; return (jobs, infos, command names, leftover bytes at close, framer)."""
    jobs, infos, commands, rest, f = frame_stream(chunks, **kw)
    return jobs, infos, [c.command for c in commands], rest, f


# Parsing ---------------------------------------------------------------


def test_parse_line_reads_command_words_and_quoted_values():
    cmd = pjl.parse_line(b'@PJL JOB NAME="My Job" DISPLAY="x"\r\n')
    assert cmd.command == "JOB" and cmd.params == {"NAME": "My Job", "DISPLAY": "x"}
    assert pjl.parse_line(b"@PJL INFO STATUS").words == ("STATUS",)
    assert pjl.parse_line(b"@pjl ustatus device = on").params == {"DEVICE": "on"}
    assert pjl.parse_line(b"hello") is None and pjl.parse_line(b"@PJLX") is None


def test_queries_are_info_echo_ustatus_and_inquire():
    assert pjl.parse_line(b"@PJL INFO ID").is_query
    assert pjl.parse_line(b"@PJL ECHO x").is_query
    assert not pjl.parse_line(b"@PJL ENTER LANGUAGE=PCL").is_query


# Replies -----------------------------------------------------------------


def test_info_status_idle_is_the_hp_bytes():
    assert pjl.info_status("idle") == b'@PJL INFO STATUS\r\nCODE=10001\r\nDISPLAY="00 READY"\r\nONLINE=TRUE\r\n\x0c'


@pytest.mark.parametrize("state,code,online", [
    ("receiving", b"10023", b"TRUE"), ("processing", b"10023", b"TRUE"),
    ("paused", b"10002", b"FALSE"), ("error", b"30000", b"TRUE"),
])
def test_info_status_reports_each_state(state, code, online):
    reply = pjl.info_status(state, "boom")
    assert b"CODE=" + code + b"\r\n" in reply and b"ONLINE=" + online in reply and reply.endswith(b"\x0c")


def test_error_display_carries_the_error_on_one_line():
    assert b'DISPLAY="ERROR: no\nway"' not in pjl.info_status("error", "no\nway")
    assert b'DISPLAY="ERROR: no way"' in pjl.info_status("error", "no\nway")


def test_echo_and_ustatus_job_formats():
    assert pjl.echo("hello 1") == b"@PJL ECHO hello 1\r\n\x0c"
    assert pjl.ustatus_job("START", "J") == b'@PJL USTATUS JOB\r\nSTART\r\nNAME="J"\r\n\x0c'
    assert pjl.ustatus_settings(pjl.parse_line(b"@PJL USTATUS DEVICE=ON")) == {"DEVICE": True}
    assert pjl.ustatus_settings(pjl.parse_line(b"@PJL USTATUSOFF"))["JOB"] is False


def test_host_status_is_three_stx_etx_crlf_lines_with_pause_flag():
    reply = pjl.host_status(paused=True, receiving=True, formats=2)
    lines = pjl.split_host_status(reply)
    assert reply.count(b"\x02") == 3 and reply.count(b"\x03\r\n") == 3
    first = lines[0].split(b",")
    assert len(first) == 12 and first[2] == b"1" and first[4] == b"002" and first[7] == b"1"
    assert len(lines[1].split(b",")) == 11 and len(lines[2].split(b",")) == 2


# Framing -------------------------------------------------------------------


def test_ctrl_d_ends_job_and_marker_stays_in_payload():
    jobs, infos, _, rest, _ = frame([b"%!PS\na\x04%!PS\nb\x04"])
    assert jobs == [b"%!PS\na\x04", b"%!PS\nb\x04"] and rest == b""
    assert [i.ended_by for i in infos] == ["ctrl-d", "ctrl-d"]


def test_leading_ctrl_d_does_not_end_an_empty_job():
    jobs, _, _, rest, _ = frame([b"\x04%!PS\nx\x04"])
    assert jobs == [b"\x04%!PS\nx\x04"]


def test_uel_ends_a_job_only_after_its_eoj():
    job = UEL + b'@PJL JOB NAME="n"\r\n@PJL ENTER LANGUAGE=PCL\r\ndata' + UEL + b"@PJL EOJ\r\n" + UEL
    jobs, infos, commands, rest, _ = frame([job + b"next"])
    assert jobs == [job] and rest == b"next"
    assert infos[0].pjl_job_name == "n" and infos[0].pjl_language == "PCL"
    assert commands == ["JOB", "ENTER", "EOJ"]


def test_queries_are_answered_and_removed_from_the_payload():
    jobs, _, commands, rest, f = frame([UEL + b"@PJL INFO STATUS\r\n~HS@PJL ECHO x\r\n^XA^XZ~HS"])
    assert commands == ["INFO", "~HS", "ECHO", "~HS"]
    assert rest == UEL + b"^XA^XZ" and f.current.content


def test_pjl_only_stream_is_not_a_job():
    _, _, _, rest, f = frame([UEL + b"@PJL INFO STATUS\r\n" + UEL])
    assert rest == UEL + UEL and not f.current.content


def test_last_query_without_line_feed_is_answered_at_close():
    _, _, commands, rest, _ = frame([b"@PJL INFO STATUS"])
    assert commands == ["INFO"] and rest == b""


def test_markers_are_data_when_switched_off():
    jobs, _, commands, rest, _ = frame([b"a\x04b~HS" + UEL + b"c"], ctrl_d=False, uel=False, zpl=False)
    assert jobs == [] and commands == [] and rest == b"a\x04b~HS" + UEL + b"c"


def test_after_eoj_ignore_drops_the_rest():
    jobs, _, _, rest, _ = frame([b"%!x\x04y\x04z"], after_eoj="ignore")
    assert jobs == [b"%!x\x04"] and rest == b""


STREAM = (UEL + b'@PJL JOB NAME="a"\r\n@PJL INFO STATUS\r\n@PJL ENTER LANGUAGE=POSTSCRIPT\r\n%!PS\n~HS'
          + b"\x00" * 20 + UEL + b"@PJL EOJ\r\n" + UEL + b"%!PS second\x04 ^XA~HS^XZ" + UEL + b"@PJL ECHO e\r\n")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_any_split_gives_the_same_jobs_and_answers(cuts):
    points = sorted(set(cuts))
    chunks = [STREAM[a:b] for a, b in zip([0] + points, points + [len(STREAM)])]
    assert frame(chunks)[:4] == frame([STREAM])[:4]


def test_a_large_chunk_is_framed_without_per_byte_work():
    import time

    data = b"x" * (16 << 20)
    started = time.perf_counter()
    jobs, _, _, rest, _ = frame([data[i : i + 65536] for i in range(0, len(data), 65536)])
    assert rest == data and time.perf_counter() - started < 2.0


# State machine -------------------------------------------------------------


def test_state_walks_idle_receiving_processing_idle():
    s, seen = PrinterState(), []
    s.observe(lambda old, new: seen.append(new))
    s.receive()
    s.submit("job")
    assert s.current_job == "job"
    s.finish("job", ok=True)
    assert seen == ["receiving", "processing", "idle"] and s.jobs_ok == 1


def test_failed_flow_is_error_until_the_next_job():
    s = PrinterState()
    s.receive(), s.submit("j"), s.finish("j", ok=False, error="printer unreachable")
    assert s.state == "error" and s.last_error == "printer unreachable"
    s.receive()
    assert s.state == "receiving"
    s.submit("k"), s.finish("k", ok=True)
    assert s.state == "idle" and s.last_error == "printer unreachable"


def test_pause_hides_work_until_resume_which_reports_the_truth():
    s = PrinterState()
    s.receive()
    s.pause()
    s.submit("j")
    assert s.state == "paused"
    s.resume()
    assert s.state == "processing"


def test_next_job_arriving_while_the_previous_flow_runs():
    s = PrinterState()
    s.receive(), s.submit("a"), s.receive()
    s.finish("a", ok=True)
    assert s.state == "receiving"
    s.abandon()
    assert s.state == "idle"


def test_invalid_transition_raises():
    with pytest.raises(InvalidTransition):
        PrinterState().submit("j")
