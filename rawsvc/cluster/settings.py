"""The C{[cluster]} table: valid only with a PostgreSQL spool (see L{rawsvc.cluster})."""

from __future__ import annotations

import socket
from typing import Any

from rawsvc import options as o
from rawsvc.errors import ConfigIssue


def _node(value: str) -> str:
    """A node name: printable, at most 200 characters; empty means the host name."""
    value = value.strip()
    if not value:
        return socket.gethostname()
    if len(value) > 200 or not value.isprintable():
        raise ConfigIssue("must be a printable name of at most 200 characters")
    return value


def _seconds(value: float) -> float:
    value = o.positive(value)
    if value > 86400:
        raise ConfigIssue("must be at most 86400 seconds (one day)")
    return float(value)


CLUSTER_OPTIONS = o.Schema(
    o.Option("node", str, "", _node,
             doc="this node's name in the cluster (logs, `rawsvc_nodes`); each process start registers a new "
                 "incarnation under it", shown_default="the host name"),
    o.Option("lease_ttl", (int, float), 10.0, _seconds,
             doc="seconds a node's lease lasts after each renewal: a node that dies is taken over within "
                 "`lease_ttl` + `reap_interval`; set it above the database's failover time (see \"Running a cluster\")"),
    o.Option("lease_margin", (int, float), 3.0, _seconds,
             doc="a node fences itself (aborts its printer connections, stops claiming) `lease_ttl` - "
                 "`lease_margin` seconds after its last successful renewal, before anyone may take over; "
                 "must be less than `lease_ttl`"),
    o.Option("reap_interval", (int, float), 2.0, _seconds,
             doc="seconds between renewals, reaps of dead nodes and polls for work (wake-ups come sooner "
                 "by LISTEN/NOTIFY); must be less than `lease_ttl` - `lease_margin`"),
)


def check(values: dict[str, Any]) -> list[ConfigIssue]:
    """The checks across keys of a validated C{[cluster]} table."""
    issues = []
    ttl, margin, interval = values["lease_ttl"], values["lease_margin"], values["reap_interval"]
    if margin >= ttl:
        issues.append(ConfigIssue(f"must be less than lease_ttl ({ttl:g})", "lease_margin"))
    elif interval >= ttl - margin:
        issues.append(ConfigIssue(f"must be less than lease_ttl - lease_margin ({ttl - margin:g})", "reap_interval"))
    return issues
