"""
HEAD on the admin HTTP listener: the GET's headers, no body, and no
warning in the log (twisted.web logs one per HEAD on a resource that has
no render_HEAD of its own).
"""

from __future__ import annotations

import pytest
import pytest_twisted
from admin_helpers import admin_port, build_service, config_text, start_reactor_once
from twisted.internet.defer import ensureDeferred
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

ADMIN = """
[admin.http]
listen = "tcp:0:interface=127.0.0.1"
"""

#: Paths whose answer does not change between two requests.
STEADY = ["/healthz", "/jobs", "/jobs?state=bogus"]


@pytest.fixture(scope="module", autouse=True)
def reactor_running():
    start_reactor_once()


@pytest.fixture
def base(reactor, tmp_path):
    service = build_service(reactor, config_text(tmp_path / "state", ADMIN, spool=False))
    service.startService()
    yield f"http://127.0.0.1:{admin_port(service, 'admin-http').getHost().port}"
    pytest_twisted.blockon(service.stopService())


@pytest.fixture
def logged():
    events: list[dict] = []
    globalLogPublisher.addObserver(events.append)
    yield events
    globalLogPublisher.removeObserver(events.append)


@pytest.fixture
def fetch(reactor):
    """C{fetch(method, url)}: (status, headers, body) from a real, non-persistent client."""
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    client = HTTPClient(Agent(reactor))

    async def go(method, url):
        response = await client.request(method, url)
        body = await treq.content(response)
        return response.code, response.headers, body

    return lambda method, url: ensureDeferred(go(method, url))


def _headers(headers) -> dict:
    # Twisted's client keeps a GET's content-length to itself (as the response length).
    skip = {b"date", b"server", b"content-length"}
    return {k.lower(): v for k, v in headers.getAllRawHeaders() if k.lower() not in skip}


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("path", STEADY)
def test_head_answers_the_get_headers_without_a_body(base, fetch, path):
    get_code, get_headers, get_body = yield fetch("GET", base + path)
    head_code, head_headers, head_body = yield fetch("HEAD", base + path)
    assert head_body == b"" and get_body != b""
    assert head_code == get_code
    assert _headers(head_headers) == _headers(get_headers)
    assert head_headers.getRawHeaders(b"content-length") == [b"%d" % len(get_body)]


@pytest_twisted.inlineCallbacks
@pytest.mark.parametrize("path", ["/", "/metrics"])
def test_head_on_the_changing_pages_has_their_type_and_a_length(base, fetch, path):
    _, get_headers, _ = yield fetch("GET", base + path)
    code, headers, body = yield fetch("HEAD", base + path)
    assert code == 200 and body == b""
    assert headers.getRawHeaders(b"content-type") == get_headers.getRawHeaders(b"content-type")
    assert int(headers.getRawHeaders(b"content-length")[0]) > 0


@pytest_twisted.inlineCallbacks
def test_head_requests_log_no_warning(base, fetch, logged):
    for path in ["/", "/metrics"] + STEADY:
        yield fetch("HEAD", base + path)
    texts = [formatEvent(e) or "" for e in logged]
    assert texts and [t for t in texts if "Warning" in t or "fake a HEAD" in t] == []
    assert [e for e in logged if e.get("log_level") in (LogLevel.warn, LogLevel.error, LogLevel.critical)] == []
