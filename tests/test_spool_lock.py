"""
One owner per state_dir, with the real C{twistd -n rawsvc}: a second
instance on the same state_dir refuses to start with one line naming the
first one's pid; the first delivers every job once; after a SIGKILL of the
first, the kernel has released the lock and a new instance starts.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time

from test_spool_restart import Printer, free_port, start_twistd, wait_for

JOBS = 10


def write_config(path, state_dir: str, trigger_port: int, printer_port: int) -> str:
    path.write_text(f"""
[service]
state_dir = "{state_dir}"

[[trigger]]
name = "labels"
type = "tcp"
listen = "tcp:{trigger_port}:interface=127.0.0.1"
execute_on = "delimiter"
delimiter = "\\n"
flow = "forward"

[[flow]]
name = "forward"
actions = [
  {{ type = "reply", data = "OK ${{job_id}}\\n" }},
  {{ type = "send_tcp", destination = "127.0.0.1:{printer_port}", retry_delay = 0.05 }},
]
""")
    return str(path)


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def send_job(port: int, body: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(body + b"\n")
        buf = b""
        while b"\n" not in buf:
            data = sock.recv(4096)
            if not data:
                break
            buf += data
    return buf


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_a_second_instance_on_one_state_dir_refuses_to_start_and_the_first_delivers_once(tmp_path):
    state_dir = str(tmp_path / "state")
    port_a, port_b, port_c, printer_port = free_port(), free_port(), free_port(), free_port()
    config_a = write_config(tmp_path / "a.toml", state_dir, port_a, printer_port)
    config_b = write_config(tmp_path / "b.toml", state_dir, port_b, printer_port)
    config_c = write_config(tmp_path / "c.toml", state_dir, port_c, printer_port)
    printer = Printer(printer_port)
    printer.start()
    first = start_twistd(config_a, str(tmp_path / "a.log"))
    procs = [first]
    try:
        wait_for(lambda: listening(port_a), 30, "the first instance to listen")
        second = start_twistd(config_b, str(tmp_path / "b.log"))
        procs.append(second)
        assert second.wait(30) == 1
        out = (tmp_path / "b.log").read_text()
        line = f"rawsvc: state_dir {state_dir} is in use by pid {first.pid} (another rawsvc); not starting"
        assert line in out
        assert "Traceback" not in out
        assert not listening(port_b)

        bodies = [f"job {i:02d}".encode() for i in range(JOBS)]
        for body in bodies:
            assert send_job(port_a, body).startswith(b"OK ")
        wait_for(lambda: len(printer.received) >= JOBS, 30, "every job at the printer")
        time.sleep(0.3)  # room for a duplicate to show up
        assert sorted(printer.received) == bodies  # each exactly once
        assert first.poll() is None  # the first keeps running

        first.send_signal(signal.SIGKILL)
        first.wait(10)
        third = start_twistd(config_c, str(tmp_path / "c.log"))
        procs.append(third)
        wait_for(lambda: listening(port_c), 30, "a new instance after the SIGKILL")
        assert third.poll() is None
        assert (tmp_path / "state" / "lock").read_text().strip() == str(third.pid)
        assert os.stat(tmp_path / "state" / "lock").st_mode & 0o777 == 0o600
    finally:
        for proc in procs:
            stop(proc)
        printer.stopped = True
        printer.join(5)
