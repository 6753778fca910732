"""The C{http} action against a real local twisted.web server."""

from __future__ import annotations

import pytest
import pytest_twisted
from zope.interface.verify import verifyClass, verifyObject

from rawsvc.actions.http import HttpAction
from rawsvc.config import loads
from rawsvc.context import BuildContext
from rawsvc.errors import ActionError, ConfigError
from rawsvc.interfaces import IAction, IActionType
from rawsvc.job import Job, Payload


@pytest.fixture(scope="module", autouse=True)
def running_reactor():
    """Start the reactor before the first test's reactor snapshot."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater

    pytest_twisted.blockon(deferLater(reactor, 0, lambda: None))


def _resource_base():
    from twisted.web.resource import Resource

    return Resource


class Recorder(_resource_base()):
    """A twisted.web resource that records requests and answers from a script."""

    isLeaf = True

    def __init__(self, answers=None):
        super().__init__()
        self.requests = []
        self.answers = list(answers or [])

    def render(self, request):
        request.content.seek(0)
        self.requests.append(
            {
                "method": request.method.decode(),
                "path": request.uri.decode(),
                "headers": {
                    k.decode().lower(): v[0].decode()
                    for k, v in request.requestHeaders.getAllRawHeaders()
                },
                "body": request.content.read(),
            }
        )
        status, body = self.answers.pop(0) if self.answers else (200, b"ok")
        request.setResponseCode(status)
        return body


@pytest.fixture
def web_server(reactor):
    from twisted.internet.defer import ensureDeferred
    from twisted.web.server import Site

    servers = []

    def start(recorder):
        site = Site(recorder)
        site.displayTracebacks = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        servers.append(port)
        return f"http://127.0.0.1:{port.getHost().port}"

    yield start
    for port in servers:
        pytest_twisted.blockon(ensureDeferred(_stop(port)))


async def _stop(port):
    await port.stopListening()


def build(reactor, **table) -> HttpAction:
    values, issues = HttpAction.options.validate(table)
    assert not issues, [i.message for i in issues]
    return HttpAction.from_config(values, BuildContext(reactor=reactor))


def job_with(data: bytes) -> Job:
    return Job(trigger="orders", payload=Payload(data), peer_host="127.0.0.1", peer_port=4000)


def test_http_action_provides_the_action_interfaces(reactor):
    verifyObject(IActionType, HttpAction)
    verifyClass(IAction, HttpAction)
    verifyObject(IAction, build(reactor, url="http://127.0.0.1:1/"))


@pytest_twisted.inlineCallbacks
def test_posts_the_payload_and_saves_the_reply(reactor, web_server):
    recorder = Recorder([(201, b"accepted 42")])
    base = web_server(recorder)
    action = build(
        reactor,
        url=base + "/jobs/${job_id}",
        headers={"X-Trigger": "${trigger}", "Content-Type": "application/octet-stream"},
        save_reply="answer",
    )
    job = job_with(b"ABC;3\xff")
    yield action.run(job)
    [seen] = recorder.requests
    assert seen["method"] == "POST"
    assert seen["path"] == f"/jobs/{job.job_id}"
    assert seen["body"] == b"ABC;3\xff"
    assert seen["headers"]["x-trigger"] == "orders"
    assert job.variables["answer"] == "accepted 42"
    assert job.variables["answer_status"] == "201"


@pytest_twisted.inlineCallbacks
def test_body_template_is_rendered(reactor, web_server):
    recorder = Recorder()
    base = web_server(recorder)
    action = build(reactor, url=base + "/", method="put", body='{"peer": "${peer_host}"}', encoding="utf-8")
    yield action.run(job_with(b"x"))
    assert recorder.requests[0]["method"] == "PUT"
    assert recorder.requests[0]["body"] == b'{"peer": "127.0.0.1"}'


@pytest_twisted.inlineCallbacks
def test_a_500_is_retried_and_then_fails_with_a_clear_error(reactor, web_server):
    recorder = Recorder([(500, b"boom")] * 3)
    base = web_server(recorder)
    action = build(reactor, url=base + "/print", retries=2, retry_delay=0.01, save_reply="r")
    job = job_with(b"x")
    with pytest.raises(ActionError) as caught:
        yield action.run(job)
    assert len(recorder.requests) == 3
    message = str(caught.value)
    assert message == (
        f"HTTP POST {base}/print answered 500 Internal Server Error (expected 2xx) "
        "(gave up after 3 attempts)"
    )
    assert job.variables["r_status"] == "500"
    assert job.variables["r"] == "boom"


@pytest_twisted.inlineCallbacks
def test_a_500_then_a_200_succeeds(reactor, web_server):
    recorder = Recorder([(503, b"busy"), (200, b"fine")])
    base = web_server(recorder)
    action = build(reactor, url=base + "/", retry_delay=0.01, save_reply="r")
    job = job_with(b"x")
    yield action.run(job)
    assert len(recorder.requests) == 2
    assert job.variables["r"] == "fine"


@pytest_twisted.inlineCallbacks
def test_a_4xx_fails_at_once_without_retry(reactor, web_server):
    recorder = Recorder([(404, b"no such thing")])
    base = web_server(recorder)
    action = build(reactor, url=base + "/x", retry_delay=0.01)
    with pytest.raises(ActionError, match=r"answered 404 Not Found \(expected 2xx\)$"):
        yield action.run(job_with(b"x"))
    assert len(recorder.requests) == 1


@pytest_twisted.inlineCallbacks
def test_expect_status_accepts_listed_codes(reactor, web_server):
    recorder = Recorder([(404, b"gone")])
    base = web_server(recorder)
    action = build(reactor, url=base + "/", expect_status=[200, 404])
    yield action.run(job_with(b"x"))


@pytest_twisted.inlineCallbacks
def test_connection_refused_is_retried_then_fails(reactor):
    from twisted.internet.protocol import Factory

    port = reactor.listenTCP(0, Factory(), interface="127.0.0.1")
    number = port.getHost().port
    yield port.stopListening()
    action = build(reactor, url=f"http://127.0.0.1:{number}/", retries=1, retry_delay=0.01)
    with pytest.raises(ActionError) as caught:
        yield action.run(job_with(b"x"))
    assert str(caught.value) == (
        f"HTTP POST http://127.0.0.1:{number}/: connection refused (gave up after 2 attempts)"
    )


@pytest_twisted.inlineCallbacks
def test_a_silent_server_times_out(reactor):
    from twisted.internet.protocol import Factory, Protocol

    port = reactor.listenTCP(0, Factory.forProtocol(Protocol), interface="127.0.0.1")
    try:
        url = f"http://127.0.0.1:{port.getHost().port}/"
        action = build(reactor, url=url, retries=0, timeout=0.2)
        with pytest.raises(ActionError, match=r"no complete reply within 0\.2 s \(gave up after 1 attempt\)"):
            yield action.run(job_with(b"x"))
    finally:
        yield port.stopListening()


@pytest_twisted.inlineCallbacks
def test_unknown_variable_in_url_fails_the_action(reactor):
    action = build(reactor, url="http://127.0.0.1:1/${nope}")
    with pytest.raises(ActionError, match=r"unknown variable \$\{nope\}"):
        yield action.run(job_with(b"x"))


def test_tls_is_verified_by_default(reactor):
    from twisted.web.client import BrowserLikePolicyForHTTPS

    action = build(reactor, url="https://example.invalid/")
    assert isinstance(action.client._agent._endpointFactory._policyForHTTPS, BrowserLikePolicyForHTTPS)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("url", "ftp://x/", "must start with http:// or https://"),
        ("method", "FETCH", "must be one of"),
        ("expect_status", "2x0", "is not a status"),
        ("save_reply", "9bad", "is not a variable name"),
        ("headers", {"Bad Name": "x"}, "is not a header name"),
    ],
)
def test_config_errors_name_the_key(key, value, message):
    table = {"url": "http://127.0.0.1/", key: value}
    inline = ", ".join(f"{k} = {_toml(v)}" for k, v in table.items())
    text = f'[[flow]]\nname = "f"\nactions = [ {{ type = "http", {inline} }} ]\n'
    with pytest.raises(ConfigError) as caught:
        loads(text, "rawsvc.toml")
    [line] = caught.value.errors
    assert f"key '{key}'" in line and message in line


def _toml(value):
    if isinstance(value, dict):
        return "{ " + ", ".join(f'"{k}" = {_toml(v)}' for k, v in value.items()) + " }"
    return f'"{value}"'


@pytest_twisted.inlineCallbacks
def test_a_spilled_payload_streams_from_its_file_and_survives_a_retry(reactor, web_server, tmp_path):
    import os

    data = os.urandom(3 << 20)
    payload = Payload(spool_dir=str(tmp_path), threshold=1 << 20)
    payload.write(data)
    payload.close()
    assert not payload.in_memory
    recorder = Recorder([(503, b"busy"), (200, b"ok")])
    action = build(reactor, url=web_server(recorder) + "/", retry_delay=0.01)
    job = Job(trigger="orders", payload=payload, peer_host="127.0.0.1", peer_port=4000)
    yield action.run(job)
    assert [r["body"] == data for r in recorder.requests] == [True, True]
