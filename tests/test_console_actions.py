"""
The console's operator actions beyond retry/cancel, on a real service with
a spool and a real printer (a Twisted server on loopback): pausing and
resuming a trigger and a destination, reprinting a done job (its flow
again, or to a chosen destination), the stats behind the charts, and the
bad input, CSRF and role refusals of each.
"""

from __future__ import annotations

import json
import socket
import textwrap

import pytest
import pytest_twisted
from admin_helpers import admin_port, build_service, send_job, start_reactor_once, trigger_port
from printer_support import wait_for
from test_console_api import csrf_token
from twisted.internet.defer import ensureDeferred
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import deferLater

TOKENS = ("viewer-token-0123456789abcdef", "operator-token-0123456789abcd")


@pytest.fixture(scope="module", autouse=True)
def reactor_running():
    start_reactor_once()


class Printer(Protocol):
    def connectionMade(self):
        self.data = []

    def dataReceived(self, data):
        self.data.append(data)

    def connectionLost(self, reason):
        self.factory.jobs.append(b"".join(self.data))


@pytest.fixture
def printer(reactor):
    """A real printer on loopback: (its "host:port", the list of jobs it received, in order)."""
    factory = Factory.forProtocol(Printer)
    factory.jobs = []
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    yield f"127.0.0.1:{port.getHost().port}", factory.jobs
    pytest_twisted.blockon(port.stopListening())


def config(state_dir, destination: str, admin_extra: str = "", send_extra: str = "") -> str:
    return textwrap.dedent(f"""
        [service]
        state_dir = "{state_dir}"

        [[trigger]]
        name = "orders"
        type = "tcp"
        listen = "tcp:0:interface=127.0.0.1"
        execute_on = "disconnect"
        flow = "forward"

        [[flow]]
        name = "forward"
        actions = [ {{ type = "send_tcp", destination = "{destination}", retry_delay = 0.1, max_retry_delay = 0.2{send_extra} }} ]

        [admin.http]
        listen = "tcp:0:interface=127.0.0.1"
        """) + admin_extra


@pytest.fixture
def make(reactor, tmp_path):
    started = []

    def start(destination: str, admin_extra: str = "", state: str = "", send_extra: str = ""):
        state_dir = tmp_path / (state or f"state{len(started)}")
        service = build_service(reactor, config(state_dir, destination, admin_extra, send_extra))
        service.startService()
        started.append(service)
        return service, f"http://127.0.0.1:{admin_port(service, 'admin-http').getHost().port}"

    yield start
    for service in started:
        if service.running:
            pytest_twisted.blockon(ensureDeferred(service.stopService()))


@pytest.fixture
def http(reactor):
    """(method, url, data=None, headers=None) -> (status, headers, body)."""
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    client = HTTPClient(Agent(reactor))

    async def fetch(method, url, data=None, headers=None):
        response = await client.request(method, url, data=data, headers=headers)
        return response.code, response.headers, await treq.content(response)

    return lambda method, url, data=None, headers=None: ensureDeferred(fetch(method, url, data, headers))


def as_json(body: bytes):
    return json.loads(body.decode("utf-8"))


def refused(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
    except ConnectionRefusedError:
        return True
    return False


@pytest_twisted.inlineCallbacks
def token_of(http, base, headers=None):
    _, _, page = yield http("GET", base + "/console/printers", headers=headers)
    return csrf_token(page)


@pytest_twisted.inlineCallbacks
def test_pausing_a_trigger_closes_its_port_and_resuming_opens_it(make, printer, http):
    service, base = make(printer[0])
    port = trigger_port(service)
    token = yield token_of(http, base)
    code, _, body = yield http("POST", base + "/api/v1/triggers/orders/pause", {"csrf": token})
    assert code == 200, body
    assert as_json(body)["message"].startswith("trigger orders paused by 127.0.0.1")
    assert refused(port)
    _, _, body = yield http("GET", base + "/api/v1/destinations")
    assert as_json(body)["triggers"]["orders"]["paused"] is True
    _, _, page = yield http("GET", base + "/console/printers")
    assert b'id="resume-trigger-orders"' in page and b">paused<" in page
    code, _, body = yield http("POST", base + "/api/v1/triggers/orders/resume", {"csrf": token})
    assert code == 200 and "resumed" in as_json(body)["message"]
    new_port = trigger_port(service)
    assert not refused(new_port)


@pytest_twisted.inlineCallbacks
def test_a_paused_destination_keeps_its_jobs_queued_until_resumed(reactor, make, printer, http):
    destination, received = printer
    service, base = make(destination)
    token = yield token_of(http, base)
    code, _, body = yield http("POST", base + f"/api/v1/destinations/{destination.replace(':', '%3A')}/pause",
                               {"csrf": token})
    assert code == 200 and as_json(body)["message"] == f"destination {destination} paused by 127.0.0.1"
    counters = service.triggers["orders"].counters
    sent = [b"first label", b"second label"]
    for data in sent:
        with socket.create_connection(("127.0.0.1", trigger_port(service)), timeout=5) as s:
            s.sendall(data)
    yield wait_for(lambda: service.destinations.status().get(destination, {}).get("queued") == 2)
    yield deferLater(reactor, 0.3, lambda: None)
    assert received == [] and counters.jobs_ok == 0  # nothing sent, nothing dropped
    status = service.destinations.status()[destination]
    assert status["state"] == "paused" and status["paused_by"] == "127.0.0.1"
    _, _, metrics = yield http("GET", base + "/metrics")
    assert f'rawsvc_destination_paused{{destination="{destination}"}} 1.0'.encode() in metrics
    _, _, page = yield http("GET", base + "/console/printers")
    assert f'id="resume-destination-{destination}"'.encode() in page
    code, _, body = yield http("POST", base + f"/api/v1/destinations/{destination}/resume", {"csrf": token})
    assert code == 200 and "resumed" in as_json(body)["message"]
    yield wait_for(lambda: counters.jobs_ok == 2)
    assert received == sent  # in order, each once
    status = service.destinations.status()[destination]
    assert status["paused"] is False and status["jobs_per_minute"] == pytest.approx(2 / 5)


@pytest_twisted.inlineCallbacks
def test_a_service_stops_while_a_destination_is_paused_and_the_job_stays_unfinished(reactor, make, printer, http):
    destination, received = printer
    service, base = make(destination, state="kept")
    assert service.destinations.pause(destination, "test")
    with socket.create_connection(("127.0.0.1", trigger_port(service)), timeout=5) as s:
        s.sendall(b"held back")
    yield wait_for(lambda: service.destinations.status().get(destination, {}).get("state") == "paused"
                   and len(service.sink.running) == 1)
    job_id = next(iter(service.sink.running))
    yield ensureDeferred(service.stopService())  # it does not hang on the pause
    assert received == [] and [j.state for j in service.sink.history if j.job_id == job_id] == ["interrupted"]
    again, _ = make(destination, state="kept")  # the pause is not kept: the job resumes and is printed
    yield wait_for(lambda: received == [b"held back"])
    assert again.triggers["orders"].counters.jobs_received == 0  # resumed, not received again


@pytest_twisted.inlineCallbacks
def test_reprint_to_a_chosen_destination_is_a_new_job_linked_to_the_first(reactor, make, printer, http, tmp_path):
    destination, received = printer
    # A second printer, the one chosen for the reprint.
    factory = Factory.forProtocol(Printer)
    factory.jobs = []
    other = reactor.listenTCP(0, factory, interface="127.0.0.1")
    try:
        service, base = make(destination)
        yield send_job(reactor, trigger_port(service), b"^XA^FDreprint me^FS^XZ", service.triggers["orders"].counters, 1)
        yield service.sink.store.flush()
        job_id = service.sink.recent(1)[0].job_id
        _, _, page = yield http("GET", base + f"/console/job/{job_id}")
        assert b'id="reprint-to"' in page and f'<option value="{destination}"'.encode() in page
        token = csrf_token(page)
        chosen = f"127.0.0.1:{other.getHost().port}"
        code, _, body = yield http("POST", base + f"/api/v1/jobs/{job_id}/reprint",
                                   {"csrf": token, "destination": chosen})
        assert code == 200, body
        answer = as_json(body)
        assert answer["reprint_of"] == job_id and answer["job_id"] != job_id and answer["destination"] == chosen
        yield wait_for(lambda: factory.jobs == [b"^XA^FDreprint me^FS^XZ"])
        assert received == [b"^XA^FDreprint me^FS^XZ"]  # the first printer got the job once, not the reprint
        yield wait_for(lambda: any(j.job_id == answer["job_id"] and j.state == "done" for j in service.sink.recent(5)))
        yield service.sink.store.flush()
        code, _, body = yield http("GET", base + f"/api/v1/jobs/{answer['job_id']}")
        detail = as_json(body)
        assert code == 200 and detail["state"] == "done" and detail["trigger"] == "console"
        assert detail["variables"]["reprint_of"] == job_id
        assert detail["variables"]["reprint_destination"] == chosen
        # Without a destination: its flow runs again, to the first printer.
        code, _, body = yield http("POST", base + f"/api/v1/jobs/{job_id}/reprint", {"csrf": token})
        assert code == 200 and "queued again" in as_json(body)["message"]
        yield wait_for(lambda: len(received) == 2)
        assert received[1] == received[0]
    finally:
        yield other.stopListening()


@pytest.mark.parametrize("path, data, code, words", [
    ("/api/v1/jobs/{job}/reprint", {"destination": "no port here"}, 400, "destination"),
    ("/api/v1/jobs/{job}/reprint", {"destination": "192.0.2.1:9100"}, 400, "not in allowed_destinations"),
    ("/api/v1/jobs/{job}/reprint", {"destination": "127.0.0.1:1", "colour": "red"}, 400, "unknown parameter"),
    ("/api/v1/jobs/nosuchjob/reprint", {}, 404, "no job nosuchjob"),
    ("/api/v1/triggers/nosuch/pause", {}, 404, "no trigger 'nosuch'"),
    ("/api/v1/destinations/not-a-destination/pause", {}, 400, "destination 'not-a-destination'"),
    ("/api/v1/destinations/192.0.2.1%3A9100/pause", {}, 400, "not in allowed_destinations"),
    ("/api/v1/triggers/orders/stop", {}, 404, "no API endpoint"),
])
@pytest_twisted.inlineCallbacks
def test_bad_action_input_is_a_clear_4xx_with_a_json_error(reactor, make, printer, http, path, data, code, words):
    service, base = make(printer[0])
    yield send_job(reactor, trigger_port(service), b"done job", service.triggers["orders"].counters, 1)
    yield service.sink.store.flush()
    job_id = service.sink.recent(1)[0].job_id
    token = yield token_of(http, base)
    status, headers, body = yield http("POST", base + path.format(job=job_id), {"csrf": token, **data})
    assert status == code, body
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert words in as_json(body)["error"] and b"Traceback" not in body


@pytest_twisted.inlineCallbacks
def test_reprint_of_a_job_that_is_not_done_is_a_409(reactor, make, http):
    service, base = make("127.0.0.1:1", send_extra=", retry_for = 0")  # nothing listens: the job fails
    with socket.create_connection(("127.0.0.1", trigger_port(service)), timeout=5) as s:
        s.sendall(b"never printed")
    yield wait_for(lambda: service.triggers["orders"].counters.jobs_failed == 1)
    yield service.sink.store.flush()
    job_id = service.sink.recent(1)[0].job_id
    token = yield token_of(http, base)
    code, _, body = yield http("POST", base + f"/api/v1/jobs/{job_id}/reprint", {"csrf": token})
    assert code == 409 and "only a done job is reprinted" in as_json(body)["error"]


@pytest.mark.parametrize("path", ["/api/v1/triggers/orders/pause", "/api/v1/destinations/127.0.0.1:9100/pause",
                                  "/api/v1/jobs/x/reprint"])
@pytest_twisted.inlineCallbacks
def test_actions_without_the_csrf_token_or_as_a_get_are_refused(make, printer, http, path):
    service, base = make(printer[0])
    code, _, body = yield http("POST", base + path, {"csrf": "forged"})
    assert code == 403 and "CSRF" in as_json(body)["error"]
    code, _, body = yield http("POST", base + path)
    assert code == 403 and "CSRF" in as_json(body)["error"]
    code, _, body = yield http("GET", base + path)
    assert code == 405 and "is a POST" in as_json(body)["error"]
    assert service.triggers["orders"].listening


@pytest.mark.parametrize("path", ["/api/v1/triggers/orders/pause", "/api/v1/destinations/127.0.0.1:9100/pause",
                                  "/api/v1/jobs/x/reprint"])
@pytest_twisted.inlineCallbacks
def test_a_viewer_cannot_pause_or_reprint_and_an_operator_can(make, printer, http, path):
    tokens = f'tokens = ["vera:viewer:{TOKENS[0]}", "otto:operator:{TOKENS[1]}"]\n'
    service, base = make(printer[0], tokens)
    viewer = {b"Authorization": [f"Bearer {TOKENS[0]}".encode()]}
    operator = {b"Authorization": [f"Bearer {TOKENS[1]}".encode()]}
    token = yield token_of(http, base, viewer)
    code, _, body = yield http("POST", base + path, {"csrf": token}, viewer)
    assert code == 403 and "viewers may only look" in as_json(body)["error"]
    assert service.triggers["orders"].listening and not service.destinations.status().get("127.0.0.1:9100")
    if "triggers" in path:
        code, _, body = yield http("POST", base + path, {"csrf": token}, operator)
        assert code == 200 and as_json(body)["message"] == "trigger orders paused by otto from 127.0.0.1"


@pytest_twisted.inlineCallbacks
def test_stats_count_finished_jobs_and_ack_latency_and_the_page_draws_them(reactor, make, printer, http):
    service, base = make(printer[0])
    counters = service.triggers["orders"].counters
    for i in range(1, 4):
        yield send_job(reactor, trigger_port(service), b"job %d" % i, counters, i)
    for name, points in (("hour", 60), ("day", 144)):
        code, _, body = yield http("GET", base + f"/api/v1/stats?range={name}")
        stats = as_json(body)
        assert code == 200 and stats["range"] == name and len(stats["points"]) == points
        assert stats["totals"]["done"] == 3 and stats["totals"]["failed"] == 0 and stats["totals"]["acked"] == 3
        assert 0 <= stats["totals"]["ack_p50"] <= stats["totals"]["ack_p99"] < 5
    assert sum(p["done"] for p in as_json((yield http("GET", base + "/api/v1/stats"))[2])["points"]) == 3
    _, _, body = yield http("GET", base + "/api/v1/destinations")
    assert as_json(body)["triggers"]["orders"]["jobs_per_minute"] == pytest.approx(3 / 5)
    code, _, page = yield http("GET", base + "/console/printers")
    assert code == 200
    for part in (b'<svg xmlns="http://www.w3.org/2000/svg"', b'id="chart-jobs-hour"', b'id="chart-ack-hour"',
                 b'id="chart-jobs-day"', b"<polyline", b"3 done, 0 failed", b"<th>jobs/min</th>"):
        assert part in page, part


@pytest.mark.parametrize("query, code, words", [
    ("range=week", 400, "range must be hour or day"),
    ("range=hour&colour=red", 400, "unknown parameter"),
])
@pytest_twisted.inlineCallbacks
def test_bad_stats_queries_are_a_400(make, printer, http, query, code, words):
    _, base = make(printer[0])
    status, _, body = yield http("GET", base + "/api/v1/stats?" + query)
    assert status == code and words in as_json(body)["error"]
    status, _, body = yield http("POST", base + "/api/v1/stats")
    assert status == 405


@pytest_twisted.inlineCallbacks
def test_a_reprint_the_spool_cannot_store_is_a_503_not_reprinted(reactor, make, printer, http):
    destination, received = printer
    service, base = make(destination)
    yield send_job(reactor, trigger_port(service), b"stored once", service.triggers["orders"].counters, 1)
    yield service.sink.store.flush()
    job_id = service.sink.recent(1)[0].job_id
    token = yield token_of(http, base)
    writer = service.sink.store.writer
    writer.error = "disk I/O error (the test's)"  # what the writer sets when a write fails
    try:
        code, headers, body = yield http("POST", base + f"/api/v1/jobs/{job_id}/reprint",
                                         {"csrf": token, "destination": destination})
    finally:
        writer.error = None
    assert code == 503, body
    assert headers.getRawHeaders(b"content-type") == [b"application/json"]
    assert "disk I/O error (the test's)" in as_json(body)["error"] and b"reprinted" not in body
    assert [j.state for j in service.sink.recent(5) if j.trigger == "console"] == ["refused"]
    assert received == [b"stored once"]


@pytest_twisted.inlineCallbacks
def test_a_large_job_is_reprinted_whole_through_a_spill_file(reactor, make, printer, http):
    """Past 1 MiB the reprint's copy of the payload goes to a file in the state directory, not memory."""
    import os

    destination, received = printer
    service, base = make(destination)
    data = os.urandom(3 << 20)
    yield send_job(reactor, trigger_port(service), data, service.triggers["orders"].counters, 1)
    yield wait_for(lambda: len(received) == 1)
    yield service.sink.store.flush()
    job_id = service.sink.recent(1)[0].job_id
    token = yield token_of(http, base)
    code, _, body = yield http("POST", base + f"/api/v1/jobs/{job_id}/reprint", {"csrf": token, "destination": destination})
    assert code == 200, body
    new = as_json(body)["job_id"]
    yield wait_for(lambda: len(received) == 2)
    assert received[1] == data
    yield wait_for(lambda: any(j.job_id == new and j.state == "done" for j in service.sink.recent(5)))
    tmp = service.context.temp_dir
    assert not os.path.isdir(tmp) or [n for n in os.listdir(tmp) if n.endswith(".part")] == []  # the spill is gone
