"""
The commands that read a state directory take it from the validated config
(rawsvc.config.service_config), report a broken config as check-config does
(exit 2), and name the absolute state_dir they use.
"""

from __future__ import annotations

import os

import pytest
import pytest_twisted

from rawsvc.cli import main
from rawsvc.config import DEFAULT_CONFIG, service_config
from rawsvc.errors import ConfigError
from rawsvc.flow import Flow
from rawsvc.job import Job, Payload
from rawsvc.spool.sink import SpoolSink
from rawsvc.spool.store import Store


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def config(tmp_path, text: str, name: str = "etc/x.toml") -> str:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


# service_config ------------------------------------------------------------


def test_a_relative_state_dir_is_taken_from_the_config_files_folder(tmp_path, monkeypatch):
    path = config(tmp_path, '[service]\nstate_dir = "../var/x"\nhistory = 7\n')
    monkeypatch.chdir("/")
    found = service_config(path)
    assert found.state_dir == str(tmp_path / "var" / "x")
    assert found.settings.history == 7 and found.path == path


def test_without_a_path_the_default_config_is_read_when_it_exists(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert service_config().path is None
    assert service_config().state_dir == str(tmp_path / "var" / "rawsvc")
    config(tmp_path, '[service]\nstate_dir = "/srv/spool"\n', DEFAULT_CONFIG)
    assert service_config().path == DEFAULT_CONFIG
    assert service_config().state_dir == "/srv/spool"


def test_service_config_reports_what_check_config_reports(tmp_path):
    path = config(tmp_path, '[servce]\nx = 1\n[service]\nstate_dir = 5\nhistroy = 1\n')
    with pytest.raises(ConfigError) as e:
        service_config(path)
    assert e.value.errors == [
        f"{path}: top level: key 'servce': unknown table or key (expected one of: service, cluster, trigger, flow, admin)",
        f"{path}: [service]: key 'histroy': unknown key (did you mean 'history'?)",
        f"{path}: [service]: key 'state_dir': must be a string, not the number 5",
    ]


def test_service_config_does_not_build_triggers_or_flows(tmp_path):
    # A flow naming an action type that does not exist: check-config's business, not the spool tools'.
    path = config(tmp_path, '[service]\nstate_dir = "s"\n[[flow]]\nname = "f"\nactions = [ { type = "teleport" } ]\n')
    assert service_config(path).state_dir == str(tmp_path / "etc" / "s")


# the commands --------------------------------------------------------------


@pytest.mark.parametrize("argv", [["jobs"], ["job", "x"], ["retry", "x"], ["cancel", "x"], ["spool", "check"],
                                  ["spool", "salvage", "--to", "elsewhere"]])
def test_a_broken_config_is_listed_as_check_config_lists_it_and_exits_2(tmp_path, capsys, argv):
    path = config(tmp_path, '[service]\nstate_dir = 5\n')
    code, out, err = run_cli(capsys, *argv, "-c", path)
    assert code == 2 and out == ""
    assert err == f"{path}: 1 error(s):\n  {path}: [service]: key 'state_dir': must be a string, not the number 5\n"


def test_an_unreadable_config_exits_2(tmp_path, capsys):
    code, _, err = run_cli(capsys, "jobs", "-c", str(tmp_path / "nope.toml"))
    assert code == 2
    assert f"{tmp_path / 'nope.toml'}: cannot read config: No such file or directory" in err


def test_a_broken_default_config_is_reported_under_its_name(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config(tmp_path, "[service\n", DEFAULT_CONFIG)
    code, _, err = run_cli(capsys, "spool", "check")
    assert code == 2
    assert err.startswith(f"{DEFAULT_CONFIG}: 1 error(s):\n  {DEFAULT_CONFIG}: TOML syntax error:")


@pytest.fixture
def spool(tmp_path, reactor):
    """A stopped spool in tmp_path/state holding one done job; the job."""
    state_dir = tmp_path / "state"
    sink = SpoolSink({"f": Flow("f", [])}, Store(str(state_dir), reactor), reactor)
    sink.service.stop_grace = 0.05
    sink.service.startService()
    payload = Payload(b"label")
    payload.close()
    job = pytest_twisted.blockon(sink.submit(Job(trigger="t", payload=payload), "f"))
    pytest_twisted.blockon(sink.drain_writes())
    pytest_twisted.blockon(sink.service.stopService())
    return job


def test_every_spool_command_names_the_absolute_state_dir(tmp_path, spool, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    state_dir = str(tmp_path / "state")
    code, out, _ = run_cli(capsys, "jobs", "--state-dir", "state")
    assert code == 0 and out.startswith(f"spool {state_dir}: 1 job(s) shown\n")
    code, out, err = run_cli(capsys, "jobs", "--state-dir", "state", "--json")
    assert code == 0 and err == f"rawsvc jobs: spool {state_dir}: 1 job(s)\n" and out.count("\n") == 1
    code, out, err = run_cli(capsys, "job", "--state-dir", "state", spool.job_id[:15], "--payload")
    assert code == 0 and out == "label" and err == f"rawsvc job: spool {state_dir}: job {spool.job_id}\n"
    code, out, err = run_cli(capsys, "cancel", "--state-dir", "state", spool.job_id, "--wait", "0")
    assert code == 0 and err.startswith(f"rawsvc cancel: spool {state_dir}\n")
    code, out, _ = run_cli(capsys, "spool", "check", "--state-dir", "state")
    assert code == 0 and out.startswith(f"spool {state_dir}: ok: 1 job(s)")


def test_the_spool_commands_read_state_dir_from_the_config_as_the_service_does(tmp_path, spool, capsys,
                                                                               monkeypatch):
    path = config(tmp_path, '[service]\nstate_dir = "../state"\n')
    monkeypatch.chdir("/")
    code, out, _ = run_cli(capsys, "jobs", "-c", path)
    assert code == 0 and out.startswith(f"spool {tmp_path / 'state'}: 1 job(s) shown\n")
    assert os.getcwd() == "/"
