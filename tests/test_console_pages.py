"""The console's server-rendered pages on a real service: jobs, job, printers; escaping by default."""

from __future__ import annotations

import pytest
import pytest_twisted
from admin_helpers import admin_port, build_service, config_text, send_job, start_reactor_once, trigger_port
from twisted.internet.defer import ensureDeferred

from test_console_api import ADMIN, LABEL


@pytest.fixture(scope="module", autouse=True)
def reactor_running():
    start_reactor_once()


@pytest.fixture
def running(reactor, tmp_path):
    service = build_service(reactor, config_text(tmp_path / "state", ADMIN))
    service.startService()
    port = admin_port(service, "admin-http")
    yield service, f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(ensureDeferred(service.stopService()))


@pytest.fixture
def get(reactor):
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    client = HTTPClient(Agent(reactor))

    async def fetch(url):
        response = await client.get(url)
        return response.code, response.headers, (await treq.content(response)).decode("utf-8")

    return lambda url: ensureDeferred(fetch(url))


@pytest_twisted.inlineCallbacks
def send(reactor, service, *payloads):
    counters = service.triggers["orders"].counters
    for i, data in enumerate(payloads, counters.jobs_ok + 1):
        yield send_job(reactor, trigger_port(service), data, counters, expect_ok=i)
    yield service.sink.store.flush()


@pytest_twisted.inlineCallbacks
def test_jobs_page_lists_jobs_with_links_filters_and_the_polling_url(reactor, running, get):
    service, base = running
    yield send(reactor, service, b"one", b"two")
    code, headers, page = yield get(base + "/console/")
    assert code == 200 and headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    assert page.startswith("<!doctype html>")
    assert page.count('href="/console/job/') == 2
    assert 'data-poll="/api/v1/jobs?"' in page
    assert '<form method="get" action="/console/" class="filters">' in page
    assert 'src="/console/static/console.js"' in page and "http://" not in page.replace(base, "")


@pytest_twisted.inlineCallbacks
def test_jobs_page_has_an_older_link_that_pages_with_the_cursor(reactor, running, get):
    service, base = running
    yield send(reactor, service, b"a", b"b", b"c")
    _, _, page = yield get(base + "/console/?limit=2")
    assert page.count('href="/console/job/') == 2
    assert 'rel="next"' in page and "cursor=" in page
    older = page.split('href="/console/?')[-1].split('"')[0].replace("&amp;", "&")
    _, _, second = yield get(base + "/console/?" + older)
    assert second.count('href="/console/job/') == 1
    assert "data-poll" not in second  # an older page stays as it is


@pytest_twisted.inlineCallbacks
def test_a_bad_filter_on_the_page_is_a_400_page_for_people(running, get):
    _, base = running
    code, _, page = yield get(base + "/console/?state=sleepy")
    assert code == 400 and "unknown state" in page and "Traceback" not in page


@pytest_twisted.inlineCallbacks
def test_job_page_shows_variables_timeline_payload_and_preview(reactor, running, get):
    service, base = running
    yield send(reactor, service, LABEL)
    job = service.sink.recent(1)[0]
    code, _, page = yield get(base + f"/console/job/{job.job_id}")
    assert code == 200
    for part in ("<h2>Timeline</h2>", "<h2>Variables</h2>", "<h2>Payload</h2>", 'id="label-0"',
                 f'href="/api/v1/jobs/{job.job_id}/payload"', 'class="warning"', "Reprint"):
        assert part in page, part
    assert "^XA^FO50,50" in page


@pytest_twisted.inlineCallbacks
def test_job_page_escapes_what_the_job_sent(reactor, running, get):
    service, base = running
    yield send(reactor, service, b"<script>alert(1)</script>")
    job = service.sink.recent(1)[0]
    _, _, page = yield get(base + f"/console/job/{job.job_id}")
    assert "<script>alert(1)</script>" not in page
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "No preview: the job is text, not ZPL." in page


@pytest_twisted.inlineCallbacks
def test_an_unknown_job_page_is_a_404(running, get):
    _, base = running
    code, _, page = yield get(base + "/console/job/nosuchjob")
    assert code == 404 and "no job nosuchjob" in page


@pytest_twisted.inlineCallbacks
def test_printers_page_lists_triggers_and_destinations(running, get):
    _, base = running
    code, _, page = yield get(base + "/console/printers")
    assert code == 200 and "<td>orders</td>" in page and "<h2>Destinations</h2>" in page


@pytest_twisted.inlineCallbacks
def test_static_assets_are_served_from_the_listener(running, get):
    _, base = running
    code, headers, js = yield get(base + "/console/static/console.js")
    assert code == 200 and headers.getRawHeaders(b"content-type") == [b"text/javascript; charset=utf-8"]
    assert "setInterval(poll" in js
    code, _, css = yield get(base + "/console/static/console.css")
    assert code == 200 and "img.label" in css


@pytest_twisted.inlineCallbacks
def test_console_without_its_slash_redirects_for_get_and_head(running, reactor):
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    _, base = running
    client = HTTPClient(Agent(reactor))
    for method in ("GET", "HEAD"):
        response = yield client.request(method, base + "/console", allow_redirects=False)
        assert response.code in (301, 302), (method, response.code)
        assert response.headers.getRawHeaders(b"location") == [b"/console/"]
        yield response.content()
