"""The SSH manhole, driven by Debian's real OpenSSH client."""

from __future__ import annotations

import os
import stat
import subprocess
import time

import pytest
import pytest_twisted
from admin_helpers import admin_port, build_service, config_text, send_job, start_reactor_once, trigger_port
from conftest import require_tool
from twisted.internet.defer import ensureDeferred

from rawsvc.admin.manhole import HOST_KEY_NAME, ManholeSession, load_or_create_host_key
from rawsvc.config import loads
from rawsvc.errors import ConfigError

SSH_OPTIONS = [
    "-o", "StrictHostKeyChecking=no",
    "-o", "UserKnownHostsFile=/dev/null",
    "-o", "BatchMode=yes",
    "-o", "LogLevel=ERROR",
    "-o", "ConnectTimeout=10",
    "-F", "/dev/null",
]


@pytest.fixture(scope="module", autouse=True)
def reactor_running():
    start_reactor_once()


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """An admitted key pair and a stranger's, made by ssh-keygen."""
    keygen = require_tool("ssh-keygen")
    folder = tmp_path_factory.mktemp("keys")
    for name in ("admin", "stranger"):
        subprocess.run(
            [keygen, "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(folder / name)],
            check=True,
            timeout=30,
        )
    (folder / "authorized_keys").write_text("# admins\n" + (folder / "admin.pub").read_text())
    return folder


@pytest.fixture
def logged_errors():
    """Every error or failure logged while the test runs."""
    from twisted.logger import LogLevel, globalLogPublisher

    seen = []

    def observer(event):
        if event.get("log_failure") is not None or event.get("log_level") in (LogLevel.error, LogLevel.critical):
            seen.append(event)

    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def running(reactor, tmp_path, keys, request):
    """A started RawService with a tcp trigger and the manhole; yields (service, ssh port)."""
    admin = f"""
    [admin.manhole]
    listen = "tcp:0:interface=127.0.0.1"
    authorized_keys = "{keys / 'authorized_keys'}"
    """
    spool = getattr(request, "param", True)
    service = build_service(reactor, config_text(tmp_path / "state", admin, spool=spool))
    service.startService()
    port = admin_port(service, "admin-manhole")
    yield service, port.getHost().port
    pytest_twisted.blockon(ensureDeferred(_stop(service)))


async def _stop(service):
    await service.stopService()


def ssh(port: int, key, *extra: str, stdin: bytes = b"", remote: tuple = (), timeout: float = 20):
    """Run the OpenSSH client in a thread (the reactor keeps serving)."""
    from twisted.internet.threads import deferToThread

    command = [require_tool("ssh"), *SSH_OPTIONS, "-i", str(key), "-p", str(port), *extra, "127.0.0.1", *remote]
    return deferToThread(subprocess.run, command, input=stdin, capture_output=True, timeout=timeout)


@pytest_twisted.inlineCallbacks
def test_right_key_logs_in_and_status_shows_live_counters(reactor, running, keys, logged_errors):
    service, port = running
    counters = service.triggers["orders"].counters
    yield send_job(reactor, trigger_port(service), b"hello", counters, expect_ok=1)
    result = yield ssh(
        port, keys / "admin", "-tt", "-o", "PreferredAuthentications=publickey",
        stdin=b"status()['triggers']['orders']['counters']['jobs_ok']\r"
        b"status()\r\x04",
    )
    out = result.stdout.decode("utf-8", "replace")
    assert result.returncode == 0, (out, result.stderr)
    assert "\r\n1\r\n" in out
    assert '"orders": {' in out
    assert '"bytes_in": 5' in out
    assert not logged_errors


@pytest_twisted.inlineCallbacks
def test_pause_in_the_repl_stops_the_trigger_listening(reactor, running, keys):
    service, port = running
    result = yield ssh(port, keys / "admin", "-tt", stdin=b"pause('orders')\r\x04")
    assert result.returncode == 0, result.stderr
    assert b"paused orders" in result.stdout
    assert service.triggers["orders"].listening is False


@pytest.mark.parametrize("running", [False], indirect=True)
@pytest_twisted.inlineCallbacks
def test_retry_says_clearly_when_the_sink_cannot(reactor, running, keys):
    _service, port = running
    result = yield ssh(port, keys / "admin", "-tt", stdin=b"retry('0-x')\r\x04")
    assert b"retry is not supported by this job sink" in result.stdout


@pytest_twisted.inlineCallbacks
def test_wrong_key_is_refused(running, keys):
    _service, port = running
    result = yield ssh(port, keys / "stranger", "-tt", stdin=b"status()\r\x04")
    assert result.returncode == 255
    assert b"Permission denied (publickey)" in result.stderr
    assert b"orders" not in result.stdout


@pytest_twisted.inlineCallbacks
def test_password_and_keyboard_interactive_are_not_offered(running, keys):
    _service, port = running
    result = yield ssh(
        port, keys / "admin", "-tt",
        "-o", "PreferredAuthentications=password,keyboard-interactive",
        "-o", "PubkeyAuthentication=no",
    )
    assert result.returncode == 255
    assert b"Permission denied (publickey)." in result.stderr


@pytest_twisted.inlineCallbacks
def test_a_session_without_a_pty_is_told_to_use_ssh_t(running, keys, logged_errors):
    _service, port = running
    result = yield ssh(port, keys / "admin", "-T", stdin=b"status()\n")
    assert b"needs a terminal; connect with ssh -t" in result.stdout
    assert b"orders" not in result.stdout
    assert not logged_errors


@pytest_twisted.inlineCallbacks
def test_a_client_that_drops_leaves_no_error(reactor, running, keys, logged_errors):
    from twisted.internet.task import deferLater

    _service, port = running
    # stdin closes right after the input: ssh sends EOF mid-session, then goes.
    result = yield ssh(port, keys / "admin", "-tt", stdin=b"1 + 1\r")
    assert b"2" in result.stdout
    yield deferLater(reactor, 0.1, lambda: None)
    assert not logged_errors


def test_session_follows_window_changes_and_eof_without_raising():
    from twisted.python.components import Componentized

    session = ManholeSession(Componentized())
    session.getPty(b"xterm", (24, 80, 0, 0), [])
    session.windowChanged((50, 132, 0, 0))
    assert (session.height, session.width) == (50, 132)
    session.eofReceived()
    session.closed()


def test_host_key_is_created_private_and_reused(tmp_path):
    path = str(tmp_path / "state" / HOST_KEY_NAME)
    first = load_or_create_host_key(path)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert first.sshType() == b"ssh-ed25519"
    again = load_or_create_host_key(path)
    assert again.fingerprint() == first.fingerprint()


def test_host_key_lands_in_the_state_dir_at_service_build(reactor, tmp_path, keys):
    admin = f"""
    [admin.manhole]
    authorized_keys = "{keys / 'authorized_keys'}"
    """
    build_service(reactor, config_text(tmp_path / "state", admin))
    path = tmp_path / "state" / HOST_KEY_NAME
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "cannot read"),
        ("", "holds no public key"),
        ("# only a comment\n", "holds no public key"),
        ("ssh-ed25519 not-base64!\n", "line 1 is not an OpenSSH public key"),
    ],
)
def test_bad_authorized_keys_is_a_config_error(tmp_path, content, message):
    path = tmp_path / "admin_keys"
    if content is not None:
        path.write_text(content)
    text = config_text(tmp_path / "state", f'[admin.manhole]\nauthorized_keys = "{path}"\n')
    with pytest.raises(ConfigError) as caught:
        loads(text, "rawsvc.toml")
    [line] = caught.value.errors
    assert line.startswith("rawsvc.toml: [admin.manhole]: key 'authorized_keys': ")
    assert message in line


@pytest_twisted.inlineCallbacks
def test_a_remote_command_is_refused_with_a_reason(running, keys, logged_errors):
    _service, port = running
    result = yield ssh(port, keys / "admin", "-T", remote=("print(1)",))
    assert result.returncode == 1
    assert b"commands are not supported" in result.stdout
    assert not logged_errors


@pytest_twisted.inlineCallbacks
def test_retry_with_the_spool_names_an_unknown_job(running):
    from rawsvc.admin.namespace import retry

    service, _port = running
    with pytest.raises(KeyError, match="no job 0-x in the spool"):
        yield retry(service, "0-x")


@pytest_twisted.inlineCallbacks
def test_cancel_with_the_spool_names_an_unknown_job(running):
    from rawsvc.admin.namespace import cancel

    service, _port = running
    with pytest.raises(KeyError, match="no job 0-x in the spool"):
        yield cancel(service, "0-x")


@pytest_twisted.inlineCallbacks
def test_a_command_that_answers_later_shows_its_answer_not_a_deferred(reactor, running, keys, logged_errors):
    service, port = running
    counters = service.triggers["orders"].counters
    yield send_job(reactor, trigger_port(service), b"hello", counters, expect_ok=1)
    job_id = service.sink.recent()[0].job_id
    from twisted.internet.threads import deferToThread

    def session():
        # The answers come from the spool's thread: wait for them before the EOF.
        command = [require_tool("ssh"), *SSH_OPTIONS, "-i", str(keys / "admin"), "-p", str(port), "-tt", "127.0.0.1"]
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        proc.stdin.write(b"retry(recent()[0]['job_id'])\rcancel('0-x')\r")
        proc.stdin.flush()
        time.sleep(2)
        proc.stdin.write(b"\x04")
        proc.stdin.close()
        out = proc.stdout.read()
        return proc.wait(timeout=20), out

    code, raw = yield deferToThread(session)
    out = raw.decode("utf-8", "replace")
    assert code == 0, out
    assert f"job {job_id} (done) queued again at action 0" in out
    assert "failed: no job 0-x in the spool" in out
    assert "<Deferred" not in out and "Deferred #" not in out
    assert not logged_errors
