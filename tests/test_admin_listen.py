"""
An admin listener whose port is taken stops the start like a trigger's:
one line, exit status 1, no traceback, under the real twistd.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from conftest import ROOT

TRIGGER = (
    '[[trigger]]\nname = "a"\ntype = "tcp"\nlisten = "tcp:0:interface=127.0.0.1"\nflow = "f"\n'
    '[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n'
)


def _public_key_file(path) -> str:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from twisted.conch.ssh import keys

    key = keys.Key(Ed25519PrivateKey.generate()).public()
    path.write_bytes(key.toString("openssh") + b" admin\n")
    return str(path)


def _admin_section(kind: str, listen: str, tmp_path) -> str:
    if kind == "http":
        return f'[admin.http]\nlisten = "{listen}"\n'
    keys_file = _public_key_file(tmp_path / "admin_keys")
    return f'[admin.manhole]\nlisten = "{listen}"\nauthorized_keys = "{keys_file}"\n'


def _twistd(config, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=", "rawsvc", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=cwd, env=dict(os.environ, PYTHONPATH=ROOT),
    )


@pytest.mark.parametrize("kind", ["http", "manhole"])
def test_an_admin_port_in_use_stops_the_start_with_one_line_and_exit_1(tmp_path, kind):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listen = f"tcp:{port}:interface=127.0.0.1"
        config = tmp_path / "rawsvc.toml"
        config.write_text(f'[service]\nstate_dir = "{tmp_path}/state"\nspool = false\n' + TRIGGER
                          + _admin_section(kind, listen, tmp_path))
        result = _twistd(config, tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    line = (f"rawsvc: [admin.{kind}] cannot listen on '{listen}': "
            f"Couldn't listen on 127.0.0.1:{port}: [Errno 98] Address already in use.; not starting")
    assert line in output  # twistd sends stderr to its log
    assert "Traceback" not in output and "Unhandled Error" not in output


def test_an_admin_listener_that_cannot_listen_raises_listen_error_and_stops_cleanly():
    from twisted.internet.endpoints import TCP4ServerEndpoint
    from twisted.internet.protocol import Factory, Protocol

    from rawsvc.listening import Listener
    from rawsvc.errors import ListenError

    from twisted.internet import reactor

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        listener = Listener(TCP4ServerEndpoint(reactor, port, interface="127.0.0.1"),
                            Factory.forProtocol(Protocol), "[admin.http]", f"tcp:{port}")
        with pytest.raises(ListenError) as caught:
            listener.startService()
    assert str(caught.value).startswith(f"[admin.http] cannot listen on 'tcp:{port}': Couldn't listen on")
    assert not listener.running
    stopped = []
    listener.stopService().addCallback(stopped.append)
    assert stopped == [None]
