"""
Slow and hostile clients against a real RawService on loopback: silent and
trickling connections are closed by their timeouts, a client that never
reads its replies is throttled (the service stops reading), a connection
flood past max_connections evicts the silent ones without leaking descriptors, and a
normal client is served promptly throughout.

Each test prints its figures (run with -s to see them).
"""

from __future__ import annotations

import json
import os
import resource
import selectors
import socket
import statistics
import threading
import time

import pytest
import pytest_twisted
from twisted.internet.task import LoopingCall
from twisted.internet.threads import deferToThread

from support import port_of, recv_until, wait_until


@pytest.fixture
def many_fds(reactor):
    """Raise RLIMIT_NOFILE for thousands of sockets (both ends live in this process)."""
    if "select" in type(reactor).__module__:
        pytest.skip("the select() reactor cannot watch thousands of sockets")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 5000
    limit = need * 2 if hard == resource.RLIM_INFINITY else min(hard, need * 2)
    if limit < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit), hard))
    yield limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


ECHO_FLOW = """
[[flow]]
name = "echo"
actions = [ { type = "reply", data = "GOT[${data}]\\n" } ]
"""


def trigger(name="t", **keys) -> str:
    base = {"name": name, "type": "tcp", "flow": "echo", "execute_on": "delimiter", "delimiter": "\n",
            # A deep accept queue: the clients connect faster than one reactor turn accepts.
            "listen": "tcp:0:interface=127.0.0.1:backlog=2048"}
    base.update(keys)
    return "[[trigger]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in base.items())


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


class NormalClient:
    """A well-behaved client in its own thread: one job per connection, round trips timed."""

    def __init__(self, port: int, interval: float = 0.2) -> None:
        self.port = port
        self.interval = interval
        self.latencies: list[float] = []
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "NormalClient":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def once(self) -> float:
        started = time.monotonic()
        with socket.create_connection(("127.0.0.1", self.port), timeout=10) as s:
            s.sendall(b"ping\n")
            got = recv_until(s, b"\n", timeout=10)
        took = time.monotonic() - started
        if got != b"GOT[ping]\n":
            raise AssertionError(f"normal client got {got!r}")
        return took

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.latencies.append(self.once())
            except Exception as e:  # reported by the test
                self.errors.append(repr(e))
            self._stop.wait(self.interval)

    def figures(self) -> str:
        lat = sorted(self.latencies)
        if not lat:
            return "normal client: no round trips"
        return (
            f"normal client: {len(lat)} round trips, median {statistics.median(lat) * 1000:.1f} ms, "
            f"max {lat[-1] * 1000:.1f} ms, errors {len(self.errors)}"
        )


# Silent and trickling connections --------------------------------------------


def _connect_many(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.settimeout(10)
        s.connect(("127.0.0.1", port))
        s.setblocking(False)
        socks.append(s)
    return socks


def _hold_and_trickle(port: int, silent: int, trickling: int, timeout: float) -> dict:
    """
    Open C{silent} connections that never send and C{trickling} ones that
    send one byte a second (never a delimiter); read until the server has
    closed every one.  Returns what each kind received and when it closed.
    """
    started = time.monotonic()
    quiet = _connect_many(port, silent)
    slow = _connect_many(port, trickling)
    connected = time.monotonic() - started
    sel = selectors.DefaultSelector()
    state = {}
    for kind, socks in (("silent", quiet), ("trickle", slow)):
        for s in socks:
            state[s] = {"kind": kind, "data": b"", "closed": None, "reset": False}
            sel.register(s, selectors.EVENT_READ)
    open_ = set(state)
    next_byte = time.monotonic()
    bytes_sent = 0
    try:
        while open_ and time.monotonic() - started < timeout:
            for key, _ in sel.select(timeout=0.05):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except (ConnectionResetError, BrokenPipeError):
                    data, state[s]["reset"] = b"", True
                except BlockingIOError:
                    continue
                if data:
                    state[s]["data"] += data
                    continue
                state[s]["closed"] = time.monotonic() - started
                sel.unregister(s)
                open_.discard(s)
            if time.monotonic() >= next_byte:
                next_byte += 1.0
                for s in slow:
                    if s in open_ and not state[s]["data"]:
                        try:
                            bytes_sent += s.send(b"x")
                        except OSError:
                            pass
    finally:
        for s in state:
            s.close()
        sel.close()
    return {"state": list(state.values()), "connected_in": connected, "bytes_sent": bytes_sent,
            "still_open": len(open_), "took": time.monotonic() - started}


@pytest_twisted.inlineCallbacks
def test_silent_and_trickling_connections_are_closed_by_their_timeouts_while_others_are_served(
    service_factory, many_fds
):
    silent = trickling = 1000
    svc = service_factory(
        trigger(max_connections=2500, idle_timeout=3, job_timeout=2, refusal="BYE ${reason}\n") + ECHO_FLOW
    )
    trig = svc.triggers["t"]
    port = port_of(svc, "t")
    peak = []
    sampler = LoopingCall(lambda: peak.append(len(trig.connections)))
    sampler.start(0.1)
    normal = NormalClient(port).start()
    try:
        result = yield deferToThread(_hold_and_trickle, port, silent, trickling, 30.0)
    finally:
        # Off the reactor's thread: a round trip under way needs the reactor to finish, and a
        # join on the reactor's thread held it 10 s, until the round trip timed out (CI saw it).
        yield deferToThread(normal.stop)
        sampler.stop()
    yield wait_until(lambda: trig.counters.connections_open == 0)

    by_kind = {"silent": [], "trickle": []}
    for s in result["state"]:
        by_kind[s["kind"]].append(s)
    idle_text = b"BYE idle for 3 s (idle_timeout)\n"
    slow_text = b"BYE job not complete after 2 s (job_timeout)\n"
    silent_ok = sum(1 for s in by_kind["silent"] if s["closed"] is not None and s["data"] == idle_text)
    slow_ok = sum(1 for s in by_kind["trickle"] if s["closed"] is not None and s["data"] == slow_text)
    slowest = max(s["closed"] for s in result["state"] if s["closed"] is not None)
    print(
        f"\n[silent+trickling] {silent} silent + {trickling} trickling connections opened in "
        f"{result['connected_in']:.2f} s; peak held by the service {max(peak)}; "
        f"closed by idle_timeout {silent_ok}, by job_timeout {slow_ok}, resets seen "
        f"{sum(s['reset'] for s in result['state'])}; last closed at {slowest:.2f} s; "
        f"trickled {result['bytes_sent']} bytes; {normal.figures()}; "
        f"jobs refused {trig.counters.jobs_refused}, jobs ok {trig.counters.jobs_ok}"
    )
    assert result["still_open"] == 0, "connections the service never closed"
    assert max(peak) >= silent + trickling  # they really were all held at once
    assert silent_ok == silent
    assert slow_ok >= trickling - 5  # a byte racing the server's close may turn into a reset
    assert trig.counters.jobs_refused >= slow_ok
    assert not normal.errors
    assert len(normal.latencies) >= 5
    assert max(normal.latencies) < 5.0  # generous: shared CI machines; starvation shows as 10 s timeouts
    assert trig.counters.jobs_ok == len(normal.latencies)


# A client that never reads its replies ----------------------------------------

LINE = 64  # bytes per job line, delimiter included


def _line(i: int) -> bytes:
    return f"{i:010d}".encode().ljust(LINE - 1, b".") + b"\n"


def _flood_without_reading(port: int, seconds: float) -> dict:
    """Write delimited jobs for C{seconds}, reading nothing; then read every reply."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive window, so that the replies back up within the test's seconds.
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 10)
    s.settimeout(10)
    s.connect(("127.0.0.1", port))
    s.setblocking(False)
    block = b"".join(_line(i) for i in range(1024))  # 64 KiB of jobs, numbered per block
    sent = 0
    stalls = 0
    started = time.monotonic()
    pending = memoryview(block)
    while time.monotonic() - started < seconds:
        try:
            n = s.send(pending)
        except BlockingIOError:
            stalls += 1
            time.sleep(0.01)
            continue
        sent += n
        pending = pending[n:]
        if not pending:
            pending = memoryview(block)
    # Finish the last line, then half-close and read everything back.
    tail = (LINE - sent % LINE) % LINE
    out = bytearray()
    sel = selectors.DefaultSelector()
    sel.register(s, selectors.EVENT_READ | selectors.EVENT_WRITE)
    rest = memoryview(pending[:tail].tobytes())
    half_closed = False
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for _key, events in sel.select(timeout=0.5):
            if events & selectors.EVENT_READ:
                data = s.recv(1 << 20)
                if not data:
                    s.close()
                    return {"sent": sent + tail, "stalls": stalls, "replies": bytes(out)}
                out += data
            if events & selectors.EVENT_WRITE:
                if rest:
                    try:
                        n = s.send(rest)
                        rest = rest[n:]
                    except BlockingIOError:
                        pass
                if not rest and not half_closed:
                    s.shutdown(socket.SHUT_WR)
                    half_closed = True
                    sel.modify(s, selectors.EVENT_READ)
    s.close()
    raise AssertionError("the service never finished replying")


def _buffered(conn) -> int:
    t = conn.transport
    return len(t.dataBuffer) - t.offset + t._tempDataLen


@pytest_twisted.inlineCallbacks
def test_a_client_that_never_reads_cannot_make_the_service_buffer_without_bound(service_factory):
    svc = service_factory(trigger() + ECHO_FLOW)
    trig = svc.triggers["t"]
    port = port_of(svc, "t")
    # Small kernel buffers (accepted sockets inherit them), so that seconds of writing
    # exceed what the kernel can absorb and only the service's own buffering is left.
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        trig.port.socket.setsockopt(socket.SOL_SOCKET, option, 32 << 10)
    samples: list[tuple[int, bool]] = []

    def sample():
        for conn in trig.connections:
            samples.append((_buffered(conn), "backpressure" in conn.reading_paused))

    sampler = LoopingCall(sample)
    sampler.start(0.05)
    normal = NormalClient(port, interval=0.3).start()
    read_at = []
    trig.reactor.callLater(4.0, lambda: read_at.append(trig.counters.bytes_in))
    try:
        result = yield deferToThread(_flood_without_reading, port, 4.0)
    finally:
        # Off the reactor's thread: a round trip under way needs the reactor to finish, and a
        # join on the reactor's thread held it 10 s, until the round trip timed out (CI saw it).
        yield deferToThread(normal.stop)
        sampler.stop()
    jobs = result["sent"] // LINE
    read_while_writing = read_at[0] if read_at else "?"
    expected = b"".join(b"GOT[" + _line(i % 1024)[:-1] + b"]\n" for i in range(jobs))
    peak = max(b for b, _ in samples)
    paused = sum(1 for _, p in samples if p)
    print(
        f"\n[never reads] client wrote {result['sent']} bytes = {jobs} jobs in 4 s "
        f"(the service read {read_while_writing} bytes of them meanwhile) "
        f"(stalled {result['stalls']} times); service's write buffer peaked at {peak} bytes; "
        f"reading paused in {paused}/{len(samples)} samples; all {len(result['replies'])} reply bytes "
        f"read back afterwards; {normal.figures()}"
    )
    assert paused > 0, "the service never stopped reading"
    assert read_at and read_at[0] < 2 << 20  # it read a bounded part of what was written
    assert peak < 4 << 20
    # Bounded: without back-pressure a loopback client writes gigabytes in 4 s.
    assert result["sent"] < 256 << 20
    assert result["replies"] == expected  # nothing lost, in order
    assert not normal.errors and normal.latencies
    assert max(normal.latencies) < 5.0


# A connection flood past max_connections ----------------------------------------


def _flood(port: int, count: int) -> tuple[list[socket.socket], float]:
    started = time.monotonic()
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        socks.append(s)
    return socks, time.monotonic() - started


def _read_outcomes(socks: list[socket.socket], timeout: float) -> dict:
    """Wait until each socket has been answered and closed (or the timeout); say what each got."""
    sel = selectors.DefaultSelector()
    got = {s: b"" for s in socks}
    closed = set()
    for s in socks:
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ)
    deadline = time.monotonic() + timeout
    while len(closed) < len(socks) and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=0.1):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except ConnectionResetError:
                data = b""
            if data:
                got[s] += data
            else:
                closed.add(s)
                sel.unregister(s)
    sel.close()
    return {"got": got, "closed": closed}


@pytest_twisted.inlineCallbacks
def test_a_connection_flood_beyond_max_connections_evicts_the_silent_without_leaking_descriptors(
    service_factory, many_fds
):
    limit, flood = 50, 500
    svc = service_factory(
        trigger("flooded", max_connections=limit, idle_timeout=2, refusal="BUSY ${reason}\n")
        + trigger("other")
        + ECHO_FLOW
    )
    flooded = svc.triggers["flooded"]
    port = port_of(svc, "flooded")
    yield deferToThread(NormalClient(port).once)  # warm up: the thread pool, the first accept
    yield wait_until(lambda: flooded.counters.connections_open == 0)
    baseline = open_fds()
    peak_fds = []
    sampler = LoopingCall(lambda: peak_fds.append(open_fds()))
    sampler.start(0.05)
    normal = NormalClient(port_of(svc, "other")).start()
    try:
        socks, took = yield deferToThread(_flood, port, flood)
        # Low-resources mode: each new one evicts the longest-silent; the last
        # `limit` are held (silent) until idle_timeout frees them after 2 s.
        outcome = yield deferToThread(_read_outcomes, socks, 15.0)
        served_after = yield deferToThread(NormalClient(port).once)
    finally:
        # Off the reactor's thread: a round trip under way needs the reactor to finish, and a
        # join on the reactor's thread held it 10 s, until the round trip timed out (CI saw it).
        yield deferToThread(normal.stop)
        sampler.stop()
    for s in socks:
        s.close()
    yield wait_until(lambda: flooded.counters.connections_open == 0 and open_fds() <= baseline, timeout=10)
    after = open_fds()
    idle = b"BUSY idle for 2 s (idle_timeout)\n"
    texts = list(outcome["got"].values())
    refused = sum(1 for t in texts if t.startswith(b"BUSY silent for ") and t.endswith(b"(max_connections = 50)\n"))
    held = texts.count(idle)
    c = flooded.counters
    print(
        f"\n[flood] {flood} connections opened in {took:.2f} s against max_connections = {limit}: "
        f"evicted with the text {refused}, held {held} (then closed by idle_timeout); "
        f"counters: accepted {c.connections_total}, evicted {c.evicted}, refused {c.connections_refused}; "
        f"open fds baseline {baseline}, peak {max(peak_fds)}, after {after}; "
        f"other trigger's {normal.figures()}; flooded trigger served again in {served_after * 1000:.1f} ms"
    )
    assert len(outcome["closed"]) == flood  # the service closed every one
    assert refused == flood - limit
    assert held == limit
    assert (c.evicted, c.connections_refused) == (flood - limit, 0)
    assert after <= baseline
    assert not normal.errors and normal.latencies
    assert max(normal.latencies) < 5.0
