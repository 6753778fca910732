"""/healthz goes unhealthy while jobs are refused because the spool cannot store them."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
import pytest_twisted
from admin_helpers import admin_port, build_service, config_text, send_job, start_reactor_once, trigger_port
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import deferLater
from twisted.internet.threads import deferToThread

from rawsvc.admin.web import refusing
from rawsvc.spool.sink import REFUSED_WINDOW
from rawsvc.spool.schema import FILES_DIR

BIG = bytes(range(256)) * 400  # 100 KB: stored in its own file in the spool's folder


@pytest.fixture(scope="module", autouse=True)
def reactor_running():
    start_reactor_once()


@pytest.fixture
def running(reactor, tmp_path):
    service = build_service(reactor, config_text(tmp_path / "state", '[admin.http]\nlisten = "tcp:0:interface=127.0.0.1"\n'))
    service.startService()
    port = admin_port(service, "admin-http").getHost().port
    yield service, f"http://127.0.0.1:{port}/healthz"
    pytest_twisted.blockon(ensureDeferred(_stop(service)))


async def _stop(service):
    await service.stopService()


async def _get(reactor, url):
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    response = await HTTPClient(Agent(reactor)).get(url)
    return response.code, json.loads(await treq.content(response))


def _send(port: int, data: bytes) -> bytes:
    """Send one job; what the service answered, or b"RESET" (a refused job without a refusal text)."""
    answer = b""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)
            while chunk := s.recv(4096):
                answer += chunk
    except (ConnectionResetError, BrokenPipeError):
        return b"RESET"
    return answer


@pytest_twisted.ensureDeferred
async def test_healthz_is_503_while_jobs_are_refused_and_200_once_one_is_stored(reactor, running):
    service, url = running
    counters = service.triggers["orders"].counters
    code, body = await _get(reactor, url)
    assert code == 200 and body["ok"] is True

    # The spool's payload folder becomes a plain file: a large job cannot be stored.
    files = os.path.join(service.context.state_dir, FILES_DIR)
    await service.sink.drain_writes()
    shutil.rmtree(files, ignore_errors=True)
    with open(files, "wb"):
        pass
    await deferToThread(_send, trigger_port(service), BIG)
    while counters.jobs_refused < 1:
        await deferLater(reactor, 0.01, lambda: None)
    code, body = await _get(reactor, url)
    assert code == 503
    assert body["status"] == "unhealthy" and body["ok"] is False and body["refusing"] is True
    assert body["reason"].startswith("spool unavailable: ")
    assert body["down"] == []  # every listener is still up

    # The folder is back: the next job is stored, and the service is healthy again.
    os.remove(files)
    os.mkdir(files, 0o700)
    await send_job(reactor, trigger_port(service), BIG, counters, expect_ok=1)
    code, body = await _get(reactor, url)
    assert (code, body["status"], body["refusing"]) == (200, "ok", False)
    assert "reason" not in body


def _spool_sink(tmp_path):
    from twisted.internet import reactor

    from rawsvc.spool.sink import SpoolSink
    from rawsvc.spool.store import Store

    return SpoolSink({}, Store(str(tmp_path), reactor), reactor)


def test_refusing_forgets_old_refusals(tmp_path):
    sink = _spool_sink(tmp_path)
    assert refusing(sink) is None
    sink.last_refusal = (1000.0, "spool unavailable: No space left on device")
    assert refusing(sink, now=1010.0) == (
        "spool unavailable: No space left on device (a job was refused 10 s ago; none stored since)")
    assert refusing(sink, now=1000.0 + REFUSED_WINDOW) is None


def test_a_sink_without_health_reports_is_never_refusing():
    from rawsvc.dispatch import Dispatcher

    assert refusing(Dispatcher({})) is None  # spool = false: jobs are never refused for storage
    assert refusing(object()) is None  # a plugin sink that does not provide IHealth
