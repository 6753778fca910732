"""Every example config in etc/ passes check-config, and each has its own ports and state_dir."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys
import tomllib

import pytest

from conftest import ROOT

CONFIGS = sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, "etc", "*.toml")))


@pytest.mark.parametrize("path", CONFIGS)
def test_example_config_passes_check_config(path):
    result = subprocess.run([sys.executable, "-m", "rawsvc", "check-config", path],
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{path}: OK")
    assert "Traceback" not in result.stderr


def _listen_ports(config: dict) -> list[str]:
    listens = [t.get("listen", "") for t in config.get("trigger", [])]
    listens += [a.get("listen", "") for a in config.get("admin", {}).values()]
    ports = []
    for listen in listens:
        m = re.match(r"(tcp|ssl|udp):(\d+)", listen)
        if m:
            ports.append(f"{'udp' if m.group(1) == 'udp' else 'tcp'}/{m.group(2)}")
    return ports


def test_example_configs_use_their_own_ports_and_state_dirs():
    seen_ports: dict[str, str] = {}
    seen_dirs: dict[str, str] = {}
    for path in CONFIGS:
        with open(os.path.join(ROOT, path), "rb") as f:
            config = tomllib.load(f)
        for port in _listen_ports(config):
            assert port not in seen_ports, f"{path} and {seen_ports[port]} both listen on {port}"
            seen_ports[port] = path
        state_dir = config.get("service", {}).get("state_dir", "")
        assert state_dir not in seen_dirs, f"{path} and {seen_dirs.get(state_dir)} share state_dir {state_dir!r}"
        seen_dirs[state_dir] = path
    assert len(CONFIGS) >= 5
