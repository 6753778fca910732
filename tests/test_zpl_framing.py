"""
The zpl framer (execute_on = "zpl"): one job per ZPL format on a connection
that stays open, however the stream is split (hypothesis), and through a
real tcp trigger on 127.0.0.1.
"""

from __future__ import annotations

import re
import socket

import pytest_twisted

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rawsvc.interfaces import IFramer
from rawsvc.triggers.framing import Data, frame_all
from rawsvc.triggers.zpl_framing import ZplFramer
from zope.interface.verify import verifyObject

from support import port_of, wait_until

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

TOKENS = st.sampled_from([b"^XA", b"^XZ", b"^xz", b"^", b"X", b"Z", b"^FDab^FS", b"\r\n", b" ", b"~HS", b"\x00"])
streams = st.lists(TOKENS | st.binary(max_size=5), max_size=50).map(b"".join)


@st.composite
def splits(draw):
    data = draw(streams)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=30)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in zip(bounds, bounds[1:])]


def reference(data: bytes) -> list[bytes]:
    """Each job: from its first non-white byte through its ^XZ; white space between formats dropped."""
    jobs = []
    for part in re.split(rb"(?<=\^[Xx][Zz])", data):
        part = part.lstrip(b" \t\r\n\f\x00")
        if part:
            jobs.append(part)
    return jobs


def test_zpl_framer_provides_the_framer_interface():
    assert verifyObject(IFramer, ZplFramer())


def test_each_format_is_a_job_and_white_space_between_them_is_none():
    stream = b"^XA^FDone^FS^XZ\r\n^XA^FDtwo^FS^XZ\r\n\r\n"
    assert frame_all(ZplFramer(), [stream]) == [b"^XA^FDone^FS^XZ", b"^XA^FDtwo^FS^XZ"]


def test_a_graphic_download_before_a_format_belongs_to_its_job():
    stream = b"~DGR:A.GRF,2,1,FF00\r\n^XA^XGR:A.GRF^FS^XZ"
    assert frame_all(ZplFramer(), [stream]) == [stream]


def test_an_unfinished_format_at_the_end_is_a_partial_job():
    assert frame_all(ZplFramer(), [b"^XA^XZ^XA^FDcut"]) == [b"^XA^XZ", b"^XA^FDcut"]


@FUZZ
@given(splits())
def test_any_split_gives_the_jobs_of_the_whole_stream(split):
    data, chunks = split
    whole = frame_all(ZplFramer(), [data])
    assert frame_all(ZplFramer(), chunks) == whole
    assert whole == reference(data)


@FUZZ
@given(splits())
def test_it_holds_back_at_most_two_bytes(split):
    data, chunks = split
    framer = ZplFramer()
    fed = out = 0
    skipped = 0
    for chunk in chunks:
        fed += len(chunk)
        for ev in framer.feed(chunk):
            if isinstance(ev, Data):
                out += len(ev.data)
    tail = framer.end_of_input("close")
    total = out + sum(len(ev.data) for ev in tail if isinstance(ev, Data))
    skipped = len(data) - total
    assert skipped == len(data) - sum(len(j) for j in reference(data))
    assert len(b"".join(ev.data for ev in tail if isinstance(ev, Data))) <= 2


@pytest_twisted.inlineCallbacks
def test_a_tcp_trigger_runs_one_job_per_format_while_the_connection_stays_open(service_factory, tmp_path):
    out = tmp_path / "out"
    svc = service_factory(f'''
[[trigger]]
name = "labels"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
execute_on = "zpl"
flow = "f"

[[flow]]
name = "f"
actions = [ {{ type = "file", folder = "{out}", name = "${{job_id}}-${{language}}-${{labels}}.zpl" }} ]
''')
    sock = socket.create_connection(("127.0.0.1", port_of(svc, "labels")), timeout=5)
    try:
        sock.sendall(b"^XA^FDone^FS^XZ\r\n^XA^FD")
        yield wait_until(lambda: out.exists() and len(list(out.iterdir())) == 1)
        sock.sendall(b"two^FS^XZ\r\n")
        yield wait_until(lambda: len(list(out.iterdir())) == 2)
        files = sorted(out.iterdir(), key=lambda f: f.stat().st_mtime_ns)  # in the order they were written
        assert [f.read_bytes() for f in files] == [b"^XA^FDone^FS^XZ", b"^XA^FDtwo^FS^XZ"]
        assert all(f.name.endswith("-zpl-1.zpl") for f in files)
        assert svc.triggers["labels"].counters.connections_open == 1  # still open
    finally:
        sock.close()
