"""
A cluster on loopback for the end-to-end tests and the bench: a throwaway
PostgreSQL (L{pg_support.PgServer}), N real C{twistd -n rawsvc} nodes on
it, a farm of exclusive fake printers in a process of its own
(C{tests/printer_farm.py}: one connection at a time; while one is open
the printer does not listen, so a second sender's connect is refused, as
a busy AppSocket printer refuses it, and the node logs it), client streams that spread jobs round-robin
over the nodes as a TCP load balancer would, and L{analyse}, which checks
what the printers got against what the clients were told.

Each node has two tcp triggers, both framed by newline, both reading the
printer's port from the job's first word (C{parse}) and sending the job's
bytes to C{127.0.0.1:${port}}:
  - C{after}: C{[parse, send_tcp, reply "OK ${job_id}"]}: the ack says printed;
  - C{before}: C{[parse, reply "OK ${job_id}", send_tcp]}: the ack says stored.

C{send_tcp} waits for the printer to close (C{wait_for_eof}, AppSocket's
"job done"), so a delivery ends only after the printer's close: one sender
that goes on to the next job never looks like a second concurrent
connection, while two nodes at one printer always do.  (Without it a node
closes after the printer's kernel has the bytes, and may connect again
before the printer's process has even read the first EOF.)
"""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field

from pg_support import PgServer, free_ports
from test_spool_restart import start_twistd

HERE = os.path.dirname(os.path.abspath(__file__))
TAG = re.compile(rb"^(\d+) (s\d+-\d+) ")
REPEAT = re.compile(r"possible repeat[^\n]*?job[ =]'?([0-9A-Za-z_-]+)")
#: A node's attempt whose connect a busy printer refused (a second sender at it).
BUSY = re.compile(r"job \S+ to 127\.0\.0\.1:(\d+): attempt \d+: refused")


# Printers ---------------------------------------------------------------------

class Farm:
    """C{count} exclusive fake printers (refusing while busy) in a subprocess; L{records} reads what they got."""

    def __init__(self, base: str, count: int, close_delay: float = 0.0) -> None:
        self.out = os.path.join(base, "printed.jsonl")
        open(self.out, "w").close()
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "printer_farm.py"), self.out, str(count), str(close_delay)],
            stdout=subprocess.PIPE, text=True, env=_env())
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("the printer farm did not start")
        self.ports: list[int] = json.loads(line)["ports"]

    def records(self) -> list[dict]:
        with open(self.out) as f:
            lines = f.read().splitlines()
        records = [json.loads(line) for line in lines if line.endswith("}")]
        for r in records:
            r["data"] = base64.b64decode(r["data"])
        return records

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def _env() -> dict[str, str]:
    e = dict(os.environ)
    root = os.path.dirname(HERE)
    e["PYTHONPATH"] = root + os.pathsep + e.get("PYTHONPATH", "")
    return e


# Nodes ------------------------------------------------------------------------

NODE_CONFIG = """
[service]
state_dir = "{state}"
spool = {spool}
stop_grace = 2
{cluster}

[admin.http]
listen = "tcp:{admin}:interface=127.0.0.1"

[[trigger]]
name = "after"
type = "tcp"
listen = "tcp:{after}:interface=127.0.0.1"
execute_on = "delimiter"
delimiter = "\\n"
flow = "print-then-ack"
max_job_bytes = 0
max_connections = 5000
refusal = "NO ${{reason}}\\n"

[[trigger]]
name = "before"
type = "tcp"
listen = "tcp:{before}:interface=127.0.0.1"
execute_on = "delimiter"
delimiter = "\\n"
flow = "ack-then-print"
max_job_bytes = 0
max_connections = 5000
refusal = "NO ${{reason}}\\n"

[[flow]]
name = "print-then-ack"
actions = [
  {{ type = "parse", regex = '^(?P<printer>[0-9]+) ' }},
  {{ type = "send_tcp", destination = "127.0.0.1:${{printer}}", wait_for_eof = true, retry_delay = 0.1, max_retry_delay = 0.5 }},
  {{ type = "reply", data = "OK ${{job_id}}\\n" }},
]

[[flow]]
name = "ack-then-print"
actions = [
  {{ type = "parse", regex = '^(?P<printer>[0-9]+) ' }},
  {{ type = "reply", data = "OK ${{job_id}}\\n" }},
  {{ type = "send_tcp", destination = "127.0.0.1:${{printer}}", wait_for_eof = true, retry_delay = 0.1, max_retry_delay = 0.5 }},
]
"""


def node_config(state: str, uri: str | None, name: str, ttl: float, margin: float, reap: float, admin: int,
                after: int, before: int, cluster_table: bool = True) -> str:
    """A node's config; C{uri} None: the SQLite spool (no C{[cluster]} table)."""
    cluster = "" if uri is None or not cluster_table else (f'\n[cluster]\nnode = "{name}"\nlease_ttl = {ttl}\nlease_margin = {margin}\n'
                                      f"reap_interval = {reap}\n")
    spool = "true" if uri is None else json.dumps(uri)
    return NODE_CONFIG.format(state=state, spool=spool, cluster=cluster, admin=admin, after=after, before=before)


class Node:
    """One C{twistd -n rawsvc} node of the cluster (its ports stay the same across restarts)."""

    def __init__(self, base: str, name: str, uri: str | None, ttl: float = 4, margin: float = 1,
                 reap: float = 1, cluster_table: bool = True, ports: list[int] | None = None) -> None:
        self.name = name
        self.dir = os.path.join(base, name)
        os.makedirs(self.dir, exist_ok=True)
        self.after, self.before, self.admin = ports if ports is not None else free_ports(3)
        self.config = os.path.join(self.dir, "rawsvc.toml")
        self.log_path = os.path.join(self.dir, "twistd.log")
        with open(self.config, "w") as f:
            f.write(node_config(os.path.join(self.dir, "state"), uri, name, ttl, margin, reap, self.admin,
                                self.after, self.before, cluster_table))
        self.proc: subprocess.Popen | None = None

    def start(self) -> "Node":
        self.proc = start_twistd(self.config, self.log_path)
        return self

    def port(self, trigger: str) -> int:
        return self.after if trigger == "after" else self.before

    def signal(self, sig: int) -> float:
        """Send C{sig}; the monotonic time it was sent."""
        assert self.proc is not None
        self.proc.send_signal(sig)
        return time.monotonic()

    def kill(self) -> float:
        t = self.signal(signal.SIGKILL)
        assert self.proc is not None
        self.proc.wait(10)
        return t

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.proc.send_signal(signal.SIGCONT)
                self.proc.terminate()
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        with open(self.log_path, errors="replace") as f:
            return f.read()

    def healthy(self) -> bool:
        import urllib.error
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.admin}/healthz", timeout=2) as r:
                return r.status == 200
        except (urllib.error.URLError, OSError):
            return False


class Cluster:
    """PostgreSQL (its own server, so a test may stop it), N nodes, a printer farm."""

    def __init__(self, base: str, nodes: int = 3, printers: int = 8, ttl: float = 4, margin: float = 1,
                 reap: float = 1, close_delay: float = 0.005, cluster_table: bool = True) -> None:
        self.base, self.ttl, self.margin, self.reap = base, ttl, margin, reap
        self.pg = PgServer().start()
        self.uri = self.pg.new_database("cluster")
        self.farm = Farm(base, printers, close_delay)
        ports = free_ports(3 * nodes)  # every node's three, all different
        self.nodes = [Node(base, f"n{i + 1}", self.uri, ttl, margin, reap, cluster_table, ports[3 * i:3 * i + 3])
                      for i in range(nodes)]

    def start(self, timeout: float = 60) -> "Cluster":
        for n in self.nodes:
            n.start()
        wait_for(lambda: all(n.healthy() for n in self.nodes), timeout, "every node healthy")
        return self

    def sql(self, statement: str, params: tuple = ()) -> list[tuple]:
        return self.pg.execute(self.uri, statement, params)

    def logs(self) -> str:
        return "".join(n.log() for n in self.nodes)

    def unfinished(self) -> int:
        [(n,)] = self.sql("SELECT count(*) FROM rawsvc_jobs WHERE state IN ('queued', 'running', 'waiting')")
        return n

    def drain(self, timeout: float) -> None:
        try:
            wait_for(lambda: self.unfinished() == 0, timeout, "every stored job finished")
        except AssertionError as e:
            raise AssertionError(f"{e}; {self.describe()}") from None

    def describe(self) -> str:
        """What the database holds: jobs and deliveries by state, a few unfinished ones, the nodes."""
        try:
            return "; ".join(f"{what}: {self.sql(q)}" for what, q in (
                ("jobs", "SELECT state, count(*) FROM rawsvc_jobs GROUP BY 1 ORDER BY 1"),
                ("deliveries", "SELECT state, count(*) FROM rawsvc_deliveries GROUP BY 1 ORDER BY 1"),
                ("unfinished", "SELECT j.job_id, j.state, j.trigger, j.action_index, n.node_name, n.state, d.state,"
                               " d.ticket, d.claims, d.destination FROM rawsvc_jobs j"
                               " LEFT JOIN rawsvc_nodes n ON n.incarnation = j.owner"
                               " LEFT JOIN rawsvc_deliveries d ON d.job_id = j.job_id"
                               " WHERE j.state IN ('queued', 'running', 'waiting') ORDER BY j.seq LIMIT 8"),
                ("heads", "SELECT destination, min(ticket), count(*) FROM rawsvc_deliveries"
                          " WHERE state IN ('queued', 'sending') GROUP BY 1"),
                ("nodes", "SELECT node_name, state, lease_until > clock_timestamp() FROM rawsvc_nodes"
                          " ORDER BY started_at")))
        except Exception as e:  # noqa: BLE001
            return f"(the database cannot say: {e})"

    def close(self) -> None:
        for n in self.nodes:  # all at once (each waits for its stop grace)
            if n.proc is not None and n.proc.poll() is None:
                n.proc.send_signal(signal.SIGCONT)
                n.proc.terminate()
        for n in self.nodes:
            n.stop()
        self.farm.stop()
        self.pg.destroy()


def wait_for(predicate, timeout: float, what: str, step: float = 0.1) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if predicate():
                return
        except Exception:  # noqa: BLE001  (e.g. the database restarting): ask again
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(step)


# Clients ----------------------------------------------------------------------

def payload(printer: int, tag: str, i: int) -> bytes:
    """A job for C{printer}: its port, its tag, then bytes of every value but newline (a few of 80 KiB)."""
    head = f"{printer} {tag} ".encode()
    if i % 97 == 13:
        body = bytes(b for b in range(256) if b != 10) * 320  # > 64 KiB: stored in chunks
    else:
        body = bytes((i * 7 + k) % 256 for k in range(40 + (i % 9) * 30)).replace(b"\n", b"\x0b")
    return head + body + b" end"


@dataclass
class Sent:
    tag: str
    printer: int
    data: bytes
    node: str = ""
    outcome: str = ""  # "ack", "refused", "lost" (connection ended with no answer), "down" (no node took it)
    job_id: str = ""
    answer: bytes = b""
    sent_at: float = 0.0
    answered_at: float = 0.0


class Stream(threading.Thread):
    """
    One client stream: C{count} jobs, one at a time, each waiting for its
    answer; job C{i} goes to node C{(number + i) % N} (the next one when
    that node refuses the connection, as a load balancer's health check
    would), to printer C{ports[(number * 3 + i) % len(ports)]}.
    """

    def __init__(self, number: int, cluster: Cluster, trigger: str, count: int, stop: threading.Event | None = None,
                 timeout: float = 60) -> None:
        super().__init__(daemon=True)
        self.number, self.cluster, self.trigger, self.count = number, cluster, trigger, count
        self.timeout = timeout
        self.stop_event = stop or threading.Event()
        self.sent: list[Sent] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            ports = self.cluster.farm.ports
            nodes = self.cluster.nodes
            for i in range(self.count):
                if self.stop_event.is_set():
                    return
                printer = ports[(self.number * 3 + i) % len(ports)]
                tag = f"s{self.number:02d}-{i:05d}"
                job = Sent(tag, printer, payload(printer, tag, i))
                self.sent.append(job)
                self._send(job, [nodes[(self.number + i + k) % len(nodes)] for k in range(len(nodes))])
        except BaseException as e:  # noqa: BLE001  (reported by the test)
            self.error = e

    def _send(self, job: Sent, nodes: list[Node]) -> None:
        for node in nodes:
            try:
                sock = socket.create_connection(("127.0.0.1", node.port(self.trigger)), timeout=2)
            except OSError:
                continue  # down: the balancer sends the job to the next node
            job.node, job.sent_at = node.name, time.monotonic()
            with sock:
                sock.settimeout(self.timeout)
                buf = b""
                try:
                    sock.sendall(job.data + b"\n")
                    while b"\n" not in buf:
                        chunk = sock.recv(4096)
                        if not chunk:
                            break
                        buf += chunk
                except OSError:
                    pass
            job.answered_at = time.monotonic()
            job.answer = buf.split(b"\n", 1)[0]
            if job.answer.startswith(b"OK "):
                job.outcome, job.job_id = "ack", job.answer[3:].decode()
            elif job.answer.startswith(b"NO "):
                job.outcome = "refused"
                time.sleep(0.05)
            else:
                job.outcome = "lost"
            return
        job.outcome = "down"
        time.sleep(0.05)


# Checking -----------------------------------------------------------------------

@dataclass
class Report:
    sent: int = 0
    acknowledged: int = 0
    refused: int = 0
    unanswered: int = 0
    printed: int = 0
    repeated: int = 0
    fragments: int = 0
    lost: int = 0
    overlaps: int = 0
    busy: int = 0  # connects refused by a busy printer: a second sender while one was printing
    resent: int = 0
    tickets: bool = False  # the database has per-printer tickets to compare the print order with
    problems: list[str] = field(default_factory=list)

    def line(self, title: str) -> str:
        return (f"{title}: sent {self.sent}, acknowledged {self.acknowledged}, refused {self.refused}, "
                f"unanswered {self.unanswered}, printed {self.printed}, repeated {self.repeated}, "
                f"fragments {self.fragments}, lost {self.lost}, concurrent connections {self.overlaps}, "
                f"refused as busy {self.busy}, "
                f"re-sent deliveries {self.resent}")


def analyse(cluster: Cluster, streams: list[Stream]) -> tuple[Report, dict]:
    """
    Check the printers' records against the clients' and the database's
    view; the report's C{problems} lists every broken promise.  Also returns
    the details (prints per tag, the re-sent job ids, the records).
    """
    r = Report()
    jobs = {j.tag: j for s in streams for j in s.sent}
    r.sent = sum(1 for j in jobs.values() if j.outcome != "down")
    r.acknowledged = sum(1 for j in jobs.values() if j.outcome == "ack")
    r.refused = sum(1 for j in jobs.values() if j.outcome == "refused")
    r.unanswered = sum(1 for j in jobs.values() if j.outcome == "lost")

    # The database: every job's id and tag, every delivery's ticket and claims.
    ids: dict[str, str] = {}
    for job_id, head in cluster.sql(
            "SELECT j.job_id, substring(coalesce(j.payload, c.data) from 1 for 40) FROM rawsvc_jobs j"
            " LEFT JOIN rawsvc_payload_chunks c ON c.job_id = j.job_id AND c.n = 0"):
        m = TAG.match(bytes(head or b""))
        if m:
            ids[m.group(2).decode()] = job_id
    tag_of = {v: k for k, v in ids.items()}
    for j in jobs.values():
        if j.outcome == "ack" and ids.get(j.tag) != j.job_id:
            r.problems.append(f"{j.tag} acknowledged as {j.job_id} but the database has {ids.get(j.tag)}")
        if j.outcome in ("refused", "down") and j.tag in ids:
            r.problems.append(f"{j.tag} was {j.outcome} but is stored as {ids[j.tag]}")
    try:
        deliveries = cluster.sql("SELECT job_id, destination, ticket, claims, state FROM rawsvc_deliveries")
        r.tickets = True
    except Exception as e:  # noqa: BLE001  (a spool without the cluster's tables: no tickets to compare)
        if type(e).__name__ != "UndefinedTable":
            raise
        deliveries = []
    tickets: dict[int, list[tuple[int, str]]] = defaultdict(list)
    resent_tags: set[str] = set()
    claims_of: dict[int, list[tuple[int, str, int]]] = defaultdict(list)
    for job_id, destination, ticket, claims, state in deliveries:
        tag = tag_of.get(job_id, job_id)
        tickets[int(destination.rsplit(":", 1)[1])].append((ticket, tag))
        claims_of[int(destination.rsplit(":", 1)[1])].append((ticket, tag, claims))
        if claims > 1:
            resent_tags.add(tag)
        if state != "done":
            r.problems.append(f"delivery of {tag} ({job_id}) is {state}")
    r.resent = len(resent_tags)
    logs = cluster.logs()
    logged = {tag_of.get(m.group(1), m.group(1)) for m in REPEAT.finditer(logs)}
    r.busy = sum(1 for m in BUSY.finditer(logs) if int(m.group(1)) in cluster.farm.ports)

    # The printers.
    records = cluster.farm.records()
    by_printer: dict[int, list[dict]] = defaultdict(list)
    index_port = cluster.farm.ports
    prints: Counter[str] = Counter()
    for rec in sorted(records, key=lambda rec: rec["opened"]):
        port = index_port[rec["printer"]]
        if rec["overlap"]:
            r.overlaps += 1  # a failure where one connection per printer is promised: the caller asserts it
            continue
        m = TAG.match(rec["data"])
        tag = m.group(2).decode() if m else None
        if tag is None or tag not in jobs:
            if rec["data"]:
                r.problems.append(f"printer {port} got bytes of no job: {rec['data'][:40]!r}")
            continue
        if not rec["eof"] or rec["data"] != jobs[tag].data:
            if rec["eof"] or not jobs[tag].data.startswith(rec["data"]):
                r.problems.append(f"printer {port} got {tag} damaged ({len(rec['data'])} bytes, eof {rec['eof']})")
            elif tag not in resent_tags:
                r.problems.append(f"printer {port} got a fragment of {tag}, a delivery that was not re-sent")
            r.fragments += 1
            continue
        if int(m.group(1)) != port:
            r.problems.append(f"{tag} for printer {m.group(1).decode()} printed at {port}")
        prints[tag] += 1
        by_printer[port].append(rec | {"tag": tag})
    r.printed = len(prints)
    r.repeated = sum(n - 1 for n in prints.values())
    for tag, n in prints.items():
        if n > 1 and tag not in resent_tags:
            r.problems.append(f"{tag} printed {n} times but its delivery was claimed once")
        if n > 1 and tag not in logged:
            r.problems.append(f"{tag} printed {n} times with no 'possible repeat' log line")
    for j in jobs.values():
        if j.outcome == "ack" and not prints[j.tag]:
            r.lost += 1
            r.problems.append(f"{j.tag} acknowledged ({j.job_id}) and never printed")
        elif j.tag in ids and not prints[j.tag]:
            r.problems.append(f"{j.tag} stored ({ids[j.tag]}, {j.outcome}) and never printed")

    # Order: per printer, the prints (adjacent repeats collapsed) are its tickets in order.
    for port, recs in by_printer.items():
        seq: list[str] = []
        for rec in recs:
            if not seq or seq[-1] != rec["tag"]:
                seq.append(rec["tag"])
        expected = [tag for _, tag in sorted(tickets[port])]
        if r.tickets and seq != expected:
            first = next((k for k, (a, b) in enumerate(zip(seq, expected)) if a != b), min(len(seq), len(expected)))
            around = [(round(x["opened"], 3), round(x["closed"], 3), x["tag"]) for x in recs[max(0, first - 3):first + 6]]
            r.problems.append(f"printer {port}: print order differs from ticket order at {first}: "
                              f"printed {seq[max(0, first - 3):first + 4]}, "
                              f"tickets {expected[max(0, first - 3):first + 4]} (from {max(0, first - 3)}); "
                              f"prints (opened, closed, tag) {around}; "
                              f"deliveries (ticket, tag, claims) {sorted(claims_of[port])[max(0, first - 3):first + 4]}")
        # One stream's print-then-ack jobs: acknowledged one after the other, so printed in that order.
        for s in streams:
            if s.trigger != "after":
                continue
            mine = [j.tag for j in s.sent if j.outcome == "ack" and j.printer == port]
            if [t for t in seq if t in set(mine)] != mine:
                r.problems.append(f"printer {port}: stream {s.number}'s acknowledged jobs printed out of order")
    details = {"prints": prints, "resent": resent_tags, "logged": logged, "by_printer": by_printer,
               "records": records, "ids": ids}
    return r, details


def takeover_seconds(details: dict, since: float) -> float | None:
    """The longest wait from C{since} to a re-sent delivery's print opening again (None: none re-sent)."""
    waits = []
    for tag in details["resent"]:
        later = [rec["opened"] for recs in details["by_printer"].values() for rec in recs
                 if rec["tag"] == tag and rec["opened"] > since]
        if later:
            waits.append(min(later) - since)
    return max(waits) if waits else None
