"""
The cluster seen from any node: two real C{twistd -n rawsvc} nodes (C{n1},
C{n2}) on one throwaway PostgreSQL, and the C{rawsvc} command run as a
subprocess with either node's config.  C{rawsvc jobs}, C{job}, C{retry},
C{cancel} (and C{--json}) read and act on every node's jobs; a retry or
cancel is answered by the node that runs the job; the console API, C{/jobs}
and the console's actions on C{n2}, and the manhole's commands of a third
node run in-process, show and reach a job accepted by C{n1}.
Bad input and an unreachable database give one clear line, never the
password, and a non-zero exit.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest
import pytest_twisted

from pg_support import PgServer, free_port
from test_pg_service import SECRET, healthz, send, stop, with_password
from test_spool_restart import Printer, env, start_twistd, wait_for

from rawsvc.spool.schema import COLUMNS

pytestmark = pytest.mark.slow

BIG = bytes(b for b in range(256) if b != 10) * 400 + b"end"  # 100 KiB, no newline: stored in chunks


def node_config(tmp_path, name: str, uri: str, ports: dict[str, int], printer_port: int, dead_port: int) -> str:
    path = tmp_path / f"{name}.toml"
    path.write_text(f"""
[service]
state_dir = "{tmp_path}/{name}-state"
spool = "{uri}"
stop_grace = 1

[cluster]
node = "{name}"

[admin.http]
listen = "tcp:{ports['admin']}:interface=127.0.0.1"

[[trigger]]
name = "labels"
type = "tcp"
listen = "tcp:{ports['labels']}:interface=127.0.0.1"
execute_on = "delimiter"
delimiter = "\\n"
flow = "forward"
max_job_bytes = 0

[[trigger]]
name = "stuck"
type = "tcp"
listen = "tcp:{ports['stuck']}:interface=127.0.0.1"
execute_on = "delimiter"
delimiter = "\\n"
flow = "nowhere"

[[flow]]
name = "forward"

[[flow.actions]]
type = "reply"
data = "OK ${{job_id}}\\n"

[[flow.actions]]
type = "send_tcp"
destination = "127.0.0.1:{printer_port}"

[[flow]]
name = "nowhere"

[[flow.actions]]
type = "reply"
data = "OK ${{job_id}}\\n"

[[flow.actions]]
type = "send_tcp"
destination = "127.0.0.1:{dead_port}"
retries = 100000
retry_delay = 0.5
max_retry_delay = 0.5
""")
    return str(path)


class Cluster:
    def __init__(self, tmp_path, server: PgServer) -> None:
        self.server = server
        self.plain = server.new_database("cli")
        self.uri = with_password(self.plain)  # trust authentication ignores it: it must never show
        self.where = self.plain  # postgresql://postgres@127.0.0.1:PORT/db, as the CLI names it
        self.printer = Printer(free_port())
        self.printer.start()
        dead = free_port()
        self.ports: dict[str, dict[str, int]] = {}
        self.configs: dict[str, str] = {}
        self.logs: dict[str, str] = {}
        self.nodes: dict[str, subprocess.Popen] = {}
        for name in ("n1", "n2"):
            self.ports[name] = {"admin": free_port(), "labels": free_port(), "stuck": free_port()}
            self.configs[name] = node_config(tmp_path, name, self.uri, self.ports[name], self.printer.listener
                                             .getsockname()[1], dead)
            self.logs[name] = str(tmp_path / f"{name}.log")
            self.nodes[name] = start_twistd(self.configs[name], self.logs[name])
        for name in self.nodes:
            wait_for(lambda: healthz(self.ports[name]["admin"]) == 200, 30, f"node {name} healthy")

    def send(self, node: str, trigger: str, data: bytes) -> str:
        answer = send(self.ports[node][trigger], data)
        assert answer.startswith(b"OK "), answer
        return answer[3:].decode()

    def state(self, job_id: str) -> str:
        [(state,)] = self.server.execute(self.plain, "SELECT state FROM rawsvc_jobs WHERE job_id = %s", (job_id,))
        return state

    def owner(self, job_id: str) -> str:
        [(node,)] = self.server.execute(
            self.plain, "SELECT n.node_name FROM rawsvc_jobs j JOIN rawsvc_nodes n ON n.incarnation = j.owner"
                        " WHERE j.job_id = %s", (job_id,))
        return node

    def log(self, node: str) -> str:
        with open(self.logs[node]) as f:
            return f.read()

    def admin(self, node: str, path: str, method: str = "GET") -> tuple[int, bytes]:
        url = f"http://127.0.0.1:{self.ports[node]['admin']}{path}"
        try:
            with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=20) as r:
                return r.status, r.read()
        except urllib.error.HTTPError as e:
            return e.code, e.read()

    def close(self) -> None:
        for node in self.nodes.values():
            stop(node)
        self.printer.stopped = True
        self.printer.join(5)


@pytest.fixture(scope="module")
def server():
    pg = PgServer().start()
    yield pg
    pg.destroy()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory, server):
    c = Cluster(tmp_path_factory.mktemp("cluster"), server)
    yield c
    c.close()


def rawsvc(*args: str, config: str | None = None) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "rawsvc", *args] + (["-c", config] if config else [])
    return subprocess.run(argv, env=env(), capture_output=True, timeout=60)


def test_rawsvc_jobs_on_either_node_lists_every_nodes_jobs(cluster):
    first = cluster.send("n1", "labels", b"from node one")
    second = cluster.send("n2", "labels", b"from node two")
    wait_for(lambda: {cluster.state(first), cluster.state(second)} == {"done"}, 20, "both jobs done")
    for node in ("n1", "n2"):
        done = rawsvc("jobs", "--state", "done", config=cluster.configs[node])
        assert done.returncode == 0, done.stderr
        lines = done.stdout.decode().splitlines()
        assert lines[0] == f"spool {cluster.where}: {len(lines) - 2} job(s) shown"
        assert lines[1].split() == ["JOB", "ID", "STATE", "TRIGGER", "FLOW", "ACT", "TRY", "SIZE", "RECEIVED", "ERROR"]
        rows = {line.split()[0]: line.split() for line in lines[2:]}
        assert rows[first][1:4] == ["done", "labels", "forward"] and rows[second][1:4] == ["done", "labels", "forward"]
        assert list(rows).index(second) < list(rows).index(first)  # newest first
        assert SECRET.encode() not in done.stdout + done.stderr


def test_rawsvc_jobs_json_has_the_sqlite_columns_and_every_variable(cluster):
    job_id = cluster.send("n1", "labels", b"json please")
    wait_for(lambda: cluster.state(job_id) == "done", 20, "the job done")
    listed = rawsvc("jobs", "--json", "--trigger", "labels", "--limit", "0", config=cluster.configs["n2"])
    assert listed.returncode == 0, listed.stderr
    assert listed.stderr.decode().startswith(f"rawsvc jobs: spool {cluster.where}: ")
    records = [json.loads(line) for line in listed.stdout.decode().splitlines()]
    [record] = [r for r in records if r["job_id"] == job_id]
    assert set(record) == set(COLUMNS)
    assert (record["state"], record["trigger"], record["flow"], record["size"]) == ("done", "labels", "forward", 11)
    assert record["variables"]["job_id"] == job_id and record["variables"]["size"] == "11"
    assert record["destination"] == f"127.0.0.1:{cluster.printer.listener.getsockname()[1]}"
    limited = rawsvc("jobs", "--json", "--limit", "1", config=cluster.configs["n1"])
    assert len(limited.stdout.splitlines()) == 1


def test_rawsvc_job_shows_a_job_of_the_other_node_and_streams_its_payload(cluster):
    job_id = cluster.send("n2", "labels", BIG)
    wait_for(lambda: cluster.state(job_id) == "done", 20, "the big job done")
    payload = rawsvc("job", job_id[:-2], "--payload", config=cluster.configs["n1"])
    assert payload.returncode == 0, payload.stderr
    assert payload.stdout == BIG  # read back from its chunks, byte for byte
    shown = rawsvc("job", job_id, "--json", config=cluster.configs["n1"])
    record = json.loads(shown.stdout)
    assert (record["job_id"], record["state"], record["size"]) == (job_id, "done", len(BIG))
    text = rawsvc("job", job_id, config=cluster.configs["n1"]).stdout.decode()
    assert re.search(rf"^job_id +{job_id}$", text, re.M) and re.search(r"^state +done$", text, re.M)
    assert f"  job_id = {job_id}" in text or f'  job_id = "{job_id}"' in text


def _cancelled(job_id: str, prefix: str = "") -> tuple[str, ...]:
    """What a cancel answers: the delivery was this node's (its queue moves on), or another node's
    worker holds it (that node ends it; the flow stops before its next action)."""
    return (f"{prefix}job {job_id} cancelled; its printer's queue moves on",
            f"{prefix}job {job_id} cancelled: it stops before its next action")


def test_cancel_from_node_two_is_applied_by_the_node_running_the_job(cluster):
    job_id = cluster.send("n1", "stuck", b"never printed")
    wait_for(lambda: cluster.state(job_id) == "waiting", 20, "the job waiting to retry on n1")
    cancelled = rawsvc("cancel", job_id, config=cluster.configs["n2"])
    assert cancelled.returncode == 0, cancelled.stderr
    assert cancelled.stdout.decode().strip() in _cancelled(job_id)
    assert cluster.state(job_id) == "cancelled"
    assert re.search(rf"spool: request \d+ cancel {job_id}: job {job_id} cancelled", cluster.log("n1"))
    assert f"cancel {job_id}" not in cluster.log("n2")  # n1 runs it: n2 left it alone

    again = rawsvc("cancel", job_id, config=cluster.configs["n1"])
    assert again.returncode == 0 and again.stdout.decode().strip() == f"job {job_id} is already cancelled"

    retried = rawsvc("retry", job_id, config=cluster.configs["n2"])
    assert retried.returncode == 0, retried.stderr
    assert retried.stdout.decode().strip() == f"job {job_id} (cancelled) queued again at action 1"
    wait_for(lambda: cluster.state(job_id) == "waiting", 20, "the retried job waiting again")
    assert cluster.owner(job_id) == "n1"
    [(answered, open_)] = cluster.server.execute(
        cluster.plain, "SELECT count(*) FILTER (WHERE answered_at IS NOT NULL), count(*) FILTER (WHERE answered_at"
                       " IS NULL) FROM rawsvc_requests WHERE job_id = %s", (job_id,))
    assert (answered, open_) == (3, 0)  # each request answered once
    rawsvc("cancel", job_id, config=cluster.configs["n1"])


def test_the_console_of_node_two_lists_shows_and_serves_a_job_of_node_one(cluster):
    job_id = cluster.send("n1", "labels", BIG)
    wait_for(lambda: cluster.state(job_id) == "done", 20, "the job done")
    code, body = cluster.admin("n2", "/api/v1/jobs?trigger=labels&state=done&limit=1")
    assert code == 200, body
    page = json.loads(body)
    assert [j["job_id"] for j in page["jobs"]] == [job_id] and page["next_cursor"] is not None
    code, body = cluster.admin("n2", f"/api/v1/jobs?trigger=labels&limit=500&cursor={page['next_cursor']}")
    assert job_id not in [j["job_id"] for j in json.loads(body)["jobs"]] and json.loads(body)["jobs"]
    code, body = cluster.admin("n2", f"/api/v1/jobs?q={job_id[-6:].upper()}")
    assert [j["job_id"] for j in json.loads(body)["jobs"]] == [job_id]

    code, body = cluster.admin("n2", f"/api/v1/jobs/{job_id}")
    assert code == 200, body
    detail = json.loads(body)
    assert (detail["state"], detail["payload_size"], detail["variables"]["job_id"]) == ("done", len(BIG), job_id)
    assert [e["event"] for e in detail["timeline"]][0] == "received" and detail["timeline"][-1]["event"] == "done"
    code, body = cluster.admin("n2", f"/api/v1/jobs/{job_id}/payload")
    assert (code, body) == (200, BIG)
    code, body = cluster.admin("n2", "/api/v1/jobs/nosuchjob")
    assert (code, json.loads(body)) == (404, {"error": "no job nosuchjob"})

    code, body = cluster.admin("n2", f"/console/job/{job_id}")
    assert code == 200 and job_id.encode() in body
    code, body = cluster.admin("n2", "/jobs?trigger=labels&state=done")
    assert code == 200, body
    listed = json.loads(body)
    assert job_id in [j["job_id"] for j in listed["jobs"]] and listed["count"] == len(listed["jobs"])
    [mine] = [j for j in listed["jobs"] if j["job_id"] == job_id]
    assert (mine["trigger"], mine["state"], mine["size"]) == ("labels", "done", len(BIG))
    code, body = cluster.admin("n2", "/jobs", method="HEAD")
    assert code == 200 and body == b""


def test_a_console_cancel_on_node_two_reaches_the_node_running_the_job(cluster):
    job_id = cluster.send("n1", "stuck", b"cancel me from n2")
    wait_for(lambda: cluster.state(job_id) == "waiting", 20, "the job waiting on n1")
    code, body = cluster.admin("n2", f"/api/v1/jobs/{job_id}")
    assert json.loads(body)["state"] == "waiting"
    _, page = cluster.admin("n2", "/console/")
    token = re.search(rb'<meta name="csrf-token" content="([^"]+)"', page).group(1).decode()
    code, body = cluster.admin("n2", f"/api/v1/jobs/{job_id}/cancel?csrf={token}", method="POST")
    assert code == 200, body
    answer = json.loads(body)
    assert answer["ok"] and answer["message"] in _cancelled(job_id, "node n1: ")
    assert cluster.state(job_id) == "cancelled"


def test_an_unknown_job_id_is_a_clear_error(cluster):
    for command in ("job", "retry", "cancel"):
        done = rawsvc(command, "nosuchjob", config=cluster.configs["n1"])
        assert done.returncode == 1
        assert done.stderr.decode().splitlines()[-1] == f"rawsvc {command}: no job nosuchjob in the spool"


def test_an_ambiguous_prefix_is_a_clear_error(cluster):
    ids = [cluster.send("n1", "labels", f"prefix {i}".encode()) for i in range(2)]
    common = ids[0][:1] if ids[0][:1] == ids[1][:1] else ""
    done = rawsvc("job", common, config=cluster.configs["n2"])
    assert done.returncode == 1
    assert "matches more than one job; give more of the id" in done.stderr.decode()


def test_an_unreachable_database_is_one_line_naming_it_without_its_password(tmp_path):
    port = free_port()
    uri = f"postgresql://rawsvc:{SECRET}@127.0.0.1:{port}/spooldb"
    config = node_config(tmp_path, "gone", uri, {"admin": free_port(), "labels": free_port(), "stuck": free_port()},
                         free_port(), free_port())
    for argv in (["jobs"], ["jobs", "--json"], ["job", "abc"], ["retry", "abc"], ["cancel", "abc"]):
        started = time.monotonic()
        done = rawsvc(*argv, config=config)
        assert done.returncode == 1, (argv, done)
        lines = done.stderr.decode().splitlines()
        assert len(lines) == 1 and done.stdout == b"", (argv, done)
        assert lines[0].startswith(f"rawsvc {argv[0]}: cannot reach the spool at postgresql://rawsvc@127.0.0.1:"
                                   f"{port}/spooldb: "), lines
        assert "refused" in lines[0].lower() and SECRET not in lines[0]
        assert time.monotonic() - started < 20


def test_a_database_without_the_spool_says_so(server, tmp_path):
    uri = server.new_database("empty")
    config = node_config(tmp_path, "empty", uri, {"admin": free_port(), "labels": free_port(), "stuck": free_port()},
                         free_port(), free_port())
    done = rawsvc("jobs", config=config)
    assert done.returncode == 1
    assert done.stderr.decode().strip() == (f"rawsvc jobs: no spool in {uri} (has a node run with [service] spool = "
                                            "this database?)")


@pytest_twisted.inlineCallbacks
def test_the_manhole_of_a_third_node_lists_and_acts_on_the_clusters_jobs(cluster, tmp_path):
    from twisted.internet import reactor
    from twisted.internet.defer import ensureDeferred
    from twisted.internet.threads import deferToThread

    from zope.interface.verify import verifyObject

    from admin_helpers import build_service
    from rawsvc.admin.namespace import repl_namespace
    from rawsvc.interfaces import IJobControl
    from rawsvc.spool.pg_control import job_control

    ports = {"admin": free_port(), "labels": free_port(), "stuck": free_port()}
    with open(node_config(tmp_path, "n3", cluster.uri, ports, cluster.printer.listener.getsockname()[1],
                          free_port())) as f:
        service = build_service(reactor, f.read())
    service.startService()
    try:
        yield service.sink.service.started
        job_id = yield deferToThread(cluster.send, "n1", "stuck", b"seen from the manhole of n3")
        yield deferToThread(wait_for, lambda: cluster.state(job_id) == "waiting", 20, "the job waiting on n1")
        verifyObject(IJobControl, job_control(service))
        ns = repl_namespace(service)
        listed = yield ns["recent"](50)
        [mine] = [j for j in listed if j["job_id"] == job_id]
        assert (mine["state"], mine["trigger"], mine["delivery"]["attempt"] >= 1) == ("waiting", "stuck", True)
        assert json.loads(repr(listed))[0]["job_id"] == listed[0]["job_id"]  # prints as JSON in the REPL

        message = yield ns["cancel"](job_id)
        assert message in _cancelled(job_id, "node n1: ")
        assert cluster.state(job_id) == "cancelled" and cluster.owner(job_id) == "n1"
        message = yield ns["retry"](job_id)
        assert message == f"node n1: job {job_id} (cancelled) queued again at action 1"
        yield deferToThread(wait_for, lambda: cluster.state(job_id) == "waiting", 20, "the job waiting again")
        assert cluster.owner(job_id) == "n1"
        message = yield ns["cancel"](job_id)
        assert message.startswith(f"node n1: job {job_id} cancelled")
    finally:
        yield ensureDeferred(service.stopService())
