"""The console's JSON API on a real service with a spool: lists, detail, payload, previews, actions, errors."""

from __future__ import annotations

import json
import re

import pytest
import pytest_twisted
from admin_helpers import admin_port, build_service, config_text, send_job, start_reactor_once, trigger_port
from twisted.internet.defer import ensureDeferred

ADMIN = """
[admin.http]
listen = "tcp:0:interface=127.0.0.1"
"""

LABEL = b"^XA^FO50,50^A0N,40,40^FDHello console^FS^FO50,120^BCN,80^FD12345^FS^XZ"


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
def http(reactor):
    """(method, url, headers=None) -> (status, headers, body), with a non-persistent client."""
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    client = HTTPClient(Agent(reactor))

    async def fetch(method, url, headers=None):
        response = await client.request(method, url, headers=headers)
        return response.code, response.headers, await treq.content(response)

    return lambda method, url, headers=None: ensureDeferred(fetch(method, url, headers))


def body_json(body: bytes):
    return json.loads(body.decode("utf-8"))


@pytest_twisted.inlineCallbacks
def _jobs(reactor, service, *payloads):
    counters = service.triggers["orders"].counters
    for i, data in enumerate(payloads, 1):
        yield send_job(reactor, trigger_port(service), data, counters, expect_ok=i)
    yield service.sink.store.flush()


def jobs_sent(reactor, service, *payloads):
    return _jobs(reactor, service, *payloads)


@pytest_twisted.inlineCallbacks
def test_jobs_list_is_newest_first_with_a_cursor_to_the_next_page(reactor, running, http):
    service, base = running
    yield jobs_sent(reactor, service, b"one", b"two", b"three")
    code, _, body = yield http("GET", base + "/api/v1/jobs?limit=2")
    assert code == 200
    first = body_json(body)
    assert [j["size"] for j in first["jobs"]] == [5, 3]
    assert first["next_cursor"]
    code, _, body = yield http("GET", base + f"/api/v1/jobs?limit=2&cursor={first['next_cursor']}")
    second = body_json(body)
    assert [j["size"] for j in second["jobs"]] == [3]
    assert second["next_cursor"] is None


@pytest_twisted.inlineCallbacks
def test_jobs_list_filters_by_text_state_and_trigger(reactor, running, http):
    service, base = running
    yield jobs_sent(reactor, service, b"alpha", b"beta")
    _, _, body = yield http("GET", base + "/api/v1/jobs?state=done&trigger=orders")
    assert body_json(body)["count"] == 2
    _, _, body = yield http("GET", base + "/api/v1/jobs?state=failed")
    assert body_json(body)["count"] == 0
    _, _, body = yield http("GET", base + "/api/v1/jobs?trigger=other")
    assert body_json(body)["count"] == 0
    job_id = body_json((yield http("GET", base + "/api/v1/jobs"))[2])["jobs"][0]["job_id"]
    _, _, body = yield http("GET", base + f"/api/v1/jobs?q={job_id[-6:]}")
    assert [j["job_id"] for j in body_json(body)["jobs"]] == [job_id]


@pytest.mark.parametrize("query, words", [
    ("state=sleepy", "unknown state"),
    ("limit=100000", "limit must be"),
    ("limit=0", "limit must be"),
    ("since=yesterday", "since must be"),
    ("cursor=abc", "cursor must be"),
    ("colour=red", "unknown parameter"),
])
@pytest_twisted.inlineCallbacks
def test_bad_filters_are_a_400_with_a_json_error(running, http, query, words):
    _, base = running
    code, headers, body = yield http("GET", base + "/api/v1/jobs?" + query)
    assert code == 400
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert words in body_json(body)["error"]
    assert b"Traceback" not in body


@pytest.mark.parametrize("path", ["", "/payload", "/view", "/preview", "/preview/0.png"])
@pytest_twisted.inlineCallbacks
def test_an_unknown_job_is_a_404_with_a_json_error(running, http, path):
    _, base = running
    code, _, body = yield http("GET", base + "/api/v1/jobs/nosuchjob" + path)
    assert code == 404
    assert body_json(body) == {"error": "no job nosuchjob"}


@pytest_twisted.inlineCallbacks
def test_unknown_endpoint_and_wrong_method_are_json_errors(running, http):
    _, base = running
    code, _, body = yield http("GET", base + "/api/v1/printerz")
    assert code == 404 and "no API endpoint" in body_json(body)["error"]
    code, _, body = yield http("POST", base + "/api/v1/jobs")
    assert code == 405 and "use GET" in body_json(body)["error"]


@pytest_twisted.inlineCallbacks
def test_job_detail_has_variables_delivery_timeline_and_language(reactor, running, http):
    service, base = running
    yield jobs_sent(reactor, service, LABEL)
    job_id = body_json((yield http("GET", base + "/api/v1/jobs"))[2])["jobs"][0]["job_id"]
    code, _, body = yield http("GET", base + f"/api/v1/jobs/{job_id}")
    assert code == 200
    job = body_json(body)
    assert job["state"] == "done"
    assert job["payload_size"] == len(LABEL)
    assert job["language"] == "zpl"
    assert job["variables"]["job_id"] == job_id
    assert [e["event"] for e in job["timeline"]][0] == "received"
    assert job["timeline"][-1]["event"] == "done"
    assert "destination" in job["delivery"]


@pytest_twisted.inlineCallbacks
def test_payload_download_and_text_and_hex_views(reactor, running, http):
    service, base = running
    data = b"line one\n\x00\x01binary"
    yield jobs_sent(reactor, service, data)
    job_id = body_json((yield http("GET", base + "/api/v1/jobs"))[2])["jobs"][0]["job_id"]
    code, headers, body = yield http("GET", base + f"/api/v1/jobs/{job_id}/payload")
    assert code == 200 and body == data
    assert headers.getRawHeaders(b"content-disposition")[0].startswith(b"attachment;")
    view = body_json((yield http("GET", base + f"/api/v1/jobs/{job_id}/view?as=hex"))[2])
    assert view["content"].startswith("00000000  6c 69 6e 65 20 6f 6e 65 0a 00 01")
    assert view["size"] == len(data) and not view["truncated"]
    view = body_json((yield http("GET", base + f"/api/v1/jobs/{job_id}/view?as=text"))[2])
    assert view["content"].startswith("line one\n")
    code, _, body = yield http("GET", base + f"/api/v1/jobs/{job_id}/view?as=pdf")
    assert code == 400 and "text or hex" in body_json(body)["error"]


@pytest_twisted.inlineCallbacks
def test_preview_of_a_zpl_job_is_one_png_per_label(reactor, running, http):
    service, base = running
    yield jobs_sent(reactor, service, LABEL + b"^XA^FO20,20^ADN,36,20^FDSecond^FS^XZ")
    job_id = body_json((yield http("GET", base + "/api/v1/jobs"))[2])["jobs"][0]["job_id"]
    code, _, body = yield http("GET", base + f"/api/v1/jobs/{job_id}/preview")
    assert code == 200
    preview = body_json(body)
    assert preview["language"] == "zpl" and preview["labels"] == 2 and preview["error"] is None
    assert preview["warnings"]  # zplkit says its resident fonts are bitmap strikes
    code, headers, png = yield http("GET", base + preview["images"][1])
    assert code == 200 and headers.getRawHeaders(b"content-type") == [b"image/png"]
    assert png.startswith(b"\x89PNG\r\n\x1a\n")
    code, _, body = yield http("GET", base + f"/api/v1/jobs/{job_id}/preview/2.png")
    assert code == 404


@pytest_twisted.inlineCallbacks
def test_preview_of_a_non_zpl_job_names_its_language_and_has_no_image(reactor, running, http):
    service, base = running
    yield jobs_sent(reactor, service, b"%PDF-1.4 not a label")
    job_id = body_json((yield http("GET", base + "/api/v1/jobs"))[2])["jobs"][0]["job_id"]
    preview = body_json((yield http("GET", base + f"/api/v1/jobs/{job_id}/preview"))[2])
    assert preview["language"] == "pdf" and preview["images"] == [] and preview["error"] is None


def csrf_token(page: bytes) -> str:
    match = re.search(rb'<meta name="csrf-token" content="([^"]+)"', page)
    assert match, page[:300]
    return match.group(1).decode()


@pytest_twisted.inlineCallbacks
def test_retry_without_or_with_a_wrong_csrf_token_is_refused(reactor, running, http):
    service, base = running
    yield jobs_sent(reactor, service, b"x")
    job_id = body_json((yield http("GET", base + "/api/v1/jobs"))[2])["jobs"][0]["job_id"]
    code, _, body = yield http("POST", base + f"/api/v1/jobs/{job_id}/retry")
    assert code == 403 and "CSRF" in body_json(body)["error"]
    code, _, body = yield http("POST", base + f"/api/v1/jobs/{job_id}/retry", {b"X-CSRF-Token": [b"guess"]})
    assert code == 403
    code, _, body = yield http("GET", base + f"/api/v1/jobs/{job_id}/retry")
    assert code == 405


@pytest_twisted.inlineCallbacks
def test_retry_of_a_done_job_answers_what_the_sink_says(reactor, running, http):
    service, base = running
    yield jobs_sent(reactor, service, b"again")
    job_id = body_json((yield http("GET", base + "/api/v1/jobs"))[2])["jobs"][0]["job_id"]
    token = csrf_token((yield http("GET", base + "/console/"))[2])
    code, _, body = yield http("POST", base + f"/api/v1/jobs/{job_id}/retry", {b"X-CSRF-Token": [token.encode()]})
    assert code == 200
    answer = body_json(body)
    assert answer["ok"] is True and answer["message"] == f"job {job_id} (done) queued again at action 0"
    code, _, body = yield http("POST", base + f"/api/v1/jobs/{job_id}/cancel?csrf={token}")
    assert code == 200 and job_id in body_json(body)["message"]
    code, _, body = yield http("POST", base + "/api/v1/jobs/nosuchjob/retry", {b"X-CSRF-Token": [token.encode()]})
    assert code == 404 and body_json(body)["error"] == "no job nosuchjob"


@pytest_twisted.inlineCallbacks
def test_destinations_lists_triggers_and_their_state(running, http):
    _, base = running
    code, _, body = yield http("GET", base + "/api/v1/destinations")
    assert code == 200
    report = body_json(body)
    assert report["triggers"]["orders"]["listening"] is True
    assert report["destinations"] == {}


@pytest_twisted.inlineCallbacks
def test_a_50_mb_hostile_zpl_job_is_refused_by_the_preview_while_jobs_keep_flowing(reactor, running, http):
    service, base = running
    hostile = b"^XA" + b"^FO1,1^GB9999,9999,9999^FS" * (50 * 1024 * 1024 // 27) + b"^XZ"
    yield jobs_sent(reactor, service, hostile)
    job_id = body_json((yield http("GET", base + "/api/v1/jobs"))[2])["jobs"][0]["job_id"]
    d = http("GET", base + f"/api/v1/jobs/{job_id}/preview")
    counters = service.triggers["orders"].counters
    yield send_job(reactor, trigger_port(service), b"next job", counters, expect_ok=2)  # flows meanwhile
    code, _, body = yield d
    assert code == 200
    answer = body_json(body)
    assert answer["images"] == [] and "previews are drawn up to 4194304 bytes" in answer["error"]
    code, _, body = yield http("GET", base + f"/api/v1/jobs/{job_id}/view?as=text")
    view = body_json(body)
    assert view["truncated"] and view["shown_bytes"] == 64 * 1024 and view["size"] == len(hostile)
