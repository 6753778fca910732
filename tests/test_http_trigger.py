"""The http trigger, with real clients on loopback: curl and treq, plain and over ssl."""

from __future__ import annotations

import json
import subprocess

import pytest
import pytest_twisted
from twisted.internet.threads import deferToThread

from conftest import require_tool
from rawsvc.config import loads
from rawsvc.errors import ConfigError

TOKEN = "s3cret-token"

FLOWS = """
[[flow]]
name = "label"
actions = [
  { type = "reply", data = "printed ${size} bytes for order ${order} (${x_order_id}) via ${http_path}\\n" },
]

[[flow]]
name = "broken"
actions = [ { type = "file", folder = "/dev/null/nowhere" } ]
"""


def http_trigger(**keys) -> str:
    base = {"name": "shop", "type": "http", "listen": "tcp:0:interface=127.0.0.1", "flow": "label",
            "token": TOKEN, "headers": ["X-Order-Id"], "max_job_bytes": 1000}
    base.update(keys)
    return "[[trigger]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in base.items())


def url(svc, name="shop", path=None, scheme="http") -> str:
    port = svc.triggers[name].port.getHost().port
    return f"{scheme}://127.0.0.1:{port}{path or '/print/' + name}"


def curl(*args: str, data: bytes = b"") -> tuple[int, bytes]:
    """Run curl, returning (HTTP status, body)."""
    exe = require_tool("curl")
    out = subprocess.run([exe, "-s", "-S", "-o", "-", "-w", "\n%{http_code}", "--data-binary", "@-", *args],
                         input=data, capture_output=True, timeout=30, check=True).stdout
    body, _, code = out.rpartition(b"\n")
    return int(code), body


# curl -------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_curl_good_job_gets_the_flow_replies_as_the_body(service_factory):
    svc = service_factory(http_trigger() + FLOWS)
    code, body = yield deferToThread(curl, "-H", f"Authorization: Bearer {TOKEN}", "-H", "X-Order-Id: A-17",
                                     url(svc) + "?order=42&bad-name=x", data=b"^XA^FDhello^FS^XZ")
    assert code == 200
    assert body == b"printed 17 bytes for order 42 (A-17) via /print/shop\n"
    assert svc.triggers["shop"].counters.jobs_ok == 1


@pytest_twisted.inlineCallbacks
def test_curl_flow_error_is_422_with_a_json_body(service_factory):
    svc = service_factory(http_trigger(flow="broken") + FLOWS)
    code, body = yield deferToThread(curl, "-H", f"Authorization: Bearer {TOKEN}", url(svc), data=b"data")
    assert code == 422
    answer = json.loads(body)
    assert answer["state"] == "failed" and answer["job_id"] and "/dev/null/nowhere" in answer["error"]


@pytest_twisted.inlineCallbacks
def test_curl_oversized_body_is_413_and_makes_no_job(service_factory):
    svc = service_factory(http_trigger() + FLOWS)
    code, body = yield deferToThread(curl, "-H", f"Authorization: Bearer {TOKEN}", url(svc), data=b"x" * 1001)
    assert code == 413
    assert "max_job_bytes = 1000" in json.loads(body)["error"]
    counters = svc.triggers["shop"].counters
    assert counters.jobs_received == 0 and counters.jobs_refused == 1


@pytest_twisted.inlineCallbacks
def test_curl_missing_or_wrong_token_is_401(service_factory):
    svc = service_factory(http_trigger() + FLOWS)
    code, body = yield deferToThread(curl, url(svc), data=b"data")
    assert code == 401 and "bearer token" in json.loads(body)["error"]
    code, _ = yield deferToThread(curl, "-H", "Authorization: Bearer wrong", url(svc), data=b"data")
    assert code == 401
    assert svc.triggers["shop"].counters.jobs_received == 0


@pytest_twisted.inlineCallbacks
def test_curl_over_ssl(service_factory, tmp_path):
    from test_tcp_trigger import _self_signed

    key, cert = _self_signed(tmp_path)
    svc = service_factory(http_trigger(listen=f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}") + FLOWS)
    code, body = yield deferToThread(curl, "--cacert", str(cert), "--resolve", "localhost:{0}:127.0.0.1".format(
        svc.triggers["shop"].port.getHost().port), "-H", f"Authorization: Bearer {TOKEN}", "-H", "X-Order-Id: T",
        url(svc, scheme="https").replace("127.0.0.1", "localhost") + "?order=7", data=b"abc")
    assert code == 200 and body == b"printed 3 bytes for order 7 (T) via /print/shop\n"


# treq -------------------------------------------------------------------------


@pytest_twisted.inlineCallbacks
def test_treq_good_job_on_a_configured_path(service_factory, http):
    svc = service_factory(http_trigger(path="/erp/labels") + FLOWS)
    auth = {"Authorization": [f"Bearer {TOKEN}"], "X-Order-Id": ["B-2"]}
    r = yield http.post(url(svc, path="/erp/labels?order=9"), data=b"12345", headers=auth)
    assert r.code == 200
    assert (yield r.content()) == b"printed 5 bytes for order 9 (B-2) via /erp/labels\n"
    assert r.headers.getRawHeaders("x-rawsvc-job-id")


@pytest_twisted.inlineCallbacks
def test_treq_flow_error_oversized_and_missing_token(service_factory, http):
    svc = service_factory(http_trigger(flow="broken") + FLOWS)
    auth = {"Authorization": [f"Bearer {TOKEN}"]}
    r = yield http.post(url(svc), data=b"abc", headers=auth)
    assert r.code == 422 and (yield r.json())["state"] == "failed"
    r = yield http.post(url(svc), data=b"y" * 5000, headers=auth)
    assert r.code == 413
    yield r.content()
    r = yield http.post(url(svc), data=b"abc")
    assert r.code == 401 and r.headers.getRawHeaders("www-authenticate") == ['Bearer realm="rawsvc"']
    yield r.content()


@pytest_twisted.inlineCallbacks
def test_treq_wrong_path_is_404_and_get_is_405(service_factory, http):
    svc = service_factory(http_trigger() + FLOWS)
    r = yield http.post(url(svc, path="/print/other"), data=b"abc", headers={"Authorization": [f"Bearer {TOKEN}"]})
    assert r.code == 404
    yield r.content()
    r = yield http.get(url(svc), headers={"Authorization": [f"Bearer {TOKEN}"]})
    assert r.code == 405 and r.headers.getRawHeaders("allow") == ["POST"]
    yield r.content()


@pytest.fixture
def http(reactor):
    """A treq client whose connections close after each response (nothing left in the reactor)."""
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    return HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))


# config -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "keys, key, words",
    [
        ({"token": "", "listen": "tcp:0"}, "token", "is required"),
        ({"path": "print"}, "path", "must begin with '/'"),
        ({"headers": ["X Order"]}, "headers", "not an HTTP header name"),
        ({"listen": "tcp"}, "listen", "not an endpoint string"),
    ],
)
def test_http_keys_are_checked_with_errors_that_name_the_key(tmp_path, keys, key, words):
    text = f'[service]\nstate_dir = "{tmp_path}"\nspool = false\n' + http_trigger(**keys) + FLOWS
    with pytest.raises(ConfigError) as e:
        loads(text, "rawsvc.toml")
    errors = e.value.errors
    assert len(errors) == 1, errors
    assert key in errors[0] and words in errors[0], errors[0]


def test_no_token_is_fine_on_loopback_and_unix(tmp_path):
    for listen in ("tcp:0:interface=127.0.0.1", "tcp:0:interface=\\:\\:1", f"unix:{tmp_path}/s"):
        text = f'[service]\nstate_dir = "{tmp_path}"\nspool = false\n' + http_trigger(token="", listen=listen) + FLOWS
        assert "shop" in loads(text, "rawsvc.toml").triggers


@pytest_twisted.inlineCallbacks
def test_a_large_body_streams_into_a_spill_file(service_factory, http, tmp_path):
    svc = service_factory("spill_threshold = 4096\n" + http_trigger(max_job_bytes=1 << 20) + FLOWS)
    body = bytes(range(256)) * 1024  # 256 KiB, past spill_threshold
    auth = {"Authorization": [f"Bearer {TOKEN}"], "X-Order-Id": ["big"]}
    r = yield http.post(url(svc) + "?order=1", data=body, headers=auth)
    assert r.code == 200
    assert (yield r.content()) == b"printed 262144 bytes for order 1 (big) via /print/shop\n"


@pytest_twisted.inlineCallbacks
def test_stop_closes_an_idle_keep_alive_connection(tmp_path):
    import socket

    from support import recv_until, start_service, stop_service

    svc = start_service(tmp_path, http_trigger() + FLOWS)
    port = svc.triggers["shop"].port.getHost().port
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    request = (f"POST /print/shop?order=1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\n"
               "X-Order-Id: K\r\nContent-Length: 2\r\n\r\nhi").encode()
    try:
        sock.sendall(request)
        answer = yield deferToThread(recv_until, sock, b"via /print/shop\n")
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"printed 2 bytes for order 1 (K) via /print/shop\n")
        stopping = svc.stopService()
        sock.settimeout(10)
        assert (yield deferToThread(sock.recv, 1)) == b""  # EOF: closed by the stop (a timeout would raise)
        yield stopping
    finally:
        sock.close()
        if svc.running:
            stop_service(svc)
