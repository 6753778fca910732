"""
Scenario: cluster mode (issue 15).  One node on SQLite (the embedded
default) against one and three nodes on one PostgreSQL, side by side: the
same tcp trigger and flow as the cluster's end-to-end tests
(C{tests/cluster_support.py}: 8 exclusive fake printers in a process of
their own, client streams spread round-robin over the nodes, each job
waiting for its C{OK}), in two modes:
  - C{stored}: C{[reply, send_tcp]}, the ack says the job is committed;
  - C{printed}: C{[send_tcp, reply]}, the ack says the printer has it.
Per row: jobs/s, ack latency p50/p99, and the CPU the rawsvc nodes (and
PostgreSQL's server processes) spent per job.

On this 2-core machine everything (nodes, PostgreSQL, printers, clients)
shares two cores, so three nodes cannot be faster than one: the figures are
about the overhead of the shared spool, not scaling.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import threading
import time

from harness import REPO

sys.path.insert(0, str(REPO / "tests"))

TICK = os.sysconf("SC_CLK_TCK")


def _cpu(pid: int) -> float:
    """Seconds of CPU (user + system) a process has used; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (OSError, IndexError, ValueError):
        return 0.0


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(entry))
            except (OSError, ValueError, IndexError):
                pass
    return out


class _Setup:
    def __init__(self, base: str, nodes: int, uri: str | None, pg) -> None:
        import cluster_support as cs

        self.cs, self.pg = cs, pg
        self.farm = cs.Farm(base, 8, 0.0)
        self.nodes = [cs.Node(base, f"n{i + 1}", uri) for i in range(nodes)]
        self.uri = uri
        for n in self.nodes:
            n.start()
        cs.wait_for(lambda: all(n.healthy() for n in self.nodes), 60, "every node healthy")

    def cpu(self) -> tuple[float, float]:
        nodes = sum(_cpu(n.proc.pid) for n in self.nodes if n.proc is not None)
        pg = 0.0
        if self.uri is not None and self.pg.pid():
            pg = sum(_cpu(p) for p in [self.pg.pid(), *_children(self.pg.pid())])
        return nodes, pg

    def measure(self, trigger: str, streams: int, seconds: float) -> dict:
        cs = self.cs
        stop = threading.Event()
        # The streams only need the nodes and the printers' ports: a stand-in for Cluster.
        view = type("View", (), {"nodes": self.nodes, "farm": self.farm})()
        clients = [cs.Stream(i, view, trigger, 10**9, stop=stop, timeout=30) for i in range(streams)]
        for c in clients:
            c.start()
        time.sleep(1.0)  # warm up
        cut = time.monotonic()
        nodes0, pg0 = self.cpu()
        own0 = time.process_time()
        time.sleep(seconds)
        end = time.monotonic()
        nodes1, pg1 = self.cpu()
        own1 = time.process_time()
        stop.set()
        for c in clients:
            c.join(60)
        acks = [j for c in clients for j in c.sent if j.outcome == "ack" and cut <= j.answered_at < end]
        others = sum(1 for c in clients for j in c.sent if j.outcome not in ("ack", ""))
        lat = sorted((j.answered_at - j.sent_at) * 1000 for j in acks)
        n = len(acks)
        return {
            "jobs": n, "jobs_per_s": n / (end - cut), "errors": others,
            "p50_ms": statistics.median(lat) if lat else None,
            "p99_ms": lat[min(len(lat) - 1, int(len(lat) * 0.99))] if lat else None,
            "node_cpu_us_per_job": (nodes1 - nodes0) / n * 1e6 if n else None,
            "pg_cpu_us_per_job": (pg1 - pg0) / n * 1e6 if n and self.uri else None,
            "client_cpu": (own1 - own0) / (end - cut),
        }

    def close(self) -> None:
        for n in self.nodes:
            n.stop()
        self.farm.stop()


def run(ctx) -> dict:
    try:
        import conftest  # noqa: F401  (pg_support imports it; it must come first)
        from pg_support import PgServer
    except Exception as e:  # noqa: BLE001
        return {"skipped": f"tests/pg_support.py cannot be used: {e}"}
    seconds = max(3.0, ctx.duration)
    results: dict = {}
    base = tempfile.mkdtemp(prefix="cluster-", dir=ctx.workdir)
    pg = PgServer()
    pg.start()
    try:
        for label, nodes, engine in (("1 node, SQLite", 1, "sqlite"), ("1 node, PostgreSQL", 1, "pg"),
                                     ("3 nodes, PostgreSQL", 3, "pg")):
            uri = pg.new_database("bench") if engine == "pg" else None
            setup = _Setup(tempfile.mkdtemp(dir=base), nodes, uri, pg)
            try:
                for mode, trigger in (("stored", "before"), ("printed", "after")):
                    results[f"{label} / {mode}"] = setup.measure(trigger, 8, seconds) | {
                        "nodes": nodes, "engine": engine, "mode": mode}
            finally:
                setup.close()
    finally:
        pg.destroy()
    return results


def table(results: dict) -> list[str]:
    """The scenario's rows (markdown)."""

    def row(*cells) -> None:
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")

    lines = ["", "Cluster: 8 client streams (one job at a time each, round-robin over the nodes), "
             "8 fake printers; 2 cores shared by everything, so these are overhead, not scaling", ""]
    row("setup / ack after", "jobs/s", "p50 ms", "p99 ms", "rawsvc CPU µs/job", "PostgreSQL CPU µs/job",
        "client CPU")
    row("---", "---:", "---:", "---:", "---:", "---:", "---:")
    if "skipped" in results:
        row("skipped: " + str(results["skipped"]), "", "", "", "", "", "")
    for name, r in results.items():
        if "skipped" in r or not isinstance(r, dict) or "jobs_per_s" not in r:
            continue

        def f(v, fmt):
            return "-" if v is None else format(v, fmt)

        row(name, f(r["jobs_per_s"], ",.0f"), f(r["p50_ms"], ".2f"), f(r["p99_ms"], ".2f"),
            f(r["node_cpu_us_per_job"], ",.0f"), f(r["pg_cpu_us_per_job"], ",.0f"), f"{r['client_cpu']:.0%}")
    return lines
