"""
Framers under random input: however a byte stream is split into chunks, the
jobs are the ones the whole stream gives (property-based, hypothesis).
"""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from twisted.internet.testing import StringTransport

from rawsvc.triggers.framing import Data, DelimiterFramer, LengthFramer, StreamFramer, frame_all

FUZZ = settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

# Small alphabets make delimiters (and their prefixes) turn up often.
ALPHABET = st.sampled_from(b"ab\r\n\x03")
streams = st.lists(ALPHABET, max_size=200).map(bytes) | st.binary(max_size=300)
delimiters = st.lists(ALPHABET, min_size=1, max_size=4).map(bytes) | st.sampled_from([b"\r\n", b"\x03", b"abab", b"aab"])


@st.composite
def splits(draw, data_strategy=streams):
    """A stream and a random split of it into chunks (empty chunks included)."""
    data = draw(data_strategy)
    cuts = sorted(draw(st.lists(st.integers(0, len(data)), max_size=30)))
    bounds = [0, *cuts, len(data)]
    return data, [data[a:b] for a, b in zip(bounds, bounds[1:])]


def reference_delimited(data: bytes, delimiter: bytes, keep: bool) -> list[bytes]:
    """What a delimited stream means: bytes.split, the unterminated tail kept if any."""
    parts = data.split(delimiter)
    jobs = [p + delimiter if keep else p for p in parts[:-1]]
    if parts[-1]:
        jobs.append(parts[-1])
    return jobs


@FUZZ
@given(splits(), delimiters, st.booleans())
def test_delimiter_framer_any_split_gives_the_jobs_of_the_whole_stream(split, delimiter, keep):
    data, chunks = split
    whole = frame_all(DelimiterFramer(delimiter, keep), [data])
    assert frame_all(DelimiterFramer(delimiter, keep), chunks) == whole
    assert whole == reference_delimited(data, delimiter, keep)


@FUZZ
@given(splits(), delimiters)
def test_delimiter_framer_holds_back_less_than_a_delimiter(split, delimiter):
    data, chunks = split
    framer = DelimiterFramer(delimiter)
    fed = accounted = 0
    for chunk in chunks:
        fed += len(chunk)
        for ev in framer.feed(chunk):
            accounted += len(ev.data) if isinstance(ev, Data) else len(delimiter)
        assert 0 <= fed - accounted < len(delimiter)  # a large job streams straight through
    tail = framer.end_of_input("close")
    assert accounted + sum(len(ev.data) for ev in tail) == len(data)


@FUZZ
@given(splits(), st.integers(1, 50))
def test_length_framer_any_split_gives_fixed_size_jobs(split, length):
    data, chunks = split
    jobs = frame_all(LengthFramer(length), chunks)
    assert jobs == frame_all(LengthFramer(length), [data])
    assert jobs == [data[i : i + length] for i in range(0, len(data), length)]


@FUZZ
@given(splits())
def test_stream_framer_passes_every_byte_through(split):
    data, chunks = split
    assert b"".join(frame_all(StreamFramer(), chunks)) == data


# Through a real JobConnection (StringTransport, recording sink) ----------------


class _RecordingSink:
    def __init__(self):
        self.payloads: list[bytes] = []

    def submit(self, job, flow, counters=None):
        from twisted.internet.defer import succeed

        self.payloads.append(job.payload.bytes())
        job.payload.discard()
        return succeed(None)


def _connection(tmp_path, execute_on: str, **keys):
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from twisted.internet.task import Clock

    import json

    trigger = {"name": "t", "type": "tcp", "listen": "tcp:0", "flow": "f", "execute_on": execute_on, **keys}
    text = (
        f'[service]\nstate_dir = "{tmp_path}"\nspill_threshold = 64\n[[trigger]]\n'
        + "".join(f"{k} = {json.dumps(v)}\n" for k, v in trigger.items())
        + '[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n'
    )
    config = loads(text, "fuzz.toml", BuildContext(reactor=Clock()))
    trig = config.triggers["t"]
    trig.sink = _RecordingSink()
    proto = trig.build_protocol()
    proto.makeConnection(StringTransport())
    return proto, trig.sink


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(split=splits(), delimiter=st.sampled_from(["\r\n", "\u0003", "aab"]))
def test_connection_jobs_do_not_depend_on_how_tcp_split_the_stream(tmp_path, split, delimiter):
    data, chunks = split
    proto, sink = _connection(tmp_path, "delimiter", delimiter=delimiter, skip_empty=False)
    for chunk in chunks:
        if chunk:
            proto.dataReceived(chunk)
    proto.readConnectionLost()
    expected = data.split(delimiter.encode("latin-1"))
    if not expected[-1]:
        expected.pop()  # nothing after the last delimiter: no partial job
    assert sink.payloads == expected



#: Binary print data: Ctrl-Ds, %!, ~HS, PJL-looking lines, never a UEL; split anywhere.
PRINTER_TOKENS = st.sampled_from([b"\x04", b"%!", b"%", b"~HS", b"^XA", b"\x00", b"@PJL EOJ\r\n", b"data", b"\r\n"])
binary_print_data = st.lists(PRINTER_TOKENS | st.binary(max_size=6), min_size=1, max_size=40).map(
    lambda parts: b"\x00" + b"".join(parts).replace(b"\x1b", b"E")
)


def _printer_connection(tmp_path):
    from rawsvc.config import loads
    from rawsvc.context import BuildContext
    from twisted.internet.task import Clock

    text = (
        f'[service]\nstate_dir = "{tmp_path}"\nspill_threshold = 64\n[[trigger]]\nname = "p"\ntype = "printer"\n'
        'listen = "tcp:0"\nflow = "f"\n[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n'
    )
    config = loads(text, "fuzz.toml", BuildContext(reactor=Clock()))
    trig = config.triggers["p"]
    trig.sink = _RecordingSink()
    proto = trig.build_protocol()
    proto.makeConnection(StringTransport())
    return proto, trig.sink


@settings(max_examples=60, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(split=splits(binary_print_data))
def test_printer_connection_takes_binary_data_split_anywhere_as_one_job(tmp_path, split):
    data, chunks = split
    proto, sink = _printer_connection(tmp_path)
    for chunk in chunks:
        if chunk:
            proto.dataReceived(chunk)
    proto.readConnectionLost()
    assert sink.payloads == [data]
