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
    """Feed chunks; return (jobs, infos, query names, leftover bytes at close, "end" or "drop" at close)."""
    jobs, infos, queries, rest, verdict = frame_stream(chunks, **kw)
    return jobs, infos, [c.command for c in queries], rest, verdict


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
    assert commands == []  # JOB, ENTER and EOJ are no questions: they stay in the job


def test_queries_are_answered_and_removed_from_the_payload():
    jobs, _, commands, rest, at_close = frame([UEL + b"@PJL INFO STATUS\r\n~HS@PJL ECHO x\r\n^XA^XZ~HS"])
    assert commands == ["INFO", "~HS", "ECHO", "~HS"]
    assert rest == UEL + b"^XA^XZ" and at_close == "end"


def test_pjl_only_stream_is_not_a_job():
    _, _, _, rest, at_close = frame([UEL + b"@PJL INFO STATUS\r\n" + UEL])
    assert rest == UEL + UEL and at_close == "drop"


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
        PrinterState().abandon()  # nothing was being received


def test_a_submit_without_its_own_receive_settles():
    # At a stop, a client that waited hands its job in while another is served.
    state = PrinterState()
    assert state.submit("j") == "processing"
    assert state.finish("j", True) == "idle"


# Languages: Ctrl-D ends a job only in PostScript, ~HS is answered only in ZPL ----


def _binary(n: int, seed: int) -> bytes:
    """Random bytes with many Ctrl-Ds and a %! and ~HS past the start (no UEL, by chance or not)."""
    import random

    rnd = random.Random(seed)
    data = bytearray(rnd.randbytes(n))
    for i in rnd.sample(range(1, n), n // 50):
        data[i] = 4
    data[n // 2 : n // 2 + 2] = b"%!"
    data[n // 3 : n // 3 + 3] = b"~HS"
    if data[:1] in (b"%", b"^", b"~", b"\x1b", b"@"):
        data[0] = 0
    return bytes(data).replace(UEL, b"")


@pytest.mark.parametrize("seed", range(5))
def test_binary_job_with_ctrl_d_is_one_job_byte_identical(seed):
    data = _binary(20_000, seed)
    jobs, _, commands, rest, _ = frame([data[i : i + 997] for i in range(0, len(data), 997)])
    assert jobs == [] and commands == [] and rest == data


@pytest.mark.parametrize("start", [b"%PDF-1.7\n", b"\x1bE\x1b&l0O", b"\x89PNG\r\n", b"hello\r\n", b"\x1f\x8b\x08"])
def test_non_postscript_languages_do_not_end_at_ctrl_d(start):
    data = start + b"a\x04b\x04c"
    jobs, _, _, rest, _ = frame([data])
    assert jobs == [] and rest == data


def test_postscript_after_pjl_and_uel_ends_at_ctrl_d():
    first = UEL + b"@PJL SET COPIES=1\r\n%!PS-Adobe-3.0\nshowpage\n\x04"
    jobs, infos, _, rest, _ = frame([first + b"%!PS\nsecond\x04"])
    assert jobs == [first, b"%!PS\nsecond\x04"] and rest == b""
    assert [i.ended_by for i in infos] == ["ctrl-d", "ctrl-d"]


@pytest.mark.parametrize("enter", [b"@PJL ENTER LANGUAGE=POSTSCRIPT\r\n", b"@pjl enter language = postscript\n",
                                   b"@PJL\tENTER\tLANGUAGE\t=\tPostScript\r\n"])
def test_enter_language_postscript_makes_ctrl_d_end_the_job(enter):
    first = UEL + enter + b"\x00binary PS\x04"
    jobs, infos, _, rest, _ = frame([first + b"next"])
    assert jobs == [first] and rest == b"next" and infos[0].pjl_language == "POSTSCRIPT"


def test_pcl_with_ctrl_d_after_enter_language_pcl_does_not_split():
    job = UEL + b"@PJL ENTER LANGUAGE = PCL\r\n%!\x1bE\x04\x04raster\x04" + UEL
    jobs, infos, _, rest, _ = frame([job + b"tail"])
    assert jobs == [job] and infos[0].ended_by == "uel" and rest == b"tail"


def test_ctrl_d_inside_an_open_pjl_job_waits_for_its_eoj():
    # What CUPS's PostScript drivers send: the trailer after the Ctrl-D stays in the job.
    job = (UEL + b'@PJL JOB NAME="j"\r\n@PJL ENTER LANGUAGE=POSTSCRIPT\r\n%!PS\nshowpage\n\x04'
           + UEL + b"@PJL EOJ\r\n" + UEL)
    jobs, infos, _, rest, _ = frame([job])
    assert jobs == [job] and infos[0].ended_by == "uel" and rest == b""


def test_cups_leading_ctrl_d_before_postscript():
    jobs, _, _, rest, _ = frame([b"\x04%!PS\nx\x04\x04%!PS\ny\x04"])
    assert jobs == [b"\x04%!PS\nx\x04", b"\x04%!PS\ny\x04"] and rest == b""


def test_host_status_inside_binary_is_data():
    data = b"\x00\x01~HS\x04~HS"
    jobs, _, commands, rest, _ = frame([data])
    assert commands == [] and rest == data


def test_host_status_in_zpl_text_is_answered_until_binary_data():
    data = b"^XA~HS^FDa^FS~DYR:X,B,P,4,0,\x00\x01~HS\x02^XZ"
    _, _, commands, rest, _ = frame([data[:4], data[4:]])
    assert commands == ["~HS"] and rest == data.replace(b"~HS", b"", 1)


def test_percent_split_from_its_bang_is_still_postscript():
    jobs, _, _, rest, _ = frame([b"%", b"!PS\n\x04", b"x"])
    assert jobs == [b"%!PS\n\x04"] and rest == b"x"
