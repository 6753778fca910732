"""The rawsvc command: check-config and --version."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rawsvc import __version__
from rawsvc.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_CONFIG = os.path.join(ROOT, "etc", "rawsvc.toml")

GOOD = """
[[trigger]]
name = "orders"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "archive"

[[flow]]
name = "archive"
actions = [ { type = "file", folder = "var/jobs" }, { type = "log" } ]

[[flow]]
name = "label"
[[flow.actions]]
type = "parse"
regex = '^(?P<sku>\\w+)$'
"""

# Five different mistakes, one key each.
FIVE_MISTAKES = """
[service]
histroy = 10

[[trigger]]
name = "orders"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "archive"

[[flow]]
name = "archive"
actions = [
  { type = "file", folder = "var/jobs", encoding = "ebcdic" },
  { type = "parse", regex = "(?P<sku>" },
  { type = "teleport" },
  { type = "log", level = 3 },
]
"""


@pytest.fixture
def write(tmp_path):
    def write(text: str, name: str = "rawsvc.toml") -> str:
        path = tmp_path / name
        path.write_text(text)
        return str(path)

    return write


def test_check_config_on_a_good_file_exits_0_with_a_one_line_summary(write, capsys):
    path = write(GOOD)
    assert main(["check-config", path]) == 0
    out, err = capsys.readouterr()
    assert out.count("\n") == 1 and err == ""
    assert out.startswith(f"{path}: OK: 1 trigger(s) [orders (tcp)]")
    assert "2 flow(s) [archive, label]" in out


def test_check_config_lists_every_error_and_exits_1(write, capsys):
    path = write(FIVE_MISTAKES)
    assert main(["check-config", path]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert lines[0] == f"{path}: 5 error(s):"
    errors = [line.strip() for line in lines[1:]]
    assert len(errors) == 5
    for key in ["histroy", "encoding", "regex", "type", "level"]:
        assert sum(f"key '{key}'" in e for e in errors) == 1, (key, errors)
    assert all(e.startswith(f"{path}: ") for e in errors)


def test_check_config_on_a_missing_file_exits_1(tmp_path, capsys):
    assert main(["check-config", str(tmp_path / "nope.toml")]) == 1
    assert "cannot read config" in capsys.readouterr().err


def test_check_config_on_a_syntax_error_exits_1_naming_the_line(write, capsys):
    path = write("[service]\nstate_dir = \n")
    assert main(["check-config", path]) == 1
    assert "line 2" in capsys.readouterr().err


def test_check_config_starts_nothing(write, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = write('[service]\nstate_dir = "state"\n' + GOOD)
    assert main(["check-config", path]) == 0
    assert not (tmp_path / "state").exists()
    assert not (tmp_path / "var").exists()


def test_version_prints_the_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out == f"rawsvc {__version__}\n"


def test_no_command_prints_help_and_exits_2(capsys):
    assert main([]) == 2
    assert "check-config" in capsys.readouterr().err


def test_check_config_as_a_process_prints_no_traceback(write):
    path = write(FIVE_MISTAKES)
    result = subprocess.run([sys.executable, "-m", "rawsvc", "check-config", path],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert result.stderr.count(f"{path}: ") == 6  # the heading and five errors


@pytest.mark.skipif(not os.path.exists(SHIPPED_CONFIG), reason="etc/rawsvc.toml is not written yet")
def test_shipped_config_passes_check_config():
    result = subprocess.run([sys.executable, "-m", "rawsvc", "check-config", "etc/rawsvc.toml"],
                            capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("etc/rawsvc.toml: OK")
    assert "Traceback" not in result.stderr
