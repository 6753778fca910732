"""
The admin listener over a PostgreSQL spool (a real server, in-process
service): C{/jobs} always answers, and the stop closes the connections the
service's reader (C{/jobs}, the console) keeps open.
"""

from __future__ import annotations

import json

import pytest_twisted
from admin_helpers import admin_port, build_service
from twisted.internet import defer, task


def _config(tmp_path, uri: str) -> str:
    return f"""
[service]
state_dir = "{tmp_path}/state"
spool = "{uri}"
[admin.http]
listen = "tcp:0:interface=127.0.0.1"
[[trigger]]
name = "t"
type = "tcp"
listen = "tcp:0:interface=127.0.0.1"
flow = "f"
[[flow]]
name = "f"
actions = [ {{ type = "log" }} ]
"""


@defer.inlineCallbacks
def _started(reactor, tmp_path, uri):
    service = build_service(reactor, _config(tmp_path, uri))
    service.startService()
    for _ in range(200):
        if service.sink.store.error is None and getattr(service.sink, "ready", True):
            break
        yield task.deferLater(reactor, 0.05, lambda: None)
    return service, f"http://127.0.0.1:{admin_port(service, 'admin-http').getHost().port}"


@defer.inlineCallbacks
def _get(reactor, url):
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent, HTTPConnectionPool

    client = HTTPClient(Agent(reactor, pool=HTTPConnectionPool(reactor, persistent=False)))
    response = yield client.get(url, timeout=10)
    body = yield treq.content(response)
    return response.code, response.headers, body


def _sessions(pg_server, uri: str) -> int:
    database = uri.rsplit("/", 1)[-1]
    return pg_server.execute(pg_server.uri(), "select count(*) from pg_stat_activity where datname = %s",
                             (database,))[0][0]


@pytest_twisted.inlineCallbacks
def test_a_failure_other_than_the_spools_is_a_500_with_a_json_error(reactor, tmp_path, pg_server, monkeypatch):
    from rawsvc.spool import pg_control

    service, base = yield _started(reactor, tmp_path, pg_server.new_database("adm"))
    try:
        code, _, body = yield _get(reactor, base + "/jobs")
        assert code == 200 and json.loads(body)["count"] == 0
        monkeypatch.setattr(pg_control, "recent", lambda *a, **k: defer.fail(RuntimeError("a bug")))
        code, headers, body = yield _get(reactor, base + "/jobs")
        assert code == 500 and headers.getRawHeaders(b"content-type") == [b"application/json"]
        assert "see the service log" in json.loads(body)["error"] and b"a bug" not in body
    finally:
        yield defer.ensureDeferred(service.stopService())


@pytest_twisted.inlineCallbacks
def test_the_stop_closes_the_readers_connections(reactor, tmp_path, pg_server):
    from rawsvc.spool.pg_control import cluster_of

    uri = pg_server.new_database("adm")
    service, base = yield _started(reactor, tmp_path, uri)
    try:
        code, _, _ = yield _get(reactor, base + "/jobs")
        assert code == 200
        reader = cluster_of(service).reader
        assert len(reader._idle) == 1
        kept = reader._idle[0]
    finally:
        yield defer.ensureDeferred(service.stopService())
    assert reader._idle == [] and kept.closed
    for _ in range(100):  # the server ends a session a moment after its client closed it
        if _sessions(pg_server, uri) == 0:
            break
        yield task.deferLater(reactor, 0.05, lambda: None)
    assert _sessions(pg_server, uri) == 0
