"""
The worked plugin example, examples/rawsvc-stx, as a user ships and runs it:
installed from its folder, found through its entry points by a real
``twistd -n rawsvc``, a frame sent with a real socket, the ACK/NAK bytes
and the flow's output file checked; then its own tests run with pytest.

How the install is made, and why: the folder is copied first (setuptools
writes build/ and *.egg-info/ into the source tree), then installed with
the test interpreter's pip into a temporary ``--target`` directory
(``--no-deps --no-build-isolation``: offline, rawsvc is already there), so
nothing lands in the test venv and no other test sees the plugin; the
processes that use it get that directory on ``PYTHONPATH``.  This works
the same from an editable checkout and from a normal install in CI.
"""

from __future__ import annotations

import functools
import importlib.metadata
import operator
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, require_module

EXAMPLE = os.path.join(ROOT, "examples", "rawsvc-stx")
IGNORE = shutil.ignore_patterns("build", "dist", "*.egg-info", "__pycache__", "*.pyc", ".pytest_cache")
STX, ETX, ACK, NAK = b"\x02", b"\x03", b"\x06", b"\x15"


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """(a copy of the example's folder, the directory it is installed in)."""
    require_module("setuptools")
    require_module("wheel")
    base = tmp_path_factory.mktemp("example")
    source = base / "rawsvc-stx"
    shutil.copytree(EXAMPLE, source, ignore=IGNORE)
    target = base / "site"
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
         "--no-warn-script-location", "--target", str(target), str(source)],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return source, target


def env_with(target) -> dict[str, str]:
    env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
    env["PYTHONPATH"] = os.pathsep.join([str(target), ROOT, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def xor_frame(data: bytes) -> bytes:
    body = data + ETX
    return STX + body + bytes([functools.reduce(operator.xor, body, 0)])


def test_the_example_installs_with_its_entry_points(example):
    _, target = example
    [dist] = [d for d in importlib.metadata.distributions(path=[str(target)]) if d.metadata["Name"] == "rawsvc-stx"]
    points = {(ep.group, ep.name, ep.value) for ep in dist.entry_points}
    assert points == {
        ("rawsvc.triggers", "stx-etx", "rawsvc_stx.trigger:StxEtxTrigger"),
        ("rawsvc.actions", "checksum", "rawsvc_stx.checksum:ChecksumAction"),
    }
    assert "rawsvc_stx" not in sys.modules  # the test process itself never imported it


def _wait_for_line(log_path, line: str, proc: subprocess.Popen, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log_path.read_text(errors="replace") if log_path.exists() else ""
        if line in text:
            return text
        if proc.poll() is not None:
            raise AssertionError(f"twistd exited {proc.returncode} before {line!r}:\n{text}")
        time.sleep(0.05)
    raise AssertionError(f"no {line!r} in the log within {timeout} s")


def _device(port: int, data: bytes, answers: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(data)
        got = b""
        while len(got) < answers:
            chunk = s.recv(16)
            if not chunk:
                break
            got += chunk
        return got


def test_twistd_runs_frames_through_the_plugin_trigger_and_action(example, tmp_path):
    _, target = example
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    frames = tmp_path / "frames"
    config = tmp_path / "rawsvc.toml"
    config.write_text(
        f'[service]\nstate_dir = "{tmp_path}/state"\n'
        f'[[trigger]]\nname = "scale"\ntype = "stx-etx"\nlisten = "tcp:{port}:interface=127.0.0.1"\n'
        'check = "xor"\nflow = "weigh"\n'
        '[[flow]]\nname = "weigh"\nactions = [\n'
        '  { type = "checksum", into = "crc" },\n'
        f'  {{ type = "file", folder = "{frames}", name = "frame-${{frame}}.txt", data = "${{data}} crc32=${{crc}}\\n" }},\n'
        "]\n"
    )
    log_path = tmp_path / "twistd.log"
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([twistd, "-n", "--pidfile=", "--logfile=-", "rawsvc", "--config", str(config)],
                                cwd=tmp_path, env=env_with(target), stdout=log, stderr=subprocess.STDOUT)
    try:
        _wait_for_line(log_path, "trigger scale (stx-etx) listening on", proc)
        answers = _device(port, xor_frame(b"W+0012.5kg") + STX + b"W+0099.9kg" + ETX + b"\x00", 2)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=60)
    text = log_path.read_text(errors="replace")
    assert answers == ACK + NAK, text
    assert (frames / "frame-1.txt").read_bytes() == b"W+0012.5kg crc32=b61d9919\n"
    assert sorted(p.name for p in frames.iterdir()) == ["frame-1.txt"]
    assert "dropped 10 bytes: check byte 0x00 does not match the frame's xor 0x" in text
    assert "rawsvc stopped" in text and "Traceback" not in text, text
    assert code == -signal.SIGTERM  # twistd ends by the signal it stopped for, once the service stopped


def test_the_example_s_own_tests_pass(example):
    source, target = example
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", "tests"],
        cwd=source, env=env_with(target), capture_output=True, text=True, timeout=300,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert " passed" in output and "failed" not in output and "error" not in output.lower(), output
