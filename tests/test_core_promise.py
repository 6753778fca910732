"""
The core promise (issue 12), end to end, as one guard for refactoring: a
real C{twistd -n rawsvc} (spool on, default settings but short back-offs and
a short stop grace) runs a C{printer} trigger whose flow is C{send_tcp} to a
fake printer that misbehaves on a schedule (refuses, resets mid-job, resets
right after EOF, accepts late).  Random binary jobs (0x04 bytes, 100 B to
3 MB) arrive from CUPS's socket backend and from a write-and-close Python
client in concurrent streams; the service is stopped with SIGTERM and killed
with SIGKILL along the way, and restarted each time.  Every acknowledged job
must be printed byte-identical, in its stream's order, never twice without
cause, never over two connections at once, and listed done once.
"""

from __future__ import annotations

import hashlib
import json
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time

import pytest

from conftest import require_tool
from delivery_support import free_port, jobs, start_twistd, stop, wait_for

CUPS_SOCKET = "/usr/lib/cups/backend/socket"
JOBS_PER_STREAM = 8
STREAMS = ("cups", "cups", "close")
SMALL, BIG = (100, 60_000), (1_200_000, 3_000_000)  # no middle sizes: see FakePrinter
RESET_AFTER = 256 * 1024
#: A job sent this near the SIGKILL is not counted as acknowledged: a
#: full-close client cannot tell a stored job from a dropped one, and CUPS's
#: backend exits 0 once its last byte is in the kernel, even if the printer
#: held it unread (busy = queue) when the process died.
MARGIN = 3.0


TCP_ESTABLISHED = 1


def tcp_state(conn: socket.socket) -> int:
    try:
        return conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 1)[0]
    except OSError:
        return 0


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def make_jobs(seed: int) -> list[list[bytes]]:
    rnd = random.Random(seed)
    sizes: set[int] = set()
    streams = []
    for _ in STREAMS:
        stream = []
        for i in range(JOBS_PER_STREAM):
            lo, hi = BIG if i % 4 == 2 else SMALL
            size = rnd.randrange(lo, hi)
            while size in sizes:  # sizes are unique: they match the CLI's rows to jobs
                size += 1
            sizes.add(size)
            data = bytearray(rnd.randbytes(size))
            for at in rnd.sample(range(1, size), max(3, size // 200)):
                data[at] = 0x04
            data[0] = 0x1F  # not PostScript, PJL or ZPL: 0x04 is data
            stream.append(bytes(data))
        streams.append(stream)
    return streams


class FakePrinter(threading.Thread):
    """
    Records every connection's bytes (C{prints}: complete jobs with their time;
    C{partial}: connections cut short) and flags a second connection opened
    while an earlier one is still established.  By connection number: C{n % 7 == 1} accepted late (1.5 s),
    C{n % 7 == 3} reset mid-job once 256 KiB are read (only big jobs get that
    far; a small receive buffer keeps the rest unacknowledged, so the sender
    must retry), C{n % 7 == 5} reset right after EOF (SO_LINGER 0: every byte
    was read, the job is printed and must not be sent again).  C{down()} /
    C{up()} close and reopen the port; C{down()} first serves the connections
    waiting in the backlog, whose bytes its kernel already acknowledged (a
    printer that dropped those would lose jobs the sender rightly counts as
    delivered).
    """

    def __init__(self, port: int, schedule: bool = True) -> None:
        super().__init__(daemon=True)
        self.port, self.schedule = port, schedule
        self.prints: list[tuple[float, bytes]] = []
        self.partial = 0
        self.log: list[tuple] = []
        self.overlaps = 0
        self.connections = 0
        self.open: dict[int, socket.socket] = {}
        self.overlap_log: list[tuple] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.stopped = False
        self.want_down = threading.Event()
        self.is_down = threading.Event()
        self.up()

    def up(self) -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)  # inherited: no autotuning
        s.bind(("127.0.0.1", self.port))
        s.listen(8)
        s.settimeout(0.1)
        self.listener = s

    def down(self) -> None:
        """Close the port, from the accepting thread, once its backlog is served."""
        if not self.is_alive():
            self._close()
            return
        self.is_down.clear()
        self.want_down.set()
        assert self.is_down.wait(10), "the fake printer did not close its port"

    def _close(self) -> None:
        listener, self.listener = self.listener, None
        if listener is not None:
            listener.close()

    def _drain_and_close(self) -> None:
        listener = self.listener
        assert listener is not None
        listener.setblocking(False)
        while True:
            try:
                conn, _ = listener.accept()
            except (BlockingIOError, InterruptedError):
                break
            conn.setblocking(True)
            self._accepted(conn)
        self._close()
        self.want_down.clear()
        self.is_down.set()

    def run(self) -> None:
        while not self.stopped:
            listener = self.listener
            if listener is None:
                time.sleep(0.05)
                continue
            if self.want_down.is_set():
                self._drain_and_close()
                continue
            try:
                conn, _ = listener.accept()
            except OSError:
                continue
            n = self._accepted(conn)
            if self.schedule and (n + 1) % 7 == 1:
                time.sleep(1.5)  # silent: the next connection waits in the backlog

    def _accepted(self, conn: socket.socket) -> int:
        with self.lock:
            n = self.connections
            self.connections += 1
            # An earlier connection still ESTABLISHED (no FIN from the sender
            # yet) is a second connection at once.
            if any(tcp_state(c) == TCP_ESTABLISHED for c in self.open.values()):
                self.overlaps += 1
                self.overlap_log.append((n, time.monotonic(), sorted(self.open)))
            self.open[n] = conn
        threading.Thread(target=self.serve, args=(conn, n), daemon=True).start()
        return n

    def serve(self, conn: socket.socket, n: int) -> None:
        chunks, got, eof = [], 0, False
        conn.settimeout(30)
        try:
            while True:
                data = conn.recv(65536)
                if not data:
                    eof = True
                    break
                chunks.append(data)
                got += len(data)
                if (n % 7 == 3 if self.schedule else n == 0) and got >= RESET_AFTER:
                    break
        except OSError as e:
            err = e
        else:
            err = None
        with self.lock:
            self.log.append((n, got, eof, repr(err)))
            self.open.pop(n, None)
            if eof:
                self.prints.append((time.monotonic(), b"".join(chunks)))
            else:
                self.partial += 1
        if not eof or (self.schedule and n % 7 == 5):
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    def stop(self) -> None:
        self.stopped = True
        self.join(5)
        self.down()


def write_config(tmp_path, trigger_port: int, printer_port: int) -> str:
    path = tmp_path / "rawsvc.toml"
    path.write_text(f"""
[service]
state_dir = "{tmp_path}/state"
stop_grace = 1

[[trigger]]
name = "p"
type = "printer"
listen = "tcp:{trigger_port}:interface=127.0.0.1"
flow = "forward"
queue_depth = 16  # past queue_depth a held CUPS job already written is refused and lost (reported)

[[flow]]
name = "forward"

[[flow.actions]]
type = "send_tcp"
destination = "127.0.0.1:{printer_port}"
retry_delay = 0.1
max_retry_delay = 0.5
""")
    return str(path)


class Stream(threading.Thread):
    """Sends its jobs one after another; records (job, acknowledged, start, end) per job."""

    def __init__(self, kind: str, number: int, port: int, payloads: list[bytes], folder) -> None:
        super().__init__(daemon=True)
        self.kind, self.number, self.port, self.payloads, self.folder = kind, number, port, payloads, folder
        self.results: list[tuple[bytes, bool, float, float]] = []
        self.error: BaseException | None = None
        self.gate = threading.Event()
        self.gate.set()
        self.busy = False

    def run(self) -> None:
        try:
            for i, data in enumerate(self.payloads):
                self.gate.wait()
                self.busy = True
                t0 = time.monotonic()
                ok = self.cups(i, data) if self.kind == "cups" else self.close(data)
                self.results.append((data, ok, t0, time.monotonic()))
                self.busy = False
        except BaseException as e:  # reported by the test
            self.error = e

    def cups(self, i: int, data: bytes) -> bool:
        job = self.folder / f"s{self.number}-{i}.bin"
        job.write_bytes(data)
        result = subprocess.run(
            ["sh", "-c", f"exec '{CUPS_SOCKET}' {i + 1} user title 1 '' '{job}' "
                         f"3>'{self.folder}/back{self.number}.out' 4</dev/null"],
            env={"DEVICE_URI": f"socket://127.0.0.1:{self.port}/?snmp=no", "PATH": "/usr/bin:/bin"},
            capture_output=True, timeout=120,
        )
        return result.returncode == 0

    def close(self, data: bytes) -> bool:
        deadline = time.monotonic() + 30
        while True:
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=10)
                break
            except OSError:
                if time.monotonic() > deadline:
                    return False
                time.sleep(0.2)
        try:
            s.sendall(data)
        except OSError:
            return False
        finally:
            s.close()
        return True


def test_every_acknowledged_job_is_printed_once_in_order_through_faults_and_restarts(tmp_path):
    require_tool(CUPS_SOCKET)
    started = time.monotonic()
    trigger_port, printer_port = free_port(), free_port()
    config = write_config(tmp_path, trigger_port, printer_port)
    state_dir, log_path = str(tmp_path / "state"), str(tmp_path / "twistd.log")
    payloads = make_jobs(seed=12)
    total = sum(map(len, payloads))
    printer = FakePrinter(printer_port)
    printer.start()
    service = start_twistd(config, log_path)
    events: list[tuple[str, float, float]] = []  # (signal, sent at, restarted at)
    streams = [Stream(kind, n, trigger_port, payloads[n], tmp_path) for n, kind in enumerate(STREAMS)]
    done = lambda: sum(len(s.results) for s in streams)  # noqa: E731
    try:
        wait_for(lambda: socket_open(trigger_port), 20, "the printer trigger listening")
        for s in streams:
            s.start()

        wait_for(lambda: done() >= total // 3, 60, "a third of the jobs sent")
        # No client held in the printer's queue at the SIGTERM: a held client
        # whose whole job sat unread in the kernel is closed cleanly by the
        # stop (connection.py _maybe_close), CUPS exits 0 and the job is lost
        # (reported, not yet guarded here).  The stop meets a delivery backlog.
        for s in streams:
            s.gate.clear()
        wait_for(lambda: not any(s.busy for s in streams), 60, "the streams between jobs")
        sent_ok = sum(ok for s in streams for _, ok, _, _ in s.results)
        wait_for(lambda: len(jobs(state_dir)) >= sent_ok, 30,
                 f"every job sent so far stored ({[[ok for _, ok, _, _ in s.results] for s in streams]})")
        t = time.monotonic()
        assert stop(service, signal.SIGTERM) == -signal.SIGTERM
        rows = jobs(state_dir)
        assert not [r for r in rows.values() if r["state"] == "failed"], "a job was marked failed by the stop"
        service = start_twistd(config, log_path)
        events.append(("SIGTERM", t, time.monotonic()))
        # The printer goes off for 3 s once every job so far is delivered and
        # accepted (closing a listener drops what waits in its backlog, which
        # the sender rightly counts as delivered): new jobs meet a closed port.
        wait_for(lambda: all(r["state"] == "done" for r in jobs(state_dir).values()), 60, "the backlog delivered")
        wait_for(lambda: len(printer.log) >= len(jobs(state_dir)), 30, "the printer's backlog accepted")
        printer.down()
        threading.Timer(3, printer.up).start()
        for s in streams:
            s.gate.set()

        wait_for(lambda: done() >= 2 * total // 3, 90, "two thirds of the jobs sent")
        t = time.monotonic()
        service.kill()
        service.wait(10)
        service = start_twistd(config, log_path)
        events.append(("SIGKILL", t, time.monotonic()))

        for s in streams:
            s.join(180)
            assert not s.is_alive(), f"stream {s.number} did not finish"
            assert s.error is None, s.error

        def acknowledged(stream: Stream) -> list[bytes]:
            out = []
            for data, ok, t0, t1 in stream.results:
                near = any(t0 - MARGIN <= at <= t1 + MARGIN for e, at, _ in events if e == "SIGKILL")
                if ok and not near:
                    out.append(data)
            return out

        acked = [acknowledged(s) for s in streams]
        wanted = {sha(d) for a in acked for d in a}
        printed = lambda: {sha(d) for _, d in printer.prints}  # noqa: E731
        try:
            wait_for(lambda: wanted <= printed(), 60, "every acknowledged job at the printer")
        except AssertionError:
            missing = [(n, i, len(d)) for n, st in enumerate(payloads) for i, d in enumerate(st) if sha(d) in wanted - printed()]
            raise AssertionError(f"acknowledged but not printed (stream, job, size): {missing}; "
                                 f"printer {printer.log}; events {[(e, round(a - started, 1)) for e, a, _ in events]}; "
                                 f"results {[[(ok, round(a - started, 1), round(b - started, 1)) for _, ok, a, b in s.results] for s in streams]}") from None
        wait_for(lambda: all(r["state"] == "done" for r in jobs(state_dir).values()), 30, "every job done")

        counts: dict[str, int] = {}
        for _, d in printer.prints:
            counts[sha(d)] = counts.get(sha(d), 0) + 1
        repeated = {h: c for h, c in counts.items() if c > 1}
        all_sent = {sha(d): d for stream in payloads for d in stream}
        n_acked = sum(map(len, acked))
        print(f"\nsent {total}, acknowledged {n_acked}, printed {len(set(counts) & set(all_sent))}, "
              f"repeated {sum(c - 1 for c in repeated.values())}, lost {len(wanted - set(counts))}, "
              f"connections {printer.connections}, cut short {printer.partial}, "
              f"{time.monotonic() - started:.1f} s")

        # An empty connection is no print: a sender killed (or giving up) after the printer's kernel
        # completed the handshake, but before a byte was written, closes a socket that sits in the
        # printer's backlog; a lost job is still caught as missing above.
        strangers = [d for _, d in printer.prints if d and sha(d) not in all_sent]
        assert not strangers, f"the printer got a job nobody sent (not byte-identical): {[_closest(d, all_sent.values()) for d in strangers]}"
        assert printer.overlaps == 0, (f"two connections to the printer at once: {printer.overlap_log}; "
                                       f"events {[(e, round(a - started, 1)) for e, a, _ in events]}; t0 {started}")
        assert max(counts.values()) <= 2, "a job printed more than twice"
        # A repeat only for the delivery the SIGKILL cut off: first print before it, again after it.
        _, kill_at, _ = events[1]
        for h in repeated:
            times = [at for at, d in printer.prints if sha(d) == h]
            # (the first may complete just after the kill: the kernel still sends what the process wrote)
            # (or from the backlog of a silent printer, 1.5 s)
            assert times[0] <= kill_at + 5 and times[1] > kill_at, "a job printed twice without a kill between"
        assert len(repeated) <= 1, "more repeats than deliveries in flight at the kill"

        for n, stream in enumerate(acked):  # per-stream order on the printer (repeats collapsed)
            mine = {sha(d) for d in payloads[n]}
            seen: list[str] = []
            for _, d in printer.prints:
                h = sha(d)
                if h in mine and h not in seen:
                    seen.append(h)
            order = [h for h in seen if h in {sha(d) for d in stream}]
            assert order == [sha(d) for d in stream], f"stream {n}'s jobs printed out of order"

        out = subprocess.run(
            [*rawsvc_cmd(), "jobs", "--state-dir", state_dir, "--state", "done", "--json", "--limit", "0"],
            capture_output=True, timeout=30,
        )
        assert out.returncode == 0, out.stderr
        rows_done = [json.loads(line) for line in out.stdout.splitlines()]
        sizes = [r["size"] for r in rows_done]
        for stream in acked:
            for d in stream:
                assert sizes.count(len(d)) == 1, f"job of {len(d)} bytes listed {sizes.count(len(d))} times"
        assert all(r["state"] == "done" for r in rows_done)
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        printer.stop()


def socket_open(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _closest(data: bytes, sent) -> str:
    """How a print differs from the sent job it resembles most (for the failure message)."""
    def common(a: bytes, b: bytes) -> int:
        n = 0
        while n < min(len(a), len(b)) and a[n] == b[n]:
            n += 1
        return n
    best = max(sent, key=lambda d: common(d, data))
    return f"printed {len(data)} bytes, closest sent {len(best)} bytes, same for the first {common(best, data)}"


def rawsvc_cmd() -> list[str]:
    return [sys.executable, "-m", "rawsvc"]


def test_a_reset_mid_job_with_the_tail_in_the_kernel_is_retried(tmp_path):
    """
    The smallest reproduction of what the test above found: with default
    settings send_tcp reports "delivered" once its last byte is handed to the
    kernel and closes, though megabytes may still wait unacknowledged in the
    send queue; a printer that resets then (here: after 256 KiB of 2 MB)
    never prints the job, and it is not retried.  The next job's connection
    also opens while the first is still established at the printer.
    """
    trigger_port, printer_port = free_port(), free_port()
    config = write_config(tmp_path, trigger_port, printer_port)
    state_dir, log_path = str(tmp_path / "state"), str(tmp_path / "twistd.log")
    printer = FakePrinter(printer_port, schedule=False)  # resets its first connection mid-job
    printer.start()
    service = start_twistd(config, log_path)
    try:
        big = make_jobs(seed=12)[0][2]
        stream = Stream("close", 0, trigger_port, [big], tmp_path)
        stream.run()
        assert stream.results and stream.results[0][1]
        wait_for(lambda: [r["state"] for r in jobs(state_dir).values()] == ["done"], 30, "the job done")
        wait_for(lambda: len(printer.log) >= 2, 10, f"a second attempt after the reset (printer saw {printer.log})")
        assert [d for _, d in printer.prints] == [big]
    finally:
        if service.poll() is None:
            service.kill()
            service.wait()
        printer.stop()
