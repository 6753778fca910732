"""
The printer framer's Zebra and SGD queries (~HQES, ~HI, ! U1 getvar/setvar)
under random splits (hypothesis): the same queries in the same order, the
same jobs, and the queries never in a job's bytes.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from printer_support import UEL, frame_stream
from rawsvc.triggers.pjl import PjlCommand
from rawsvc.triggers.zpl_status import SgdCommand

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

QUERIES = [b"~HS", b"~HQES", b"~HI", b'! U1 getvar "media.status"\r\n', b'! U1 setvar "x.y" "1"\r\n',
           b"@PJL INFO STATUS\r\n"]
LABELS = [b"^XA^FDone^FS^XZ", b"^XA^FDtwo~HS^FS^XZ", b"\r\n"]
streams = st.lists(st.sampled_from(QUERIES + LABELS + [UEL]), max_size=25).map(b"".join)


@st.composite
def splits(draw):
    data = draw(streams)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=20)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in zip(bounds, bounds[1:])]


def test_the_zebra_queries_between_jobs_are_answered_and_left_out_of_the_job():
    jobs, _, queries, rest, _ = frame_stream([b'~HQES~HI! U1 getvar "head.latch"\r\n^XA^FDx^FS^XZ'])
    assert queries == [PjlCommand("~HQES"), PjlCommand("~HI"), SgdCommand("getvar", "head.latch")]
    assert jobs + [rest] == [b"^XA^FDx^FS^XZ"] or rest == b"^XA^FDx^FS^XZ"


@FUZZ
@given(splits())
def test_any_split_gives_the_same_queries_and_jobs(split):
    data, chunks = split
    whole = frame_stream([data])
    parts = frame_stream(chunks)
    assert parts[0] == whole[0]  # jobs
    assert parts[2] == whole[2]  # queries, in order
    assert parts[3] == whole[3]  # bytes of the unfinished job
    for job in whole[0] + [whole[3]]:
        assert b"~HQES" not in job.replace(b"^XA^FDtwo~HS^FS^XZ", b"") and b"! U1" not in job
