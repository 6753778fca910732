"""
The Prometheus text exposition format (version 0.0.4) for rawsvc's
counters, written by hand: no client library needed at run time.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

from rawsvc.admin.namespace import destinations

if TYPE_CHECKING:
    from rawsvc.service import RawService

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in labels.items()) + "}"


def _number(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    return repr(float(value))


class _Writer:
    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, doc: str, samples: Iterable[tuple[str, dict[str, str], float]]) -> None:
        rows = list(samples)
        self.lines.append(f"# HELP {name} {doc}")
        self.lines.append(f"# TYPE {name} {kind}")
        for suffix, labels, value in rows:
            self.lines.append(f"{name}{suffix}{_labels(labels)} {_number(value)}")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(service: RawService) -> str:
    """Every trigger's and destination's counters, as Prometheus text."""
    w = _Writer()
    triggers = service.triggers

    def per_trigger(field: str):
        return [("_total", {"trigger": n}, getattr(t.counters, field)) for n, t in triggers.items()]

    w.family("rawsvc_trigger_up", "gauge", "1 while the trigger's listener is up.",
             [("", {"trigger": n, "type": t.type_name}, bool(t.listening)) for n, t in triggers.items()])
    w.family("rawsvc_trigger_connections", "counter", "Connections accepted.",
             per_trigger("connections_total"))
    w.family("rawsvc_trigger_connections_refused", "counter", "Connections refused.",
             per_trigger("connections_refused"))
    w.family("rawsvc_trigger_connections_evicted", "counter",
             "Silent connections closed to make room at max_connections (low-resources mode).",
             per_trigger("evicted"))
    w.family("rawsvc_trigger_connections_open", "gauge", "Connections open now.",
             [("", {"trigger": n}, t.counters.connections_open) for n, t in triggers.items()])
    w.family("rawsvc_trigger_jobs_received", "counter", "Jobs received.", per_trigger("jobs_received"))
    w.family(
        "rawsvc_trigger_jobs",
        "counter",
        "Jobs finished, by outcome (ok, failed, refused).",
        [
            ("_total", {"trigger": n, "outcome": outcome}, getattr(t.counters, f"jobs_{outcome}"))
            for n, t in triggers.items()
            for outcome in ("ok", "failed", "refused")
        ],
    )
    w.family(
        "rawsvc_trigger_bytes",
        "counter",
        "Bytes received from (in) and sent to (out) clients.",
        [
            ("_total", {"trigger": n, "direction": d}, getattr(t.counters, f"bytes_{d}"))
            for n, t in triggers.items()
            for d in ("in", "out")
        ],
    )
    samples = []
    for n, t in triggers.items():
        hist = t.counters.flow_seconds
        for bound, count in hist.cumulative():
            samples.append(("_bucket", {"trigger": n, "le": bound}, count))
        samples.append(("_sum", {"trigger": n}, float(hist.total)))
        samples.append(("_count", {"trigger": n}, hist.count))
    w.family("rawsvc_trigger_flow_duration_seconds", "histogram", "Time from job accepted to flow finished.", samples)

    dests = destinations(service)

    def per_dest(key: str, suffix: str = "_total"):
        return [(suffix, {"destination": d}, int(s.get(key, 0) or 0)) for d, s in dests.items()]

    w.family("rawsvc_destination_attempts", "counter", "Delivery attempts.", per_dest("attempts"))
    w.family("rawsvc_destination_delivered", "counter", "Jobs delivered.", per_dest("delivered"))
    w.family("rawsvc_destination_failures", "counter", "Failed delivery attempts.", per_dest("failures"))
    w.family("rawsvc_destination_retries", "counter", "Deliveries retried.", per_dest("retries"))
    w.family("rawsvc_destination_queue_depth", "gauge", "Jobs waiting for the destination.", per_dest("queued", ""))
    w.family("rawsvc_destination_waiting", "gauge",
             "Deliveries waiting to retry (the destination refused, timed out or could not be found).",
             per_dest("waiting", ""))
    w.family("rawsvc_destination_held", "gauge",
             "Deliveries held: the printer's pre-flight status check said it is not ready (paper out ...).",
             per_dest("held", ""))
    return w.text()
