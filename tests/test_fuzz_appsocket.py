"""
The AppSocket UDP status responder on random datagrams (property-based,
hypothesis): no exception, one short status reply per status query and
none for anything else, and replies rate-limited per source and in total,
so that spoofed queries cannot turn the port into a flood amplifier.
"""

from __future__ import annotations

from types import SimpleNamespace

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock
from zope.interface import implementer

from rawsvc.interfaces import IPrinterStatus
from rawsvc.triggers.printer_state import PrinterSnapshot

from rawsvc.triggers.printer_state import PrinterSnapshot
from rawsvc.triggers.appsocket import AppSocketStatusTrigger, StatusProtocol, TokenBuckets, parse_status, STATUS_KEYS

FUZZ = settings(max_examples=200, deadline=None, derandomize=True)

RATE, TOTAL = 5.0, 40.0


class _Transport:
    def __init__(self):
        self.sent: list[tuple[bytes, tuple]] = []

    def write(self, data, addr):
        self.sent.append((data, addr))


def _printer(error: str = "", state: str = "idle"):
    """A printer as the responder sees it: only its snapshot (IPrinterStatus)."""
    snap = PrinterSnapshot(state=state, printer="p", job_id="J1", job_name="name\r\nINJECTED=1",
                           client="127.0.0.1:5", queued=2, jobs_ok=1, jobs_failed=2, last_error=error)
    return SimpleNamespace(name="p", snapshot=lambda: snap)


def responder(clock, error=""):
    context = SimpleNamespace(reactor=clock)
    options = {"name": "s", "listen": (0, "127.0.0.1"), "printer": "p", "rate_limit": RATE, "rate_limit_total": TOTAL}
    trigger = AppSocketStatusTrigger(options, context, _printer(error))
    trigger.limiter = TokenBuckets(RATE, TOTAL, clock=clock.seconds)
    proto = StatusProtocol(trigger)
    proto.transport = _Transport()
    return trigger, proto


DATAGRAMS = st.sampled_from([b"", b"\r\n", b"\n", b"\r", b"\r\n\r\n"]) | st.binary(max_size=64)
SOURCES = st.sampled_from([f"10.0.0.{i}" for i in range(1, 6)] + ["::1", "127.0.0.1"])
EVENTS = st.lists(st.tuples(st.floats(0, 0.3), SOURCES, st.integers(1, 65535), DATAGRAMS), max_size=200)


@FUZZ
@given(EVENTS, st.text(max_size=80))
def test_random_datagrams_get_at_most_one_short_status_reply_each(events, error):
    clock = Clock()
    trigger, proto = responder(clock, error)
    queries = 0
    for dt, host, port, data in events:
        clock.advance(dt)
        before = len(proto.transport.sent)
        proto.datagramReceived(data, (host, port))
        new = proto.transport.sent[before:]
        is_query = not data.strip(b"\r\n")
        queries += is_query
        assert len(new) <= (1 if is_query else 0)
        for reply, addr in new:
            assert addr == (host, port)
            assert len(reply) < 1200  # one datagram, far below any path MTU worries
            fields = parse_status(reply)
            assert list(fields) == list(STATUS_KEYS)  # error or job text cannot add keys or lines
    assert trigger.ignored == sum(1 for *_, d in events if d.strip(b"\r\n"))


def _max_in_window(times: list[float], window: float = 1.0) -> int:
    best, j = 0, 0
    for i, t in enumerate(times):
        while times[j] <= t - window:
            j += 1
        best = max(best, i - j + 1)
    return best


@FUZZ
@given(st.lists(st.tuples(st.floats(0, 0.05), SOURCES), min_size=1, max_size=600))
def test_replies_are_rate_limited_per_source_and_in_total(events):
    clock = Clock()
    trigger, proto = responder(clock)
    sent_at: dict[str, list[float]] = {}
    all_at: list[float] = []
    for dt, host in events:
        clock.advance(dt)
        before = len(proto.transport.sent)
        proto.datagramReceived(b"", (host, 9))
        if len(proto.transport.sent) > before:
            sent_at.setdefault(host, []).append(clock.seconds())
            all_at.append(clock.seconds())
    # A token bucket: a burst of `rate`, then `rate` per second.
    for host, times in sent_at.items():
        assert _max_in_window(times) <= 2 * RATE, host
    assert _max_in_window(all_at) <= 2 * TOTAL
    elapsed = clock.seconds()
    for times in sent_at.values():
        assert len(times) <= RATE + RATE * elapsed + 1e-9


def test_a_spoofed_flood_at_one_victim_is_not_amplified():
    """10,000 queries 'from' one address in one second: the victim gets a trickle."""
    clock = Clock()
    trigger, proto = responder(clock)
    for _ in range(10_000):
        clock.advance(0.0001)
        proto.datagramReceived(b"", ("192.0.2.7", 9101))
    replies = len(proto.transport.sent)
    out = sum(len(d) for d, _ in proto.transport.sent)
    # Bytes in counted with IP+UDP headers (28 bytes each): the attacker spends more than the victim gets.
    spent = 10_000 * 28
    print(f"\n[udp flood] 10000 spoofed queries in 1 s: {replies} replies, {out} bytes out vs {spent} bytes in "
          f"(amplification {out / spent:.3f}x)")
    assert replies <= 2 * RATE
    assert out < spent


def test_many_sources_cannot_exhaust_the_limiter():
    clock = Clock()
    trigger, proto = responder(clock)
    for i in range(20_000):  # more sources than the limiter keeps buckets for
        proto.datagramReceived(b"", (f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", 9))
    flooded = len(proto.transport.sent)
    assert flooded <= TOTAL  # all in the same instant: the total bucket holds
    clock.advance(2)
    proto.datagramReceived(b"", ("127.0.0.1", 9))
    assert len(proto.transport.sent) == flooded + 1  # a real client is answered once the flood passes
