"""The serial trigger against a socat pseudo-terminal pair: records in, replies out, the pair re-created mid-run."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
import pytest_twisted
import serial  # type: ignore[import-untyped]
from twisted.internet.threads import deferToThread

from conftest import require_tool
from rawsvc.config import loads
from rawsvc.context import BuildContext
from rawsvc.errors import ConfigError
from rawsvc.service import RawService
from support import wait_until


def config(tmp_path, device: str, **keys) -> str:
    extra = "".join(f"{k} = {v}\n" for k, v in keys.items())
    text = f"""
[service]
state_dir = "{tmp_path}/state"

[[trigger]]
name = "scale"
type = "serial"
device = "{device}"
baudrate = 19200
parity = "even"
stopbits = 1
execute_on = "markers"
start = "\\u0002"
end = "\\u0003"
retry_delay = 0.1
max_retry_delay = 0.2
flow = "weigh"
{{extra}}
[[flow]]
name = "weigh"
actions = [
  {{ type = "file", folder = "{tmp_path}/out", name = "${{job_id}}.rec" }},
  {{ type = "reply", data = "ACK ${{data}}\\r\\n" }},
]
"""
    for k in keys:  # an override replaces the key above
        text = re.sub(rf"^{k} = .*\n", "", text, count=1, flags=re.M)
    return text.replace("{extra}", extra)


class PtyPair:
    """C{socat} joining two pseudo-terminals, linked as C{a} (rawsvc's) and C{b} (the device's)."""

    def __init__(self, tmp_path) -> None:
        self.exe = require_tool("socat")
        self.a, self.b = str(tmp_path / "ttyA"), str(tmp_path / "ttyB")
        self.proc: subprocess.Popen | None = None

    def up(self) -> None:
        self.proc = subprocess.Popen([self.exe, "-d", "-d", f"pty,raw,echo=0,link={self.a}",
                                      f"pty,raw,echo=0,link={self.b}"], stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while not (os.path.exists(self.a) and os.path.exists(self.b)):
            assert time.monotonic() < deadline, "socat made no pty pair"
            time.sleep(0.02)

    def down(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(10)
            self.proc = None
        deadline = time.monotonic() + 10
        while os.path.exists(self.a) or os.path.exists(self.b):
            assert time.monotonic() < deadline, "socat left its links"
            time.sleep(0.02)


def exchange(device: str, records: list[bytes], replies: int, timeout: float = 10.0) -> bytes:
    """As the device (on a thread): send each record framed STX..ETX, then read C{replies} lines back."""
    with serial.Serial(device, 19200, parity=serial.PARITY_EVEN, timeout=0.2) as line:
        for rec in records:
            line.write(b"noise\x02" + rec + b"\x03")
        got = b""
        deadline = time.monotonic() + timeout
        while got.count(b"\r\n") < replies and time.monotonic() < deadline:
            got += line.read(4096)
        return got


def outputs(tmp_path) -> list[bytes]:
    out = tmp_path / "out"
    return sorted(p.read_bytes() for p in out.iterdir()) if out.exists() else []


@pytest_twisted.inlineCallbacks
def test_records_in_replies_out_and_the_line_comes_back_after_the_pty_pair_is_re_created(tmp_path):
    pair = PtyPair(tmp_path)
    pair.up()
    text = config(tmp_path, pair.a)
    service = RawService(loads(text, str(tmp_path / "rawsvc.toml"), BuildContext()))
    service.startService()
    trigger = service.triggers["scale"]
    try:
        yield wait_until(lambda: trigger.status()["line"] == "open")
        first = [b"W1 12.5kg", b"W2 7.0kg", b"W3 0.1kg"]
        got = yield deferToThread(exchange, pair.b, first, 3)
        assert got == b"".join(b"ACK " + r + b"\r\n" for r in first)  # in order, noise dropped

        pair.down()  # the device goes away
        yield wait_until(lambda: trigger.status()["line"] == "backing_off")
        yield wait_until(lambda: trigger.status()["open_failures"] >= 2)  # tried, and it is not there
        pair.up()  # ... and comes back
        yield wait_until(lambda: trigger.status()["line"] == "open" and trigger.status()["opens"] == 2)

        second = [b"W4 1.0kg", b"W5 2.0kg"]
        got = yield deferToThread(exchange, pair.b, second, 2)
        assert got == b"ACK W4 1.0kg\r\nACK W5 2.0kg\r\n"
        assert outputs(tmp_path) == sorted(first + second)
        status = trigger.status()
        assert status["lines_lost"] == 1 and status["reopens"] == 1 and status["bytes_dropped"] == 5 * 5
        assert status["counters"]["jobs_ok"] == 5 and status["counters"]["jobs_failed"] == 0
    finally:
        yield service.stopService()
        pair.down()


@pytest_twisted.inlineCallbacks
def test_a_device_not_there_at_start_is_opened_when_it_appears(tmp_path):
    pair = PtyPair(tmp_path)
    text = config(tmp_path, pair.a)
    service = RawService(loads(text, str(tmp_path / "rawsvc.toml"), BuildContext()))
    service.startService()
    trigger = service.triggers["scale"]
    try:
        yield wait_until(lambda: trigger.status()["open_failures"] >= 1)
        assert trigger.status()["line"] == "backing_off" and "cannot open" in trigger.status()["last_error"]
        pair.up()
        yield wait_until(lambda: trigger.status()["line"] == "open")
        got = yield deferToThread(exchange, pair.b, [b"late"], 1)
        assert got == b"ACK late\r\n"
    finally:
        yield service.stopService()
        pair.down()


@pytest.mark.parametrize("keys, key", [
    ({"bytesize": 9}, "bytesize"),
    ({"stopbits": 3}, "stopbits"),
    ({"baudrate": 0}, "baudrate"),
    ({"max_retry_delay": 0.01}, "max_retry_delay"),
])
def test_bad_keys_are_config_errors_that_name_the_key(tmp_path, keys, key):
    with pytest.raises(ConfigError) as e:
        loads(config(tmp_path, "/dev/ttyUSB0", **keys), str(tmp_path / "rawsvc.toml"), BuildContext())
    assert key in str(e.value)


def test_a_bad_parity_is_a_config_error(tmp_path):
    text = config(tmp_path, "/dev/ttyUSB0").replace('parity = "even"', 'parity = "sometimes"')
    with pytest.raises(ConfigError) as e:
        loads(text, str(tmp_path / "rawsvc.toml"), BuildContext())
    assert "parity" in str(e.value)
