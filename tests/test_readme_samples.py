"""
README's console samples are what the commands print.

A sample is a ```console block that README marks ``<!-- sample: NAME -->``:
its ``$ `` lines are commands (``> `` lines continue one), the lines after
each its output (stdout and stderr).  Each is run with bash, in a copy of
the repository's ``etc/`` whose root README calls ``/home/me/rawsvc``, with
``rawsvc`` on PATH; the example config's ports are moved to free ones (and
so are the commands').  Before comparing, job ids, times, pids and trailing
blanks are replaced by placeholders on both sides.

Error lines that README quotes in its prose (``…`` standing for any text)
are checked against the real twistd's output the same way.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, require_tool
from pg_support import free_port

README_ROOT = "/home/me/rawsvc"
EXAMPLE_PORTS = (9200, 9201, 8080)
TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"

_SAMPLE = re.compile(r"<!-- sample: (?P<name>[\w-]+) -->\n```console\n(?P<body>.*?)```\n", re.S)
_PLACEHOLDERS = [
    (re.compile(r"\b[0-9a-f]{13}-[0-9a-f]{8}\b"), "<job id>"),
    (re.compile(r"\b\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\b"), "<time>"),
    (re.compile(r"\bpid \d+\b"), "pid <pid>"),
]


def readme() -> str:
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as f:
        return f.read()


def sample(name: str) -> list[tuple[str, str]]:
    """The (command, output) steps of README's sample C{name}."""
    found = {m.group("name"): m.group("body") for m in _SAMPLE.finditer(readme())}
    assert name in found, f"README has no <!-- sample: {name} --> console block (it has: {', '.join(found)})"
    steps: list[tuple[str, list[str]]] = []
    for line in found[name].splitlines():
        if line.startswith("$ "):
            steps.append((line[2:], []))
        elif line.startswith("> ") and steps and not steps[-1][1]:
            steps[-1] = (steps[-1][0] + "\n" + line[2:], [])
        else:
            steps[-1][1].append(line)
    return [(command, "\n".join(out)) for command, out in steps]


def normal(text: str) -> str:
    for pattern, placeholder in _PLACEHOLDERS:
        text = pattern.sub(placeholder, text)
    return "\n".join(line.rstrip() for line in text.strip("\n").splitlines())


class Checkout:
    """A copy of the repository's etc/ under tmp, the example's ports moved; runs README's commands there."""

    def __init__(self, tmp_path) -> None:
        self.root = tmp_path / "rawsvc"
        shutil.copytree(os.path.join(ROOT, "etc"), self.root / "etc")
        self.ports = {port: free_port() for port in EXAMPLE_PORTS}
        config = self.root / "etc" / "rawsvc.toml"
        config.write_text(self.moved(config.read_text()))
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        shim = bin_dir / "rawsvc"
        shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m rawsvc "$@"\n')
        shim.chmod(0o755)
        self.env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
                        PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))

    def moved(self, text: str) -> str:
        for port, free in self.ports.items():
            text = re.sub(rf"\b{port}\b", str(free), text)
        return text

    def run(self, command: str) -> str:
        result = subprocess.run(["bash", "-c", self.moved(command)], cwd=self.root, env=self.env, timeout=60,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        return result.stdout.replace(str(self.root), README_ROOT)

    def check(self, name: str, settle: float = 0.0) -> None:
        """Run sample C{name}; a mismatch shows what to paste.  C{settle}: seconds a `rawsvc jobs` may take to agree."""
        for command, expected in sample(name):
            deadline = time.monotonic() + settle
            while True:
                actual = self.run(command)
                if normal(actual) == normal(expected) or time.monotonic() >= deadline:
                    break
                time.sleep(0.2)
            assert normal(actual) == normal(expected), (
                f"README sample {name!r}, command {command!r}:\n--- README\n{expected}\n--- actual\n{actual}"
            )

    def twistd(self, *args: str) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-c", TWISTD, "-n", "--pidfile=", "rawsvc", *args], cwd=self.root,
                                env=self.env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def wait_listening(port: int, proc: subprocess.Popen, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"twistd exited {proc.returncode}:\n{proc.stdout.read() if proc.stdout else ''}"
        try:
            socket.create_connection(("127.0.0.1", port), 0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port} after {timeout} s")


def stop(proc: subprocess.Popen) -> str:
    """SIGTERM (when still running); its output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    return finish(proc)


def finish(proc: subprocess.Popen) -> str:
    """Its output once it has exited by itself (killed, and the test failed, past a minute)."""
    try:
        out, _ = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("twistd did not exit within 60 s") from None
    return out


_LOG_PREFIX = re.compile(r"^\S+ \[[^\]]+\] ")


def said(out: str) -> list[str]:
    """The C{rawsvc: } lines of a twistd's output (under twistd -n they are log lines), normalized."""
    lines = (_LOG_PREFIX.sub("", line) for line in out.splitlines())
    return [normal(line) for line in lines if line.startswith("rawsvc: ")]


def quoted_line(starts: str) -> re.Pattern[str]:
    """README's prose quote `rawsvc: …` that begins with C{starts}, as a pattern (… is any text)."""
    m = re.search(r"`(" + re.escape(starts) + r"[^`]*)`", readme().replace("\n", " "))
    assert m, f"README quotes no line beginning {starts!r}"
    text = normal(m.group(1))
    return re.compile(".*".join(re.escape(part) for part in text.split("…")))


@pytest.fixture(scope="module")
def running(tmp_path_factory):
    """The example config under the real twistd, in a checkout copy."""
    checkout = Checkout(tmp_path_factory.mktemp("samples"))
    proc = checkout.twistd("--config", "etc/rawsvc.toml")
    try:
        wait_listening(checkout.ports[9201], proc)
        yield checkout
    finally:
        stop(proc)


def test_the_check_config_sample(tmp_path):
    Checkout(tmp_path).check("check-config")


def test_the_try_it_sample_against_the_running_example(running):
    require_tool("nc")
    running.check("try-it", settle=5.0)


def test_the_line_a_second_instance_on_one_state_dir_prints(running):
    proc = running.twistd("--config", "etc/rawsvc.toml")
    out = finish(proc).replace(str(running.root), README_ROOT)
    assert proc.returncode == 1
    pattern = quoted_line("rawsvc: state_dir ")
    assert any(pattern.fullmatch(line) for line in said(out)), (pattern.pattern, out)


def test_the_line_a_listener_that_cannot_open_prints(tmp_path):
    checkout = Checkout(tmp_path)
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", checkout.ports[9200]))
        holder.listen()
        proc = checkout.twistd("--config", "etc/rawsvc.toml")
        out = finish(proc)
    assert proc.returncode == 1
    pattern = quoted_line("rawsvc: … cannot listen on")
    assert any(pattern.fullmatch(line) for line in said(out)), (pattern.pattern, out)
