"""
The markers and length-prefix framers under random input: however the
stream is split into chunks, the jobs (and the bytes dropped) are those of
the whole stream, and they are what plain searching finds.
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rawsvc.triggers.framing import Data, frame_all
from rawsvc.triggers.length_prefix import LengthPrefixFramer, encode
from rawsvc.triggers.markers import MarkersFramer, frame_markers

FUZZ = settings(max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# A small alphabet makes markers, their prefixes and overlaps turn up often.
ALPHABET = st.sampled_from(b"ab<>/\x02\x03")
streams = st.lists(ALPHABET, max_size=200).map(bytes) | st.binary(max_size=300)
markers = st.lists(ALPHABET, min_size=1, max_size=4).map(bytes) | st.sampled_from(
    [b"\x02", b"\x03", b"<msg>", b"</msg>", b"ab", b"aab"]
)


@st.composite
def splits(draw, data_strategy=streams):
    """A stream and a random split of it into chunks (empty chunks included)."""
    data = draw(data_strategy)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=30)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in zip(bounds, bounds[1:])]


def _framed(start, end, on_restart, chunks):
    framer = MarkersFramer(start, end, on_restart)
    return frame_all(framer, chunks), framer.dropped


@FUZZ
@given(splits(), markers, markers, st.sampled_from(["restart", "ignore"]))
def test_markers_framer_any_split_gives_the_jobs_of_the_whole_stream(split, start, end, on_restart):
    data, chunks = split
    whole = _framed(start, end, on_restart, [data])
    assert _framed(start, end, on_restart, chunks) == whole
    assert whole == frame_markers(data, start, end, on_restart)


@FUZZ
@given(splits(), markers, markers, st.sampled_from(["restart", "ignore"]))
def test_markers_framer_holds_back_less_than_a_marker(split, start, end, on_restart):
    data, chunks = split
    framer = MarkersFramer(start, end, on_restart)
    held = max(len(start), len(end))
    for chunk in chunks:
        framer.feed(chunk)
        assert len(framer._tail) < held  # a large message streams straight through


def test_markers_bytes_outside_messages_are_dropped_and_counted():
    told = []
    framer = MarkersFramer(b"\x02", b"\x03", on_dropped=told.append)
    jobs = frame_all(framer, [b"noise\x02one\x03\r\n\x02two", b"\x03tail"])
    assert jobs == [b"one", b"two"]
    assert framer.dropped == len(b"noise") + len(b"\r\n") + len(b"tail") == sum(told)


def test_markers_restart_drops_the_open_message_and_ignore_keeps_the_start_as_data():
    stream = [b"<m>half<m>whole</m>"]
    assert frame_all(MarkersFramer(b"<m>", b"</m>", "restart"), stream) == [b"whole"]
    assert frame_all(MarkersFramer(b"<m>", b"</m>", "ignore"), stream) == [b"half<m>whole"]


@st.composite
def prefixed(draw):
    size = draw(st.sampled_from([1, 2, 4]))
    order = draw(st.sampled_from(["big", "little"]))
    counts = draw(st.booleans())
    bodies = draw(st.lists(st.binary(max_size=300 if size > 1 else 250), max_size=8))
    stream = b"".join(encode(b, size, order, counts) for b in bodies)
    cut = draw(st.integers(0, len(stream)))  # a stream may end mid-message
    return size, order, counts, bodies, stream[: cut if draw(st.booleans()) else len(stream)]


@FUZZ
@given(prefixed(), st.data())
def test_length_prefix_framer_any_split_gives_the_messages(case, data):
    size, order, counts, bodies, stream = case
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    bounds = [0, *cuts, len(stream)]
    chunks = [stream[a:b] for a, b in zip(bounds, bounds[1:])]
    whole = frame_all(LengthPrefixFramer(size, order, counts), [stream])
    assert frame_all(LengthPrefixFramer(size, order, counts), chunks) == whole
    # The whole messages, then what a cut-off last one had of its body.
    full = b"".join(encode(b, size, order, counts) for b in bodies)
    if stream == full:
        assert whole == bodies


@FUZZ
@given(prefixed())
def test_length_prefix_framer_never_holds_body_bytes(case):
    size, order, counts, _bodies, stream = case
    framer = LengthPrefixFramer(size, order, counts)
    fed = body = 0
    for i in range(0, len(stream), 7):
        chunk = stream[i : i + 7]
        fed += len(chunk)
        body += sum(len(ev.data) for ev in framer.feed(chunk) if isinstance(ev, Data))
        assert len(framer._head) < size


def test_length_prefix_little_endian_four_bytes_counting_the_header():
    stream = (9).to_bytes(4, "little") + b"hello" + (4).to_bytes(4, "little")
    assert frame_all(LengthPrefixFramer(4, "little", True), [stream]) == [b"hello", b""]


def test_length_prefix_a_length_shorter_than_its_header_is_an_error_naming_it():
    import pytest

    from rawsvc.triggers.length_prefix import LengthPrefixError

    with pytest.raises(LengthPrefixError, match="shorter than its own 2-byte header"):
        LengthPrefixFramer(2, "big", True).feed(b"\x00\x01")


# Through a real FramedConnection (StringTransport, recording sink) -------------


class _RecordingSink:
    def __init__(self):
        self.payloads: list[bytes] = []

    def submit(self, job, flow, counters=None):
        from twisted.internet.defer import succeed

        self.payloads.append(job.payload.bytes())
        job.payload.discard()
        return succeed(None)


def _connection(tmp_path, **keys):
    import json

    from twisted.internet.task import Clock
    from twisted.internet.testing import StringTransport

    from rawsvc.config import loads
    from rawsvc.context import BuildContext

    trigger = {"name": "t", "type": "tcp", "listen": "tcp:0", "flow": "f", "skip_empty": False, **keys}
    text = (
        f'[service]\nstate_dir = "{tmp_path}"\nspill_threshold = 64\n[[trigger]]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in trigger.items())
        + '[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n'
    )
    trig = loads(text, "fuzz.toml", BuildContext(reactor=Clock())).triggers["t"]
    trig.sink = _RecordingSink()
    proto = trig.build_protocol()
    proto.makeConnection(StringTransport())
    return proto, trig


CONN = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@CONN
@given(split=splits(), ends=st.sampled_from([("\u0002", "\u0003"), ("<msg>", "</msg>"), ("ab", "b")]),
       on_restart=st.sampled_from(["restart", "ignore"]))
def test_connection_markers_jobs_do_not_depend_on_how_tcp_split_the_stream(tmp_path, split, ends, on_restart):
    data, chunks = split
    start, end = ends
    proto, trig = _connection(tmp_path, execute_on="markers", start=start, end=end, on_restart=on_restart)
    for chunk in chunks:
        if chunk:
            proto.dataReceived(chunk)
    proto.readConnectionLost()
    jobs, dropped = frame_markers(data, start.encode("latin-1"), end.encode("latin-1"), on_restart)
    assert trig.sink.payloads == jobs
    assert trig.bytes_dropped == dropped


@CONN
@given(case=prefixed(), data=st.data())
def test_connection_length_prefix_jobs_do_not_depend_on_how_tcp_split_the_stream(tmp_path, case, data):
    size, order, counts, bodies, stream = case
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=30)))
    bounds = [0, *cuts, len(stream)]
    proto, trig = _connection(tmp_path, execute_on="length_prefix", prefix_bytes=size, byte_order=order,
                              prefix_counts_header=counts)
    for a, b in zip(bounds, bounds[1:]):
        if b > a:
            proto.dataReceived(stream[a:b])
    proto.readConnectionLost()
    assert trig.sink.payloads == frame_all(LengthPrefixFramer(size, order, counts), [stream])
