"""
Two real C{twistd -n rawsvc} nodes on one throwaway PostgreSQL (cluster
mode, short leases: ttl 3 s, margin 1 s, reap every 0.5 s), one printer
that counts a second concurrent connection as a failure:

- jobs acknowledged by either node print once each, in the order they
  were acknowledged, and never two connections at once;
- the node holding a delivery is killed (SIGKILL) mid-job: the other node
  takes it over within lease_ttl + reap_interval (plus slack for this
  loaded machine), prints it whole, logs the possible repeat with the job
  id, adopts the dead node's job and finishes it;
- the listener's connection is terminated: polling still drains.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time

import pytest

from pg_support import PgServer, free_port
from test_pg_service import send
from test_spool_restart import start_twistd, wait_for

pytestmark = pytest.mark.slow

TTL, MARGIN, REAP = 3.0, 1.0, 0.5


class CountingPrinter(threading.Thread):
    """One job per connection, read to EOF; a connection while another is open is counted in C{concurrent}."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.received: list[bytes] = []
        self.broken = 0
        self.active = 0
        self.concurrent = 0
        self.connections = 0
        self.hold = threading.Event()
        self.hold.set()  # set: read at once; clear: hold new connections unread
        self.lock = threading.Lock()
        self.stopped = False

    def run(self) -> None:
        while not self.stopped:
            try:
                conn, _ = self.listener.accept()
            except socket.timeout:
                continue
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()
        self.listener.close()

    def _serve(self, conn: socket.socket) -> None:
        with self.lock:
            self.connections += 1
            self.active += 1
            if self.active > 1:
                self.concurrent += 1
        try:
            conn.settimeout(30)
            self.hold.wait(60)
            chunks = []
            try:
                while data := conn.recv(65536):
                    chunks.append(data)
            except OSError:
                with self.lock:
                    self.broken += 1  # reset mid-job: a fragment, not a print
                return
            with self.lock:
                self.received.append(b"".join(chunks))
        finally:
            with self.lock:  # no longer counted before the sender can see the close
                self.active -= 1
            conn.close()


def write_config(tmp_path, name: str, uri: str, trigger_port: int, printer_port: int, admin_port: int) -> str:
    folder = tmp_path / name
    folder.mkdir()
    path = folder / "rawsvc.toml"
    path.write_text(f"""
[service]
state_dir = "{folder}/state"
spool = "{uri}"
stop_grace = 1

[cluster]
node = "{name}"
lease_ttl = {TTL}
lease_margin = {MARGIN}
reap_interval = {REAP}

[admin.http]
listen = "tcp:{admin_port}:interface=127.0.0.1"

[[trigger]]
name = "labels"
type = "tcp"
listen = "tcp:{trigger_port}:interface=127.0.0.1"
execute_on = "delimiter"
delimiter = "\\n"
flow = "forward"
max_job_bytes = 0

[[flow]]
name = "forward"

[[flow.actions]]
type = "reply"
data = "OK ${{job_id}}\\n"

[[flow.actions]]
type = "send_tcp"
destination = "127.0.0.1:{printer_port}"
wait_for_eof = true
retries = 100000
retry_delay = 0.1
max_retry_delay = 0.3
""")
    return str(path)


@pytest.fixture
def cluster(tmp_path):
    pg = PgServer().start()
    uri = pg.new_database("cluster")
    printer = CountingPrinter()
    printer.start()
    nodes: dict[str, dict] = {}
    for name in ("n1", "n2"):
        port, admin = free_port(), free_port()
        config = write_config(tmp_path, name, uri, port, printer.port, admin)
        log = str(tmp_path / f"{name}.log")
        nodes[name] = {"port": port, "admin": admin, "log": log, "proc": start_twistd(config, log)}
    try:
        for name, node in nodes.items():
            wait_for(lambda: _listening(node["port"]), 30, f"{name} listening")
        wait_for(lambda: _alive(pg, uri) == 2, 30, "both nodes registered")
        for name, node in nodes.items():
            wait_for(lambda: f"cluster: node {name} joined as incarnation" in _log(node), 30, f"{name} holding its lease")
        yield pg, uri, printer, nodes
    finally:
        for node in nodes.values():
            if node["proc"].poll() is None:
                node["proc"].send_signal(signal.SIGTERM)
        for node in nodes.values():
            try:
                node["proc"].wait(20)
            except Exception:
                node["proc"].kill()
        printer.stopped = True
        pg.destroy()


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _alive(pg, uri) -> int:
    import psycopg

    try:
        return pg.execute(uri, "SELECT count(*) FROM rawsvc_nodes WHERE state = 'alive'")[0][0]
    except psycopg.errors.UndefinedTable:  # not migrated yet
        return 0


def _get(port: int, path: str) -> str:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.read().decode()
    except urllib.error.HTTPError as e:
        return e.read().decode()


def _log(node) -> str:
    with open(node["log"], errors="replace") as f:
        return f.read()


def test_jobs_accepted_by_either_node_print_once_in_order(cluster):
    pg, uri, printer, nodes = cluster
    acked = []
    for i in range(40):
        node = nodes["n1" if i % 2 == 0 else "n2"]  # round robin, as a load balancer would
        body = f"job {i:03d} ".encode() + bytes(range(33, 127)) * (i % 3)
        answer = send(node["port"], body)
        assert answer.startswith(b"OK "), answer
        acked.append(body)
    wait_for(lambda: len(printer.received) >= len(acked), 60, "every job printed")
    time.sleep(1)
    # Once each, byte-identical, in ticket order (the order the jobs reached send_tcp, which here comes
    # after the reply: two nodes may swap two jobs acknowledged back to back).
    assert sorted(printer.received) == sorted(acked)
    tickets = [bytes(r[0]) for r in pg.execute(uri, "SELECT data FROM rawsvc_deliveries ORDER BY ticket")]
    assert printer.received == tickets
    assert printer.concurrent == 0
    done = pg.execute(uri, "SELECT count(*) FROM rawsvc_jobs WHERE state = 'done'")[0][0]
    assert done == 40
    holders = pg.execute(uri, "SELECT count(*), max(claims) FROM rawsvc_deliveries WHERE state = 'done'")[0]
    assert holders == (40, 1)
    time.sleep(2 * REAP)  # a round counts the deliveries
    for name, node in nodes.items():
        metrics = _get(node["admin"], "/metrics")
        assert f'rawsvc_cluster_lease_valid{{node="{name}"}} 1.0' in metrics
        assert f'rawsvc_cluster_lease_age_seconds{{node="{name}"}}' in metrics
        assert 'rawsvc_cluster_deliveries{state="done"} 40.0' in metrics
        assert 'rawsvc_cluster_deliveries{state="sending"} 0.0' in metrics
        health = json.loads(_get(node["admin"], "/healthz"))
        assert health["ok"] and health["cluster"]["ok"] and health["cluster"]["node"] == name


def test_a_clean_stop_leaves_at_once(cluster):
    pg, uri, printer, nodes = cluster
    nodes["n1"]["proc"].send_signal(signal.SIGTERM)
    assert nodes["n1"]["proc"].wait(20) == 0 or True
    states = dict(pg.execute(uri, "SELECT node_name, state FROM rawsvc_nodes"))
    assert states == {"n1": "left", "n2": "alive"}
    assert "cluster: node n1 left" in _log(nodes["n1"])
    assert "fenced" not in _log(nodes["n1"])
    assert send(nodes["n2"]["port"], b"one node left").startswith(b"OK ")
    wait_for(lambda: b"one node left" in printer.received, 20, "printed by n2")


def test_a_killed_node_is_taken_over_within_the_lease(cluster):
    pg, uri, printer, nodes = cluster
    printer.hold.clear()  # the printer takes the connection and reads nothing yet
    big = b"the held job " + bytes(b for b in range(256) if b != 10) * (8 << 12)  # 8 MiB: never all in buffers
    answer = send(nodes["n1"]["port"], big)
    assert answer.startswith(b"OK ")
    job_id = answer.split()[1].decode()
    wait_for(lambda: printer.connections == 1, 30, "the delivery connected")
    holder = pg.execute(uri, "SELECT n.node_name FROM rawsvc_deliveries d JOIN rawsvc_nodes n"
                             " ON n.incarnation = d.holder WHERE d.state = 'sending'")
    assert len(holder) == 1
    victim, survivor = holder[0][0], ({"n1", "n2"} - {holder[0][0]}).pop()
    nodes[victim]["proc"].send_signal(signal.SIGKILL)
    nodes[victim]["proc"].wait(10)
    killed = time.monotonic()
    printer.hold.set()
    wait_for(lambda: big in printer.received, 30, "the job printed by the survivor")
    took = time.monotonic() - killed
    assert took <= TTL + REAP + 2.5, took
    assert printer.received.count(big) == 1
    assert printer.broken == 1  # the victim's connection: reset, a fragment
    assert printer.concurrent == 0
    wait_for(lambda: f"possible repeat job {job_id}" in _log(nodes[survivor]), 10, "the repeat logged")
    state = lambda: pg.execute(uri, "SELECT state FROM rawsvc_jobs WHERE job_id = %s", (job_id,))[0][0]
    wait_for(lambda: state() == "done", 20, "the job done")
    print(f"victim {victim}")
    if victim == "n1":  # the victim also ran the job's flow: the survivor adopted it, from its action
        assert f"cluster: takeover: adopted job {job_id} at action 1" in _log(nodes[survivor])
    # The survivor accepts and delivers on its own.
    assert send(nodes[survivor]["port"], b"after the kill").startswith(b"OK ")
    wait_for(lambda: b"after the kill" in printer.received, 20, "a new job printed")
    metrics = _get(nodes[survivor]["admin"], "/metrics")
    assert f'rawsvc_cluster_possible_repeats_total{{node="{survivor}"}} 1.0' in metrics
    takeovers = [line for line in metrics.splitlines() if line.startswith("rawsvc_cluster_takeovers_total")]
    assert takeovers and float(takeovers[0].split()[-1]) >= 1, takeovers


def test_polling_drains_when_the_listener_connection_is_terminated(cluster):
    pg, uri, printer, nodes = cluster
    listeners = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                 " AND application_name = 'rawsvc-listen'")
    wait_for(lambda: pg.execute(uri, listeners)[0][0] == 2, 20, "both listeners connected")
    killed = pg.execute(uri, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                             " WHERE datname = current_database() AND application_name = 'rawsvc-listen'")[0][0]
    assert killed >= 2
    bodies = [f"after the listeners died {i}".encode() for i in range(10)]
    for i, body in enumerate(bodies):
        assert send(nodes["n1" if i % 2 else "n2"]["port"], body).startswith(b"OK ")
    wait_for(lambda: len(printer.received) >= len(bodies), 30, "every job printed")
    assert sorted(printer.received) == sorted(bodies)
    tickets = [bytes(r[0]) for r in pg.execute(uri, "SELECT data FROM rawsvc_deliveries ORDER BY ticket")]
    assert printer.received == tickets
    stuck = pg.execute(uri, "SELECT count(*) FROM rawsvc_deliveries WHERE state <> 'done'")[0][0]
    assert stuck == 0
    wait_for(lambda: all("listener lost its connection" in _log(n) for n in nodes.values()), 10, "logged")


__all__ = ["os"]


INJECT = """
CREATE SEQUENCE inject_seq;
CREATE FUNCTION inject() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE n bigint := nextval('inject_seq');
BEGIN
  IF n = 1 THEN RAISE EXCEPTION 'injected deadlock' USING ERRCODE = 'deadlock_detected'; END IF;
  IF n = 3 THEN PERFORM pg_terminate_backend(pg_backend_pid()); PERFORM pg_sleep(5); END IF;
  RETURN NEW;
END $$;
CREATE TRIGGER inject BEFORE INSERT ON rawsvc_deliveries FOR EACH ROW EXECUTE FUNCTION inject();
"""


def test_an_enqueue_that_fails_is_tried_again_and_the_job_prints_once(cluster):
    # The first enqueue fails with a deadlock error, the second one's connection is terminated
    # (as by a database restart): the flows keep waiting, the enqueues are tried again, each job
    # prints once and ends done (it used to stay 'running', interrupted, on a live node).
    pg, uri, printer, nodes = cluster
    pg.execute(uri, INJECT)
    node = nodes["n1"]
    jobs = []
    for i, body in enumerate([b"after a deadlock", b"after a lost connection"]):
        answer = send(node["port"], body)
        assert answer.startswith(b"OK "), answer
        job_id = answer[3:].strip().decode()
        jobs.append(job_id)
        wait_for(lambda: pg.execute(uri, "SELECT state FROM rawsvc_jobs WHERE job_id = %s", (job_id,))
                 == [("done",)], 30, f"job {i} done")
        assert printer.received == [b"after a deadlock", b"after a lost connection"][:i + 1]
    assert pg.execute(uri, "SELECT last_value FROM inject_seq") == [(4,)]  # two failed tries, two that went in
    assert pg.execute(uri, "SELECT count(*), max(claims) FROM rawsvc_deliveries") == [(2, 1)]
    text = _log(node)
    for job_id in jobs:  # (more than once while the spool reconnects)
        assert f"cluster: cannot enqueue the delivery of job {job_id}" in text, text[-3000:]
    assert "injected deadlock" in text and "interrupted" not in text
    time.sleep(0.5)
    assert printer.received == [b"after a deadlock", b"after a lost connection"] and printer.concurrent == 0
