"""check-config and twistd refuse two listeners on one address, and a config with no trigger."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from rawsvc.cli import main
from rawsvc.config import DEFAULT_CONFIG, load, loads
from rawsvc.errors import ConfigError

FLOW = '[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n'


def tcp(name: str, listen: str, type_: str = "tcp") -> str:
    return f'[[trigger]]\nname = "{name}"\ntype = "{type_}"\nlisten = "{listen}"\nflow = "f"\n'


def status(name: str, listen: str) -> str:
    return f'[[trigger]]\nname = "{name}"\ntype = "appsocket-status"\nlisten = "{listen}"\nprinter = "p"\n'


def errors_of(text: str) -> list[str]:
    try:
        loads(text + FLOW, "rawsvc.toml")
    except ConfigError as e:
        return e.errors
    return []


#: Off loopback, [admin.http] needs authentication (see test_console_auth.py).
ADMIN_TOKEN = 'tokens = ["ci:viewer:0123456789abcdef"]\n'

CLASHES = [
    # (listeners, the clash line expected)
    (tcp("a", "tcp:9100") + tcp("b", "tcp:9100"),
     "rawsvc.toml: [[trigger]] 'b': key 'listen': tcp port 9100 on all interfaces clashes with [[trigger]] 'a', "
     "which listens on tcp port 9100 on all interfaces"),
    (tcp("a", "tcp:9100:interface=0.0.0.0") + tcp("b", "tcp:9100:interface=127.0.0.1"),
     "rawsvc.toml: [[trigger]] 'b': key 'listen': tcp port 9100 on 127.0.0.1 clashes with [[trigger]] 'a', "
     "which listens on tcp port 9100 on all interfaces"),
    (tcp("a", "tcp:port=9100:interface=127.0.0.1") + tcp("b", "tcp:9100:backlog=5:interface=127.0.0.1"),
     "rawsvc.toml: [[trigger]] 'b': key 'listen': tcp port 9100 on 127.0.0.1 clashes with [[trigger]] 'a'"),
    (tcp("a", r"tcp6:9100:interface=\\:\\:") + tcp("b", "tcp:9100:interface=127.0.0.1"),
     "rawsvc.toml: [[trigger]] 'b': key 'listen': tcp port 9100 on 127.0.0.1 clashes with [[trigger]] 'a'"),
    (tcp("a", "tcp:8080:interface=127.0.0.1") + '[admin.http]\nlisten = "tcp:8080"\n' + ADMIN_TOKEN,
     "rawsvc.toml: [admin.http]: key 'listen': tcp port 8080 on all interfaces clashes with [[trigger]] 'a', "
     "which listens on tcp port 8080 on 127.0.0.1"),
    (tcp("p", "tcp:0", "printer") + '[admin.http]\nlisten = "tcp:9101"\n' + ADMIN_TOKEN + status("s", "udp:9101")
     + status("t", "udp:9101:interface=127.0.0.1"),
     "rawsvc.toml: [[trigger]] 't': key 'listen': udp port 9101 on 127.0.0.1 clashes with [[trigger]] 's', "
     "which listens on udp port 9101 on 127.0.0.1"),
]


@pytest.mark.parametrize("listeners, line", CLASHES)
def test_two_listeners_on_one_address_are_refused(listeners, line):
    [error] = errors_of(listeners)
    assert error.startswith(line), error
    assert error.endswith("give each listener its own address (tcp:0 takes any free port)")


def test_two_unix_sockets_on_one_path_are_refused(tmp_path):
    sock = tmp_path / "s"
    [error] = errors_of(tcp("a", f"unix:{sock}") + tcp("b", f"unix:address={sock}:mode=600"))
    assert error.startswith(f"rawsvc.toml: [[trigger]] 'b': key 'listen': unix socket {sock} clashes with "
                            f"[[trigger]] 'a', which listens on unix socket {sock}")


NO_CLASH = [
    tcp("a", "tcp:0") + tcp("b", "tcp:0") + '[admin.http]\nlisten = "tcp:0:interface=127.0.0.1"\n',
    tcp("a", "tcp:9100:interface=127.0.0.1") + tcp("b", "tcp:9100:interface=127.0.0.2"),
    tcp("a", "tcp:9100:interface=127.0.0.1") + tcp("b", r"tcp6:9100:interface=\\:\\:1"),
    tcp("p", "tcp:9101:interface=127.0.0.1", "printer") + status("s", "udp:9101"),
    tcp("a", "tcp:9100") + tcp("b", "tcp:9101"),
    tcp("a", "unix:/tmp/rawsvc-a.sock") + tcp("b", "unix:/tmp/rawsvc-b.sock"),
]


@pytest.mark.parametrize("listeners", NO_CLASH)
def test_listeners_that_do_not_clash_are_accepted(listeners):
    assert errors_of(listeners) == []


def test_a_config_file_with_no_trigger_is_refused_by_check_config(tmp_path, capsys):
    path = tmp_path / "rawsvc.toml"
    path.write_text(FLOW)
    assert main(["check-config", str(path)]) == 1
    err = capsys.readouterr().err
    assert f"{path}: top level: the config defines no [[trigger]]; rawsvc would do nothing" in err
    with pytest.raises(ConfigError):
        load(str(path))


def test_check_config_with_no_file_reads_the_same_default_as_twistd(tmp_path):
    from rawsvc.tap import Options

    assert Options()["config"] == DEFAULT_CONFIG == "etc/rawsvc.toml"
    os.makedirs(tmp_path / "etc")
    (tmp_path / "etc" / "rawsvc.toml").write_text(tcp("a", "tcp:0") + FLOW)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-m", "rawsvc", "check-config"], capture_output=True, text=True,
                            cwd=tmp_path, timeout=60, env=dict(os.environ, PYTHONPATH=root))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("etc/rawsvc.toml: OK: 1 trigger(s) [a (tcp)]")
