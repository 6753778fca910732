"""
Who may do what on [admin.http]: users (HTTP Basic, bcrypt) and bearer
tokens with roles, on a real service; the refusal to listen off loopback
without them (check-config and a real twistd); rawsvc passwd.
"""

from __future__ import annotations

import base64
import os
import stat
import subprocess
import sys

import bcrypt
import pytest
import pytest_twisted
from admin_helpers import admin_port, build_service, config_text, send_job, start_reactor_once, trigger_port
from conftest import ROOT
from test_console_api import body_json, csrf_token
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock

from rawsvc.config import loads
from rawsvc.console.auth import AuthError, RateLimit, is_local, parse_tokens, read_users
from rawsvc.context import BuildContext
from rawsvc.errors import ConfigError

TOKEN = "ci-viewer-token-0123456789"


@pytest.fixture(scope="module", autouse=True)
def reactor_running():
    start_reactor_once()


def _hash(password: str) -> str:
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()


@pytest.fixture
def users_file(tmp_path):
    path = tmp_path / "users"
    path.write_text(f"# console users\nvera:viewer:{_hash('look')}\notto:operator:{_hash('act')}\n")
    path.chmod(0o600)
    return str(path)


@pytest.fixture
def running(reactor, tmp_path, users_file):
    admin = (f'[admin.http]\nlisten = "tcp:0:interface=127.0.0.1"\nusers_file = "{users_file}"\n'
             f'tokens = ["ci:viewer:{TOKEN}"]\n')
    service = build_service(reactor, config_text(tmp_path / "state", admin))
    service.startService()
    yield service, f"http://127.0.0.1:{admin_port(service, 'admin-http').getHost().port}"
    pytest_twisted.blockon(ensureDeferred(service.stopService()))


@pytest.fixture
def http(reactor):
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    client = HTTPClient(Agent(reactor))

    async def fetch(method, url, user=None, headers=None):
        headers = dict(headers or {})
        if user is not None:
            headers[b"Authorization"] = [b"Basic " + base64.b64encode(user.encode())]
        response = await client.request(method, url, headers=headers)
        return response.code, response.headers, await treq.content(response)

    return lambda method, url, user=None, headers=None: ensureDeferred(fetch(method, url, user, headers))


@pytest_twisted.inlineCallbacks
def _a_job(reactor, service, http, base):
    yield send_job(reactor, trigger_port(service), b"x", service.triggers["orders"].counters, expect_ok=1)
    yield service.sink.store.flush()
    code, _, body = yield http("GET", base + "/api/v1/jobs", "otto:act")
    assert code == 200, body
    return body_json(body)["jobs"][0]["job_id"]


@pytest_twisted.inlineCallbacks
def test_without_credentials_the_console_asks_for_them(running, http):
    _, base = running
    code, headers, _ = yield http("GET", base + "/console/")
    assert code == 401 and headers.getRawHeaders(b"www-authenticate")[0].startswith(b"Basic ")


@pytest_twisted.inlineCallbacks
def test_a_wrong_password_or_unknown_user_or_token_is_a_401(running, http):
    _, base = running
    for user in ("vera:wrong", "nobody:look", "vera"):
        code, _, _ = yield http("GET", base + "/api/v1/jobs", user)
        assert code == 401, user
    code, _, _ = yield http("GET", base + "/api/v1/jobs", headers={b"Authorization": [b"Bearer not-the-token"]})
    assert code == 401


@pytest_twisted.inlineCallbacks
def test_a_viewer_may_look_but_not_retry(reactor, running, http):
    service, base = running
    job_id = yield _a_job(reactor, service, http, base)
    code, _, page = yield http("GET", base + "/console/", "vera:look")
    assert code == 200
    token = csrf_token(page).encode()
    code, _, _ = yield http("GET", base + f"/api/v1/jobs/{job_id}", headers={b"Authorization": [b"Bearer " + TOKEN.encode()]})
    assert code == 200
    code, _, body = yield http("POST", base + f"/api/v1/jobs/{job_id}/retry", "vera:look", {b"X-CSRF-Token": [token]})
    assert code == 403 and b"viewer" in body
    code, _, _ = yield http("POST", base + f"/api/v1/jobs/{job_id}/retry",
                            headers={b"Authorization": [b"Bearer " + TOKEN.encode()], b"X-CSRF-Token": [token]})
    assert code == 403


@pytest_twisted.inlineCallbacks
def test_an_operators_retry_works_and_still_needs_the_csrf_token(reactor, running, http):
    service, base = running
    job_id = yield _a_job(reactor, service, http, base)
    token = csrf_token((yield http("GET", base + "/console/", "otto:act"))[2]).encode()
    code, _, body = yield http("POST", base + f"/api/v1/jobs/{job_id}/retry", "otto:act")
    assert code == 403 and "CSRF" in body_json(body)["error"]
    code, _, body = yield http("POST", base + f"/api/v1/jobs/{job_id}/retry", "otto:act", {b"X-CSRF-Token": [token]})
    assert code == 200 and body_json(body)["ok"] is True


@pytest_twisted.inlineCallbacks
def test_failed_logins_from_one_address_are_rate_limited(running, http):
    _, base = running
    for _ in range(5):
        code, _, _ = yield http("GET", base + "/api/v1/jobs", "otto:guess")
        assert code == 401
    code, _, _ = yield http("GET", base + "/api/v1/jobs", "otto:act")
    assert code == 429  # even the right password, until the window passes


def test_the_rate_limit_forgets_failures_past_its_window():
    clock = Clock()
    limit = RateLimit(clock, limit=2, window=60)
    limit.failed("10.0.0.1")
    limit.failed("10.0.0.1")
    assert limit.blocked("10.0.0.1") and not limit.blocked("10.0.0.2")
    clock.advance(59)
    assert limit.blocked("10.0.0.1")
    clock.advance(1)
    assert not limit.blocked("10.0.0.1")


def test_a_users_file_readable_by_others_or_malformed_is_refused(tmp_path):
    path = tmp_path / "users"
    path.write_text(f"vera:viewer:{_hash('x')}\n")
    path.chmod(0o644)
    with pytest.raises(AuthError, match="chmod 600"):
        read_users(str(path))
    path.chmod(0o600)
    assert read_users(str(path))["vera"][0] == "viewer"
    path.write_text(f"vera:admin:{_hash('x')}\n")
    with pytest.raises(AuthError, match="viewer or operator"):
        read_users(str(path))
    with pytest.raises(AuthError, match="name:role:token"):
        parse_tokens(["ci:viewer:short"])


@pytest.mark.parametrize("listen, local", [
    ("tcp:8080:interface=127.0.0.1", True), ("tcp6:8080:interface=\\:\\:1", True), ("unix:/tmp/x.sock", True),
    ("tcp:8080", False), ("tcp:8080:interface=192.0.2.7", False), ("ssl:8443:privateKey=k.pem", False),
])
def test_what_counts_as_loopback(listen, local):
    assert is_local(listen) is local


def _config(tmp_path, admin: str) -> str:
    return (f'[service]\nstate_dir = "{tmp_path}/state"\nspool = false\n'
            '[[trigger]]\nname = "a"\ntype = "tcp"\nlisten = "tcp:0:interface=127.0.0.1"\nflow = "f"\n'
            '[[flow]]\nname = "f"\nactions = [ { type = "log" } ]\n' + admin)


def test_check_config_names_the_listen_key_of_a_console_off_loopback_without_auth(tmp_path):
    with pytest.raises(ConfigError) as caught:
        loads(_config(tmp_path, '[admin.http]\nlisten = "tcp:0"\n'), "rawsvc.toml", BuildContext())
    assert any("[admin.http]" in e and "listen" in e and "users_file" in e for e in caught.value.errors), caught.value.errors


def test_check_config_names_users_file_when_it_is_readable_by_others(tmp_path, users_file):
    os.chmod(users_file, 0o640)
    with pytest.raises(ConfigError) as caught:
        loads(_config(tmp_path, f'[admin.http]\nlisten = "tcp:0"\nusers_file = "{users_file}"\n'), "rawsvc.toml",
              BuildContext())
    assert any("users_file" in e and "chmod 600" in e for e in caught.value.errors), caught.value.errors


def test_a_console_off_loopback_with_users_loads(tmp_path, users_file):
    config = loads(_config(tmp_path, f'[admin.http]\nlisten = "tcp:0"\nusers_file = "{users_file}"\n'),
                   "rawsvc.toml", BuildContext())
    assert config.admin["http"]["users_file"] == users_file


def test_twistd_refuses_to_start_a_console_off_loopback_without_auth(tmp_path):
    config = tmp_path / "rawsvc.toml"
    config.write_text(_config(tmp_path, '[admin.http]\nlisten = "tcp:0"\n'))
    result = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "twistd"), "-n", "--pidfile=", "rawsvc", "--config", str(config)],
        capture_output=True, text=True, timeout=60, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=ROOT))
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "not starting" in output and "[admin.http]" in output and "users_file" in output
    assert "Traceback" not in output


def _passwd(*args: str, password: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rawsvc", "passwd", *args], input=password + "\n",
                          capture_output=True, text=True, timeout=60)


def test_rawsvc_passwd_writes_a_0600_file_and_updates_a_users_line(tmp_path):
    path = str(tmp_path / "users")
    result = _passwd(path, "otto", "--role", "operator", "--rounds", "4", password="first")
    assert result.returncode == 0, result.stderr
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert _passwd(path, "vera", "--rounds", "4", password="look").returncode == 0
    assert _passwd(path, "otto", "--role", "operator", "--rounds", "4", password="second").returncode == 0
    users = read_users(path)
    assert sorted(users) == ["otto", "vera"] and users["otto"][0] == "operator" and users["vera"][0] == "viewer"
    assert bcrypt.checkpw(b"second", users["otto"][1]) and not bcrypt.checkpw(b"first", users["otto"][1])


def test_rawsvc_passwd_refuses_an_empty_password_or_a_bad_name(tmp_path):
    path = tmp_path / "users"
    assert _passwd(str(path), "otto", password="").returncode == 2
    assert _passwd(str(path), "ot:to", password="x").returncode == 2
    assert not path.exists()
