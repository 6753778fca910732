"""etc/rawsvc.service runs what README documents and installs from the checkout."""

from __future__ import annotations

import fnmatch
import re
import shlex

import pytest
from conftest import ROOT

UNIT = f"{ROOT}/etc/rawsvc.service"
VENV_BIN = "/opt/rawsvc/bin/"


def unit_value(key: str) -> str:
    [value] = re.findall(rf"(?m)^{key}=(.*)$", open(UNIT).read())
    return value.strip()


def readme_systemd_command() -> str:
    readme = open(f"{ROOT}/README.md").read()
    section = readme[readme.index("### systemd"):]
    section = section[:section.index("\n#", 1)]
    command = re.search(r"runs `([^`]+)`", section, re.S)
    assert command, "README's systemd section names no command"
    return " ".join(command.group(1).split())


def test_exec_start_runs_the_command_readme_documents():
    start = unit_value("ExecStart")
    assert start.startswith(VENV_BIN)
    assert start[len(VENV_BIN):] == readme_systemd_command()
    config = shlex.split(start)[shlex.split(start).index("--config") + 1]
    assert unit_value("ExecStartPre") == f"{VENV_BIN}rawsvc check-config {config}"


def test_install_steps_install_from_the_checkout_not_from_an_index():
    header = [line[1:].strip() for line in open(UNIT) if line.startswith("#")]
    installs = [line for line in header if "pip install" in line]
    assert installs == [f"python3 -m venv /opt/rawsvc && {VENV_BIN}pip install ."]
    assert f"{VENV_BIN}rawsvc plugin-cache" in " ".join(header)


@pytest.mark.parametrize("path", ["twistd.pid", "twistd.log", "twistd.log.1", "etc/admin_keys"])
def test_what_twistd_and_the_manhole_leave_is_ignored_by_git(path):
    patterns = [line.strip() for line in open(f"{ROOT}/.gitignore") if line.strip() and not line.startswith("#")]
    assert any(fnmatch.fnmatchcase(path, p.lstrip("/")) for p in patterns), f"{path} is not in .gitignore"
