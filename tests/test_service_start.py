"""The real twistd process: a listener that cannot open stops start-up cleanly."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

from conftest import ROOT


def test_port_in_use_exits_non_zero_with_a_clear_line_and_no_traceback(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "rawsvc.toml"
        config.write_text(
            f'[service]\nstate_dir = "{tmp_path}/state"\nspool = false\n'
            f'[[trigger]]\nname = "a"\ntype = "tcp"\nlisten = "tcp:{port}:interface=127.0.0.1"\nflow = "f"\n'
            '[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n'
        )
        result = subprocess.run(
            [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=", "rawsvc", "--config", str(config)],
            capture_output=True, text=True, timeout=60, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT),
        )
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert f"trigger 'a' cannot listen on 'tcp:{port}:interface=127.0.0.1'" in output
    assert "Address already in use" in output
    assert "Traceback" not in output
