"""
Bad filters are errors naming the accepted values, alike over HTTP (/jobs:
400 with a JSON error) and on the command line (rawsvc jobs: exit 2); comma
lists work in both.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import pytest_twisted
from admin_helpers import admin_port, build_service, send_job, start_reactor_once
from conftest import ROOT
from twisted.internet.defer import ensureDeferred

from rawsvc.states import JOB_STATES

STATES = "queued, running, waiting, held, done, failed, cancelled, interrupted, refused"


def config(state_dir) -> str:
    return textwrap.dedent(
        f"""
        [service]
        state_dir = "{state_dir}"

        [[trigger]]
        name = "orders"
        type = "tcp"
        listen = "tcp:0:interface=127.0.0.1"
        execute_on = "disconnect"
        flow = "checked"

        [[trigger]]
        name = "labels"
        type = "tcp"
        listen = "tcp:0:interface=127.0.0.1"
        execute_on = "disconnect"
        flow = "logged"

        [[flow]]
        name = "checked"
        actions = [ {{ type = "parse", regex = "^(?P<word>ok)$" }} ]

        [[flow]]
        name = "logged"
        actions = [ {{ type = "log" }} ]

        [admin.http]
        listen = "tcp:0:interface=127.0.0.1"
        """
    )


@pytest.fixture(scope="module", autouse=True)
def reactor_running():
    start_reactor_once()


@pytest.fixture
def running(reactor, tmp_path):
    """The service with three jobs: orders done, orders failed, labels done."""
    service = build_service(reactor, config(tmp_path / "state"))
    service.startService()
    port = admin_port(service, "admin-http").getHost().port

    async def jobs():
        orders, labels = service.triggers["orders"], service.triggers["labels"]
        await send_job(reactor, orders.port.getHost().port, b"ok", orders.counters, expect_ok=1)
        await send_job(reactor, orders.port.getHost().port, b"not ok", orders.counters, expect_ok=2)
        await send_job(reactor, labels.port.getHost().port, b"label", labels.counters, expect_ok=1)
        await service.sink.drain_writes()

    pytest_twisted.blockon(ensureDeferred(jobs()))
    yield service, f"http://127.0.0.1:{port}"
    pytest_twisted.blockon(ensureDeferred(_stop(service)))


async def _stop(service):
    await service.stopService()


@pytest.fixture
def get(reactor):
    import treq
    from treq.client import HTTPClient
    from twisted.web.client import Agent

    client = HTTPClient(Agent(reactor))

    async def fetch(url):
        response = await client.get(url)
        return response.code, json.loads(await treq.content(response))

    return lambda url: ensureDeferred(fetch(url))


def test_the_states_come_from_one_list():
    assert ", ".join(JOB_STATES) == STATES


BAD_QUERIES = [
    ("state=bogus", f"unknown state 'bogus'; use one of: {STATES}"),
    ("state=done,bogus", f"unknown state 'bogus'; use one of: {STATES}"),
    ("colour=red", "unknown parameter 'colour'; use: trigger, state, since, limit"),
    ("limit=0", "limit must be a positive whole number from 1 to 1000, not '0'"),
    ("limit=-3", "limit must be a positive whole number from 1 to 1000, not '-3'"),
    ("limit=x", "limit must be a positive whole number from 1 to 1000, not 'x'"),
    ("limit=1001", "limit must be a positive whole number from 1 to 1000, not '1001'"),
    ("since=yesterday", "since must be a time in Unix seconds, not 'yesterday'"),
    ("since=nan", "since must be a time in Unix seconds, not 'nan'"),
]


@pytest_twisted.inlineCallbacks
def test_bad_jobs_queries_are_400_naming_the_accepted_values(running, get):
    _, base = running
    for query, error in BAD_QUERIES:
        code, body = yield get(f"{base}/jobs?{query}")
        assert (query, code, body) == (query, 400, {"error": error})


@pytest_twisted.inlineCallbacks
def test_jobs_filters_take_comma_lists(running, get):
    _, base = running

    def summary(body):
        return sorted((j["trigger"], j["state"]) for j in body["jobs"])

    code, body = yield get(f"{base}/jobs?state=failed,cancelled")
    assert code == 200 and summary(body) == [("orders", "failed")]
    code, body = yield get(f"{base}/jobs?trigger=orders,labels&state=done")
    assert summary(body) == [("labels", "done"), ("orders", "done")]
    code, body = yield get(f"{base}/jobs?trigger=labels,nobody")
    assert summary(body) == [("labels", "done")]
    code, body = yield get(f"{base}/jobs?limit=1000")
    assert code == 200 and body["count"] == 3


def rawsvc_jobs(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "rawsvc", "jobs", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT))


@pytest.mark.parametrize("args, error", [
    (["--state", "bogus"], f"argument --state: unknown state 'bogus'; use one of: {STATES}"),
    (["--state", "failed,bogus"], f"argument --state: unknown state 'bogus'; use one of: {STATES}"),
    (["--limit", "-1"], "argument --limit: must be a whole number, 0 for all, not '-1'"),
    (["--limit", "many"], "argument --limit: must be a whole number, 0 for all, not 'many'"),
])
def test_bad_jobs_arguments_exit_2_naming_the_accepted_values(tmp_path, args, error):
    result = rawsvc_jobs("--state-dir", str(tmp_path), *args)
    assert result.returncode == 2
    assert result.stderr.endswith(f"rawsvc jobs: error: {error}\n"), result.stderr
    assert "Traceback" not in result.stderr


def test_rawsvc_jobs_takes_comma_lists_like_http(running):
    service, _ = running
    state_dir = service.context.state_dir

    def listed(*args: str) -> list[tuple[str, str]]:
        result = rawsvc_jobs("--state-dir", state_dir, "--json", *args)
        assert result.returncode == 0, result.stderr
        return sorted((j["trigger"], j["state"]) for j in map(json.loads, result.stdout.splitlines()))

    assert listed("--state", "failed,cancelled") == [("orders", "failed")]
    assert listed("--trigger", "orders,labels", "--state", "done") == [("labels", "done"), ("orders", "done")]
    assert listed("--trigger", "labels,nobody") == [("labels", "done")]
