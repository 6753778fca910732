"""
The C{http} action.  Its logic (requests, retries, back-off, timeouts,
statuses) runs against C{treq.testing.StubTreq} and a L{Clock}: exact, no
sockets.  A few end-to-end tests run against a real local twisted.web
server: refused connections, a silent server, a streamed spilled payload,
the shared persistent client and its quiet logs.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from treq.testing import StubTreq
from twisted.internet.task import Clock
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET
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


class Recorder(Resource):
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
                "peer": request.getClientAddress(),
            }
        )
        status, body = self.answers.pop(0) if self.answers else (200, b"ok")
        request.setResponseCode(status)
        return body


class Silent(Resource):
    """Takes every request and never answers."""

    isLeaf = True

    def __init__(self):
        super().__init__()
        self.requests = 0

    def render(self, request):
        self.requests += 1
        return NOT_DONE_YET


def job_with(data: bytes) -> Job:
    return Job(trigger="orders", payload=Payload(data), peer_host="127.0.0.1", peer_port=4000)


def options(**table) -> dict:
    values, issues = HttpAction.options.validate(table)
    assert not issues, [i.message for i in issues]
    return values


class Stubbed:
    """An action on C{StubTreq(resource)} and a L{Clock}: run it and move time."""

    def __init__(self, resource, **table):
        values = options(**table)
        self.clock = Clock()
        self.stub = StubTreq(resource)
        self.action = HttpAction(
            values["url"], values["method"], values["headers"], values["body"], values["encoding"],
            values["timeout"], values["retries"], values["retry_delay"], values["expect_status"],
            values["save_reply"], values["max_reply"], reactor=self.clock, client=self.stub,
        )
        self.outcome: list = []

    def run(self, job):
        self.action.run(job).addBoth(self.outcome.append)
        self.stub.flush()
        return self

    def advance(self, seconds):
        self.clock.advance(seconds)
        self.stub.flush()

    def result(self):
        """The run's result; its ActionError raised."""
        [value] = self.outcome
        if hasattr(value, "raiseException"):
            value.raiseException()
        return value


# --- logic, on StubTreq ---------------------------------------------------------------


def test_http_action_provides_the_action_interfaces(reactor):
    verifyObject(IActionType, HttpAction)
    verifyClass(IAction, HttpAction)
    verifyObject(IAction, build(reactor, url="http://127.0.0.1:1/"))


def test_posts_the_payload_and_saves_the_reply():
    recorder = Recorder([(201, b"accepted 42")])
    run = Stubbed(
        recorder, url="http://erp.test/jobs/${job_id}",
        headers={"X-Trigger": "${trigger}", "Content-Type": "application/octet-stream"}, save_reply="answer",
    )
    job = job_with(b"ABC;3\xff")
    run.run(job).result()
    [seen] = recorder.requests
    assert seen["method"] == "POST"
    assert seen["path"] == f"/jobs/{job.job_id}"
    assert seen["body"] == b"ABC;3\xff"
    assert seen["headers"]["x-trigger"] == "orders"
    assert job.variables["answer"] == "accepted 42"
    assert job.variables["answer_status"] == "201"


def test_body_template_is_rendered():
    recorder = Recorder()
    Stubbed(recorder, url="http://erp.test/", method="put", body='{"peer": "${peer_host}"}',
            encoding="utf-8").run(job_with(b"x")).result()
    assert recorder.requests[0]["method"] == "PUT"
    assert recorder.requests[0]["body"] == b'{"peer": "127.0.0.1"}'


def test_a_500_is_retried_and_then_fails_with_a_clear_error():
    recorder = Recorder([(500, b"boom")] * 3)
    run = Stubbed(recorder, url="http://erp.test/print", retries=2, retry_delay=0.01, save_reply="r")
    job = job_with(b"x")
    run.run(job)
    run.advance(0.0125)
    run.advance(0.025)
    with pytest.raises(ActionError) as caught:
        run.result()
    assert len(recorder.requests) == 3
    assert str(caught.value) == (
        "HTTP POST http://erp.test/print answered 500 Internal Server Error (expected 2xx) "
        "(gave up after 3 attempts)"
    )
    assert job.variables["r_status"] == "500"
    assert job.variables["r"] == "boom"


def test_retries_wait_retry_delay_doubling_with_a_little_jitter():
    recorder = Recorder([(503, b"busy")] * 3)
    run = Stubbed(recorder, url="http://erp.test/", retries=2, retry_delay=1.0)
    run.run(job_with(b"x"))
    sent = []
    for _ in range(400):  # 4 s in 10 ms steps
        run.advance(0.01)
        sent.append(len(recorder.requests))
    first, second = sent.index(2) + 1, sent.index(3) + 1  # steps of 10 ms until each retry
    assert 100 <= first <= 126  # 1 s + up to 0.25 s
    assert 200 <= second - first <= 226  # 2 s + up to 0.25 s
    with pytest.raises(ActionError, match=r"\(gave up after 3 attempts\)$"):
        run.result()


def test_the_back_off_is_capped_at_30_s_or_at_retry_delay_when_longer():
    short = Stubbed(Recorder(), url="http://erp.test/", retries=9, retry_delay=1.0).action.policy
    assert all(30.0 <= short.delay(n) <= 30.25 for n in (6, 9))
    long = Stubbed(Recorder(), url="http://erp.test/", retries=9, retry_delay=45.0).action.policy
    assert all(45.0 <= long.delay(n) <= 45.0 + 45 / 4 for n in (1, 2, 9))


def test_a_500_then_a_200_succeeds():
    recorder = Recorder([(503, b"busy"), (200, b"fine")])
    run = Stubbed(recorder, url="http://erp.test/", retry_delay=0.01, save_reply="r")
    job = job_with(b"x")
    run.run(job)
    assert run.outcome == [] and len(recorder.requests) == 1
    run.advance(0.0125)
    run.result()
    assert len(recorder.requests) == 2
    assert job.variables["r"] == "fine"


def test_a_4xx_fails_at_once_without_retry():
    recorder = Recorder([(404, b"no such thing")])
    run = Stubbed(recorder, url="http://erp.test/x", retry_delay=0.01).run(job_with(b"x"))
    with pytest.raises(ActionError, match=r"answered 404 Not Found \(expected 2xx\)$"):
        run.result()
    assert len(recorder.requests) == 1 and run.clock.getDelayedCalls() == []


def test_expect_status_accepts_listed_codes():
    Stubbed(Recorder([(404, b"gone")]), url="http://erp.test/", expect_status=[200, 404]).run(job_with(b"x")).result()


def test_no_reply_within_the_timeout_is_retried_then_fails():
    silent = Silent()
    run = Stubbed(silent, url="http://erp.test/", retries=1, retry_delay=1.0, timeout=5).run(job_with(b"x"))
    run.advance(4.5)
    assert run.outcome == [] and silent.requests == 1
    run.advance(0.5)  # the timeout
    assert silent.requests == 1 and run.outcome == []
    run.advance(1.25)  # the back-off
    assert silent.requests == 2 and run.outcome == []
    run.advance(5)
    with pytest.raises(ActionError, match=r"^HTTP POST http://erp.test/: no complete reply within 5 s "
                                          r"\(gave up after 2 attempts\)$"):
        run.result()
    assert run.clock.getDelayedCalls() == []


def test_a_reply_longer_than_max_reply_fails_the_action():
    run = Stubbed(Recorder([(200, b"x" * 11)]), url="http://erp.test/", max_reply=10, retries=0)
    with pytest.raises(ActionError, match=r"reply larger than max_reply \(10 bytes\)"):
        run.run(job_with(b"x")).result()


def test_unknown_variable_in_url_fails_the_action():
    recorder = Recorder()
    run = Stubbed(recorder, url="http://erp.test/${nope}").run(job_with(b"x"))
    with pytest.raises(ActionError, match=r"unknown variable \$\{nope\}"):
        run.result()
    assert recorder.requests == []


# --- the config -------------------------------------------------------------------------


def test_tls_is_verified_by_default(reactor):
    from twisted.web.client import BrowserLikePolicyForHTTPS

    action = build(reactor, url="https://example.invalid/")
    assert isinstance(action.client._agent._endpointFactory._policyForHTTPS, BrowserLikePolicyForHTTPS)


def test_actions_of_a_config_share_one_client_per_tls_setting(reactor):
    context = BuildContext(reactor=reactor)
    a = HttpAction.from_config(options(url="https://a.invalid/"), context)
    b = HttpAction.from_config(options(url="https://b.invalid/", method="PUT"), context)
    unverified = HttpAction.from_config(options(url="https://a.invalid/", verify_tls=False), context)
    assert a.client is b.client
    assert unverified.client is not a.client  # an unchecked connection is never reused by a checking action
    assert context.http_clients.name == "http_clients"


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


def test_the_pool_still_has_the_private_factory_attribute_rawsvc_replaces():
    """rawsvc.client._compat_http sets HTTPConnectionPool._factory; Twisted must still have it."""
    from twisted.internet.testing import MemoryReactorClock
    from twisted.web.client import HTTPConnectionPool

    from rawsvc.client._compat_http import quiet_connection_pool

    assert "_factory" in vars(HTTPConnectionPool), (
        "Twisted's HTTPConnectionPool has no _factory any more: update rawsvc/client/_compat_http.py"
    )
    assert HTTPConnectionPool(MemoryReactorClock())._factory(None, "meta").noisy  # what is being quietened
    pool = quiet_connection_pool(MemoryReactorClock())
    assert pool.persistent and pool._factory(None, "meta").noisy is False


# --- end to end, on a real server -------------------------------------------------------


@pytest.fixture
def web_server(reactor):
    from twisted.internet.defer import ensureDeferred
    from twisted.web.server import Site

    servers = []

    def start(recorder):
        site = Site(recorder)
        site.displayTracebacks = False
        site.noisy = False
        port = reactor.listenTCP(0, site, interface="127.0.0.1")
        servers.append(port)
        return f"http://127.0.0.1:{port.getHost().port}"

    yield start
    for port in servers:
        pytest_twisted.blockon(ensureDeferred(_stop(port)))


async def _stop(port):
    await port.stopListening()


_contexts: list[BuildContext] = []


@pytest.fixture(autouse=True)
def close_shared_clients():
    """Close the persistent connections of the configs a test built (the service does at its stop)."""
    yield
    while _contexts:
        clients = _contexts.pop().http_clients
        if clients is not None:
            pytest_twisted.blockon(clients.stopService())


def build(reactor, **table) -> HttpAction:
    context = BuildContext(reactor=reactor)
    _contexts.append(context)
    return HttpAction.from_config(options(**table), context)


@pytest_twisted.inlineCallbacks
def test_posts_to_a_real_server_over_one_persistent_connection(reactor, web_server):
    recorder = Recorder([(201, b"one"), (200, b"two")])
    base = web_server(recorder)
    first = build(reactor, url=base + "/a", save_reply="r")
    context = _contexts[-1]
    second = HttpAction.from_config(options(url=base + "/b", save_reply="r"), context)
    jobs = [job_with(b"1"), job_with(b"2")]
    yield first.run(jobs[0])
    yield second.run(jobs[1])
    assert [(r["path"], r["body"]) for r in recorder.requests] == [("/a", b"1"), ("/b", b"2")]
    assert [j.variables["r"] for j in jobs] == ["one", "two"]
    assert recorder.requests[0]["peer"].port == recorder.requests[1]["peer"].port  # the same connection


@pytest_twisted.inlineCallbacks
def test_requests_log_no_factory_start_or_stop_lines(reactor, web_server):
    """Issue 19: the pool's connections log nothing of their own, from connect to close."""
    from twisted.logger import formatEvent, globalLogPublisher

    base = web_server(Recorder([(200, b"ok"), (503, b"busy"), (200, b"ok")]))
    action = build(reactor, url=base + "/", retry_delay=0.01)
    lines: list[str] = []

    def observe(event):
        lines.append(formatEvent(event))

    globalLogPublisher.addObserver(observe)
    try:
        yield action.run(job_with(b"x"))
        yield action.run(job_with(b"y"))
        yield _contexts.pop().http_clients.stopService()
    finally:
        globalLogPublisher.removeObserver(observe)
    assert sum("answered 503 Service Unavailable" in line for line in lines) == 1  # the capture works
    assert [line for line in lines if "Starting factory" in line or "Stopping factory" in line] == []


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


@pytest_twisted.inlineCallbacks
def test_the_service_stop_closes_the_shared_persistent_connections(reactor, web_server, tmp_path):
    from support import start_service

    recorder = Recorder()
    base = web_server(recorder)
    service = start_service(tmp_path, f'[[flow]]\nname = "f"\nactions = [ {{ type = "http", url = "{base}/" }} ]\n')
    try:
        clients = service.context.http_clients
        assert clients.parent is service and clients.running
        job = yield service.flows["f"].run(job_with(b"x"))
        assert job.state == "done", job.error
        assert len(recorder.requests) == 1
        assert [len(c) for c in clients._pools[0]._connections.values()] == [1]  # kept open for the next job
    finally:
        yield service.stopService()
    assert not clients.running and clients._pools[0]._connections == {}
