"""The HTTP admin listener: /healthz, /metrics, /jobs and the status page."""

from __future__ import annotations

import json

import pytest
import pytest_twisted
from admin_helpers import admin_port, build_service, config_text, send_job, start_reactor_once, trigger_port
from twisted.internet.defer import ensureDeferred

from rawsvc.config import loads
from rawsvc.errors import ConfigError

ADMIN = """
[admin.http]
listen = "tcp:0:interface=127.0.0.1"
"""


@pytest.fixture(scope="module", autouse=True)
def reactor_running():
    start_reactor_once()


@pytest.fixture
def running(reactor, tmp_path):
    """A started RawService with a tcp trigger and the HTTP admin; yields (service, base URL)."""
    service = build_service(reactor, config_text(tmp_path / "state", ADMIN))
    service.startService()
    port = admin_port(service, "admin-http")
    yield service, f"http://127.0.0.1:{port.getHost().port}"
    pytest_twisted.blockon(ensureDeferred(_stop(service)))


async def _stop(service):
    await service.stopService()


@pytest.fixture
def get(reactor):
    """GET a URL with a non-persistent client; returns (status, headers, body)."""
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    client = HTTPClient(Agent(reactor))

    async def fetch(url):
        response = await client.get(url)
        body = await treq.content(response)
        return response.code, response.headers, body

    return lambda url: ensureDeferred(fetch(url))


def parse_metrics(text: str) -> dict:
    """Samples by (name, sorted labels), through prometheus_client's own parser."""
    from prometheus_client.parser import text_string_to_metric_families

    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


@pytest_twisted.inlineCallbacks
def test_metrics_parse_and_counters_move_as_jobs_flow(reactor, running, get):
    service, base = running
    code, headers, body = yield get(base + "/metrics")
    assert code == 200
    assert headers.getRawHeaders(b"content-type")[0].startswith(b"text/plain; version=0.0.4")
    before = parse_metrics(body.decode())
    ok = ("rawsvc_trigger_jobs_total", (("outcome", "ok"), ("trigger", "orders")))
    assert before[ok] == 0
    counters = service.triggers["orders"].counters
    yield send_job(reactor, trigger_port(service), b"12345", counters, expect_ok=1)
    yield send_job(reactor, trigger_port(service), b"678", counters, expect_ok=2)
    after = parse_metrics((yield get(base + "/metrics"))[2].decode())
    assert after[ok] == 2
    assert after[("rawsvc_trigger_connections_total", (("trigger", "orders"),))] == 2
    assert after[("rawsvc_trigger_bytes_total", (("direction", "in"), ("trigger", "orders")))] == 8
    assert after[("rawsvc_trigger_flow_duration_seconds_count", (("trigger", "orders"),))] == 2
    assert after[("rawsvc_trigger_flow_duration_seconds_bucket", (("le", "+Inf"), ("trigger", "orders")))] == 2
    assert after[("rawsvc_trigger_up", (("trigger", "orders"), ("type", "tcp")))] == 1


@pytest_twisted.inlineCallbacks
def test_metrics_include_destination_counters(running, get):
    service, base = running
    pool = type("Pool", (), {"status": lambda self: {
        "127.0.0.1:9100": {"attempts": 5, "delivered": 3, "failures": 2, "retries": 1, "queued": 4, "state": "idle"}
    }})()
    real, service.destinations = service.destinations, pool
    try:
        samples = parse_metrics((yield get(base + "/metrics"))[2].decode())
    finally:
        service.destinations = real
    dest = (("destination", "127.0.0.1:9100"),)
    assert samples[("rawsvc_destination_attempts_total", dest)] == 5
    assert samples[("rawsvc_destination_failures_total", dest)] == 2
    assert samples[("rawsvc_destination_retries_total", dest)] == 1
    assert samples[("rawsvc_destination_queue_depth", dest)] == 4


@pytest_twisted.inlineCallbacks
def test_healthz_is_200_while_listeners_are_up_and_503_when_one_is_paused(running, get):
    service, base = running
    code, _, body = yield get(base + "/healthz")
    assert code == 200
    assert json.loads(body)["ok"] is True
    yield service.triggers["orders"].pause()
    code, headers, body = yield get(base + "/healthz")
    assert code == 503
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    report = json.loads(body)
    assert report["ok"] is False
    assert report["down"] == ["orders"]
    assert report["listeners"]["orders"]["up"] is False


@pytest_twisted.inlineCallbacks
def test_jobs_lists_recent_jobs_with_filters(reactor, running, get):
    service, base = running
    counters = service.triggers["orders"].counters
    yield send_job(reactor, trigger_port(service), b"one", counters, expect_ok=1)
    code, _, body = yield get(base + "/jobs")
    assert code == 200
    [job] = json.loads(body)["jobs"]
    assert job["trigger"] == "orders" and job["state"] == "done" and job["size"] == 3
    assert json.loads((yield get(base + "/jobs?state=failed"))[2])["jobs"] == []
    assert json.loads((yield get(base + "/jobs?trigger=other"))[2])["jobs"] == []
    assert json.loads((yield get(base + "/jobs?trigger=orders&state=done,failed"))[2])["count"] == 1
    assert (yield get(base + "/jobs?limit=x"))[0] == 400


@pytest_twisted.inlineCallbacks
def test_status_page_lists_triggers_and_recent_jobs(reactor, running, get):
    service, base = running
    counters = service.triggers["orders"].counters
    yield send_job(reactor, trigger_port(service), b"<b>", counters, expect_ok=1)
    code, headers, body = yield get(base + "/")
    page = body.decode()
    assert code == 200
    assert headers.getRawHeaders(b"content-type") == [b"text/html; charset=utf-8"]
    assert '<meta http-equiv="refresh" content="5">' in page
    assert "<td>orders</td>" in page
    job = service.sink.recent(1)[0]
    assert f"<td>{job.job_id}</td>" in page


def test_http_admin_listens_on_loopback_by_default(tmp_path):
    config = loads(config_text(tmp_path, "[admin.http]\n"), "rawsvc.toml")
    assert config.admin["http"]["listen"] == "tcp:8080:interface=127.0.0.1"


def test_bad_listen_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as caught:
        loads(config_text(tmp_path, '[admin.http]\nlisten = "8080"\n'), "rawsvc.toml")
    [line] = caught.value.errors
    assert line.startswith("rawsvc.toml: [admin.http]: key 'listen': '8080' is not an endpoint string")
