"""
Low-resources mode (issue 12, item 8), against a real RawService on
loopback with real sockets: a flood of silent connections, or of
connections sending only keep-alive delimiters, never locks a real client
out; a silent client does not hold a printer; held clients that give up
are noticed; acknowledged clients that left do not count against
max_connections.

Each test prints its figures (run with -s to see them).
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import threading
import time

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from printer_support import GateAction, archive_flow, archived, printer, wait_for
from support import port_of, recv_all, recv_until

ECHO_FLOW = """
[[flow]]
name = "echo"
actions = [ { type = "reply", data = "GOT[${data}]\\n" } ]
"""


def tcp(name="t", **keys) -> str:
    base = {"name": name, "type": "tcp", "flow": "echo", "listen": "tcp:0:interface=127.0.0.1:backlog=4096"}
    if keys.get("execute_on", "delimiter") == "delimiter":
        base.update(execute_on="delimiter", delimiter="\r\n")
    base.update(keys)
    return "[[trigger]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in base.items())


@pytest.fixture
def many_fds(reactor):
    """Both ends of thousands of sockets live in this process."""
    if "select" in type(reactor).__module__:
        pytest.skip("the select() reactor cannot watch thousands of sockets")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 6000
    limit = 20000 if hard == resource.RLIM_INFINITY else min(hard, 20000)
    if limit < need:
        pytest.skip(f"RLIMIT_NOFILE hard limit {hard} < {need}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, limit), hard))
    yield limit
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def _open(port: int, count: int) -> list[socket.socket]:
    socks = []
    for _ in range(count):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setblocking(False)
        socks.append(s)
    return socks


def _real_client(port: int) -> tuple[bytes, float]:
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.sendall(b"ping\r\n")
        got = recv_until(s, b"\n", timeout=5)
    return got, time.monotonic() - started


def _closed_by_server(socks: list[socket.socket]) -> int:
    """How many of C{socks} the server has closed (EOF or reset seen), without blocking."""
    n = 0
    for s in socks:
        try:
            while True:
                data = s.recv(4096)
                if not data:
                    n += 1
                    break
        except BlockingIOError:
            pass
        except OSError:
            n += 1
    return n


def _count_closed(socks: list[socket.socket], expected: int, timeout: float = 5.0) -> int:
    """Closes seen by the clients, waiting up to C{timeout} for C{expected} of them."""
    closed, seen = 0, set()
    deadline = time.monotonic() + timeout
    while closed < expected and time.monotonic() < deadline:
        fresh = [s for s in socks if s not in seen]
        for s in fresh:
            if _closed_by_server([s]):
                seen.add(s)
        closed = len(seen)
        time.sleep(0.02)
    return closed


@pytest_twisted.inlineCallbacks
def test_1200_silent_connections_do_not_lock_out_a_real_client(service_factory, many_fds):
    svc = service_factory(tcp() + ECHO_FLOW)  # default max_connections
    t = svc.triggers["t"]
    port = port_of(svc, "t")
    socks = yield deferToThread(_open, port, 1200)
    try:
        yield wait_for(lambda: t.counters.connections_total >= 1200, timeout=20)
        got, took = yield deferToThread(_real_client, port)
        closed = yield deferToThread(_count_closed, socks, t.counters.evicted)
        print(f"\n[silent flood] 1200 silent connections, max_connections {t.max_connections}: "
              f"evicted {t.counters.evicted}, refused {t.counters.connections_refused}; "
              f"a real client served in {took * 1000:.1f} ms")
        assert got == b"GOT[ping]\n"
        assert took < 1.0
        assert t.counters.connections_refused == 0
        assert t.counters.evicted == 1200 + 1 - t.max_connections
        assert closed == t.counters.evicted
        from rawsvc.admin.prometheus import render

        assert t.status()["counters"]["evicted"] == t.counters.evicted
        assert f'rawsvc_trigger_connections_evicted_total{{trigger="t"}} {float(t.counters.evicted)}\n' in render(svc)
    finally:
        for s in socks:
            s.close()
    yield wait_for(lambda: t.counters.connections_open == 0, timeout=10)


def _keep_alive(port: int, count: int, seconds: float, stop: threading.Event) -> dict:
    """C{count} connections each sending only b"\\r\\n" every 0.5 s; when did the server close each?"""
    socks = _open(port, count)
    opened = time.monotonic()
    closed_at: dict[socket.socket, float] = {}
    sel = selectors.DefaultSelector()
    for s in socks:
        sel.register(s, selectors.EVENT_READ)
    next_beat = opened
    while time.monotonic() < opened + seconds and len(closed_at) < count and not stop.is_set():
        now = time.monotonic()
        if now >= next_beat:
            for s in socks:
                if s not in closed_at:
                    try:
                        s.send(b"\r\n")
                    except OSError:
                        closed_at[s] = now
            next_beat = now + 0.5
        for key, _ in sel.select(timeout=0.05):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                closed_at[s] = time.monotonic()
                sel.unregister(s)
    sel.close()
    for s in socks:
        s.close()
    return {"opened": opened, "closed": sorted(t - opened for t in closed_at.values()), "count": count}


@pytest_twisted.inlineCallbacks
def test_keep_alive_delimiters_do_not_hold_a_slot_past_idle_timeout(service_factory):
    svc = service_factory(tcp(max_connections=50, idle_timeout=2) + ECHO_FLOW)
    t = svc.triggers["t"]
    port = port_of(svc, "t")
    stop = threading.Event()
    beats = deferToThread(_keep_alive, port, 50, 6.0, stop)
    yield wait_for(lambda: t.counters.connections_open == 50, timeout=10)
    got, took = yield deferToThread(_real_client, port)  # every slot is taken by a keep-alive
    result = yield beats
    closed = result["closed"]
    print(f"\n[keep-alive] 50 connections sending \\r\\n every 0.5 s, idle_timeout 2 s: "
          f"{len(closed)} closed by the service, the last after {closed[-1] if closed else float('nan'):.2f} s; "
          f"evicted {t.counters.evicted}; a real client served in {took * 1000:.1f} ms")
    assert got == b"GOT[ping]\n" and took < 1.0
    assert t.counters.evicted == 1  # made room for the real client
    assert len(closed) == 50  # every keep-alive connection was closed ...
    assert closed[-1] < 2.0 + 1.5  # ... at idle_timeout, the keep-alives notwithstanding
    yield wait_for(lambda: t.counters.connections_open == 0, timeout=10)


def _print(port: int, data: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        return recv_all(s, timeout=10)


@pytest_twisted.inlineCallbacks
def test_a_silent_client_holds_a_printer_only_busy_idle_timeout(service_factory, tmp_path):
    jobs = tmp_path / "jobs"
    svc = service_factory(printer(busy_idle_timeout=1, eoj_ctrl_d=False) + archive_flow(jobs))
    p = svc.triggers["p"]
    port = port_of(svc, "p")
    silent = socket.create_connection(("127.0.0.1", port), timeout=5)
    try:
        yield wait_for(lambda: p.active is not None)
        started = time.monotonic()
        yield deferToThread(_print, port, b"a real job\n")
        took = time.monotonic() - started
        yield wait_for(lambda: archived(jobs) == [b"a real job\n"])
        print(f"\n[silent printer client] busy_idle_timeout 1 s: the next client printed after {took:.2f} s; "
              f"evicted {p.counters.evicted}")
        assert 0.5 < took < 3.0
        assert p.counters.evicted == 1
        silent.settimeout(2)
        assert silent.recv(10) == b""  # closed cleanly: it sent nothing, nothing was lost
    finally:
        silent.close()


@pytest_twisted.inlineCallbacks
def test_held_printer_clients_that_give_up_are_noticed(service_factory, tmp_path):
    jobs = tmp_path / "jobs"
    svc = service_factory(printer(eoj_ctrl_d=False) + archive_flow(jobs, gate=True))
    p = svc.triggers["p"]
    port = port_of(svc, "p")
    first = deferToThread(_print, port, b"first\n")
    yield wait_for(lambda: len(GateAction.gates) == 1)  # the first job's flow holds the printer
    quitters = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(p.queue_depth)]
    yield wait_for(lambda: len(p.waiting) == p.queue_depth)
    assert p.port is None  # a full queue closes the port
    for s in quitters:
        s.close()  # gave up before sending anything
    yield wait_for(lambda: not p.waiting and p.port is not None, timeout=3)
    print(f"\n[held quitters] {len(quitters)} held clients gave up: queue {len(p.waiting)}, "
          f"open connections {p.counters.connections_open}, accepting {p.port is not None}")
    assert p.counters.connections_open == 1
    second = deferToThread(_print, port, b"second\n")
    yield wait_for(lambda: len(p.waiting) == 1)
    GateAction.open_all()
    yield first
    yield wait_for(lambda: len(GateAction.gates) == 1)
    GateAction.open_all()
    yield second
    yield wait_for(lambda: archived(jobs) == [b"first\n", b"second\n"])
    assert p.counters.connections_refused == 0


def _clients(port: int, count: int, concurrency: int) -> dict:
    """C{count} clients, C{concurrency} at a time: send, half-close, read the reply, close at once."""
    results = {"ok": 0, "refused": 0, "other": []}
    lock = threading.Lock()
    numbers = iter(range(count))

    def worker():
        while True:
            with lock:
                i = next(numbers, None)
            if i is None:
                return
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall(b"job %d" % i)
                    s.shutdown(socket.SHUT_WR)
                    got = recv_until(s, b"\n", timeout=10)
            except OSError as e:
                got = repr(e).encode()
            with lock:
                if got == b"OK\n":
                    results["ok"] += 1
                elif got.startswith(b"BUSY"):
                    results["refused"] += 1
                else:
                    results["other"].append(got)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return results


@pytest_twisted.inlineCallbacks
def test_acknowledged_clients_that_left_do_not_count_against_max_connections(service_factory, tmp_path):
    jobs = tmp_path / "jobs"
    with socket.socket() as probe:  # the printer's port, for the flow's destination
        probe.bind(("127.0.0.1", 0))
        pport = probe.getsockname()[1]
    svc = service_factory(
        tcp("front", flow="forward", execute_on="disconnect", max_connections=20, refusal="BUSY ${reason}\n")
        + tcp("printer", flow="archive", execute_on="disconnect", listen=f"tcp:{pport}:interface=127.0.0.1")
        + "[[flow]]\nname = \"forward\"\nactions = [ { type = \"reply\", data = \"OK\\n\" },\n"
        + f"  {{ type = \"send_tcp\", destination = \"127.0.0.1:{pport}\" }} ]\n"
        + archive_flow(jobs)
    )
    front = svc.triggers["front"]
    started = time.monotonic()
    results = yield deferToThread(_clients, port_of(svc, "front"), 2000, 20)
    took = time.monotonic() - started
    yield wait_for(lambda: len(archived(jobs)) == 2000, timeout=90)
    print(f"\n[reply, send_tcp] 2000 clients at concurrency 20, max_connections 20: ok {results['ok']}, "
          f"refused {results['refused']}, other {results['other'][:3]}, evicted {front.counters.evicted}; "
          f"{took:.1f} s")
    assert results == {"ok": 2000, "refused": 0, "other": []}
    assert front.counters.connections_refused == 0
    assert sorted(archived(jobs)) == sorted(b"job %d" % i for i in range(2000))
