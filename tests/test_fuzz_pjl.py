"""
PJL parsing and the printer's framer under random input (property-based,
hypothesis): parsing never raises, every answer is well-formed, and any
split of a random PJL/PostScript/ZPL stream gives the same jobs, job
information and answered queries as the whole stream.
"""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from rawsvc.triggers import pjl
from printer_support import frame_stream

FUZZ = settings(max_examples=300, deadline=None, derandomize=True)

TOKENS = st.sampled_from(
    [
        pjl.UEL, b"\x1b%-123", b"45X", b"@PJL", b"@PJL ", b"@pjl info status\r\n", b"@PJL INFO STATUS\r\n",
        b"@PJL INFO ID\n", b"@PJL INFO\r\n", b'@PJL JOB NAME="a b"\r\n', b"@PJL JOB NAME=x\r\n", b"@PJL EOJ\r\n",
        b"@PJL ECHO hello \"x\r\n", b"@PJL USTATUS DEVICE=ON JOB=VERBOSE\r\n", b"@PJL USTATUSOFF\r\n",
        b"@PJL INQUIRE RESOLUTION\r\n", b"@PJL DINQUIRE\r\n", b"@PJL ENTER LANGUAGE=POSTSCRIPT\r\n",
        b"@PJL SET COPIES=2\r\n", b"@PJLX\r\n", b"@PJL = =\r\n", b'@PJL JOB NAME="\r\n', b"%!PS\n",
        b"\x04", b"~HS", b"~H", b"^XA^XZ", b"\r\n", b" ", b"\x0c", b"\x00\xff", b"data",
        b"%", b"!", b"%!", b"%PDF-", b"^", b"~", b"\x1bE", b"@PJL ENTER LANGUAGE = PCL\r\n",
        b"@pjl\tenter language=postscript\n", b"@PJL ENTER LANGUAGE=ZPL\r\n",
    ]
)
STREAMS = st.lists(TOKENS | st.binary(max_size=8), max_size=25).map(b"".join)
OPTIONS = st.fixed_dictionaries(
    {"ctrl_d": st.booleans(), "uel": st.booleans(), "zpl": st.booleans(), "after_eoj": st.sampled_from(["next", "ignore"])}
)


def frame(chunks, **kw):
    """Feed chunks; return (jobs, infos, commands, leftover bytes at close)."""
    return frame_stream(chunks, **kw)[:4]


@st.composite
def split_streams(draw):
    data = draw(STREAMS)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in zip(bounds, bounds[1:])]


@FUZZ
@given(split_streams(), OPTIONS)
def test_any_split_of_a_random_stream_gives_the_same_jobs_infos_and_queries(split, options):
    data, chunks = split
    assert frame(chunks, **options) == frame([data], **options)


@FUZZ
@given(STREAMS, OPTIONS)
def test_print_data_is_never_lost_only_queries_are_taken_out(data, options):
    jobs, infos, commands, rest = frame([data], **options)
    out = b"".join(jobs) + rest
    if options["after_eoj"] == "next":
        # What leaves the framer is the stream minus the query lines it answered.
        assert len(out) <= len(data)
        if not any(c.is_query for c in commands) and not (options["zpl"] and b"~HS" in data):
            assert out == data


@FUZZ
@given(st.binary(max_size=120) | st.lists(TOKENS, max_size=4).map(b"".join))
def test_parse_line_never_raises_and_only_takes_pjl(line):
    cmd = pjl.parse_line(line)
    if cmd is None:
        return
    assert line.strip()[:4].upper() == b"@PJL"
    assert cmd.command == cmd.command.upper()
    assert all(k == k.upper() for k in cmd.params)


QUERY_WORDS = st.sampled_from([b"INFO STATUS", b"INFO ID", b"INFO ", b"ECHO ", b"INQUIRE ", b"DINQUIRE ", b"USTATUS "])
PRINTABLE = st.binary(max_size=60).map(lambda b: bytes(c for c in b if 0x20 <= c < 0x7F or c == 0x09))


@FUZZ
@given(st.binary(max_size=120).map(lambda b: b.replace(b"\x0c", b"")) | st.tuples(QUERY_WORDS, PRINTABLE).map(b"".join),
       st.sampled_from(sorted(pjl.STATE_CODES)), st.text(max_size=100), st.text(max_size=40))
def test_every_answer_is_one_well_formed_reply(line, state, error, model):
    cmd = pjl.parse_line(b"@PJL " + line.replace(b"\n", b" ").replace(b"\r", b" "))
    assert cmd is not None
    out = pjl.answer(cmd, state, error, model)
    if not out:
        assert cmd.command not in ("INFO", "ECHO", "INQUIRE", "DINQUIRE")
        return
    assert out.startswith(b"@PJL ")
    assert out.endswith(pjl.FF)
    assert pjl.split_replies(out) == [out]  # exactly one reply: no form feed smuggled inside
    body = out[:-1]
    assert b"\r\n" in body
    # A client's text cannot add lines of its own to a status reply.
    if cmd.command == "INFO" and cmd.words[:1] == ("STATUS",):
        assert len(body.split(b"\r\n")) == 5 and (b"ONLINE=" in body)


@FUZZ
@given(st.booleans(), st.booleans(), st.integers(0, 10**6), st.integers(0, 10**5), st.booleans())
def test_host_status_is_always_three_fields(paused, receiving, formats, length, paper_out):
    out = pjl.host_status(paused, receiving, formats, min(length, 9999), paper_out)
    assert len(pjl.split_host_status(out)) == 3


def test_a_form_feed_in_echo_text_cannot_split_the_answer():
    out = pjl.answer(pjl.parse_line(b"@PJL ECHO a\x0cb"), "idle")
    assert pjl.split_replies(out) == [out]


def test_a_form_feed_in_the_error_cannot_split_a_status_reply():
    out = pjl.info_status("error", "bad \x0c data")
    assert pjl.split_replies(out) == [out]


@FUZZ
@given(PRINTABLE, st.sampled_from(sorted(pjl.STATE_CODES)), st.text(max_size=200))
def test_error_text_cannot_add_lines_to_a_status_reply(noise, state, error):
    out = pjl.info_status(state, error + noise.decode())
    assert pjl.split_replies(out) == [out]
    assert len(out[:-1].split(b"\r\n")) == 5


#: Binary data: many Ctrl-Ds, %! and ~HS inside, never a UEL (a 9-byte chance of 2^-72 per byte).
BINARY = st.lists(st.sampled_from([b"\x04", b"%!", b"~HS", b"~", b"%", b"\x00", b"@PJL\r\n"]) | st.binary(max_size=8),
                  max_size=40).map(lambda parts: b"\x00" + b"".join(parts).replace(b"\x1b", b"E"))


@FUZZ
@given(BINARY, st.data())
def test_any_split_of_binary_data_is_one_job_exactly_as_sent(data, draw):
    cuts = sorted(draw.draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    jobs, infos, commands, rest = frame([data[a:b] for a, b in zip(bounds, bounds[1:])])
    assert (jobs, commands, rest) == ([], [], data)
