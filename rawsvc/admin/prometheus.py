"""
C{/metrics}: rawsvc's own counters as a C{prometheus_client} collector
(L{RawsvcCollector}, which yields metric families read from the live
triggers and destination pool at each scrape), plus the library's process
collector (CPU, memory, open files).  Each service has its own registry,
so two services in one process (tests) never mix their samples.

The exposition is C{generate_latest} on the reactor thread: the counters
are plain attributes written by the reactor, read here in the same thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from rawsvc.admin.namespace import destinations
from rawsvc.interfaces import IOutboundLink

#: The states of an outbound link (rawsvc.triggers.tcp_client).
LINK_STATES = ("connecting", "connected", "backing_off", "stopped")

CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

#: Per-trigger counters: (metric name without _total, counter attribute, help).
_TRIGGER_COUNTERS = (
    ("rawsvc_trigger_connections", "connections_total", "Connections accepted."),
    ("rawsvc_trigger_connections_refused", "connections_refused", "Connections refused."),
    ("rawsvc_trigger_connections_evicted", "evicted",
     "Silent connections closed to make room at max_connections (low-resources mode)."),
)

#: Per-destination metrics: (name, kind, status key, help).
_DESTINATION = (
    ("rawsvc_destination_attempts", "counter", "attempts", "Delivery attempts."),
    ("rawsvc_destination_delivered", "counter", "delivered", "Jobs delivered."),
    ("rawsvc_destination_failures", "counter", "failures", "Failed delivery attempts."),
    ("rawsvc_destination_retries", "counter", "retries", "Deliveries retried."),
    ("rawsvc_destination_queue_depth", "gauge", "queued", "Jobs waiting for the destination."),
    ("rawsvc_destination_waiting", "gauge", "waiting",
     "Deliveries waiting to retry (the destination refused, timed out or could not be found)."),
    ("rawsvc_destination_held", "gauge", "held",
     "Deliveries held: the printer's pre-flight status check said it is not ready (paper out ...)."),
)


class RawsvcCollector(Collector):
    """Every trigger's and destination's counters of C{service}, read at each scrape."""

    def __init__(self, service: Any) -> None:
        self.service = service

    def collect(self) -> Iterator[Metric]:
        triggers = self.service.triggers
        up = GaugeMetricFamily("rawsvc_trigger_up", "1 while the trigger's listener is up.", labels=["trigger", "type"])
        for n, t in triggers.items():
            up.add_metric([n, t.type_name], 1 if t.listening else 0)
        yield up
        for name, field, doc in _TRIGGER_COUNTERS:
            family = CounterMetricFamily(name, doc, labels=["trigger"])
            for n, t in triggers.items():
                family.add_metric([n], getattr(t.counters, field))
            yield family
        open_ = GaugeMetricFamily("rawsvc_trigger_connections_open", "Connections open now.", labels=["trigger"])
        received = CounterMetricFamily("rawsvc_trigger_jobs_received", "Jobs received.", labels=["trigger"])
        jobs = CounterMetricFamily("rawsvc_trigger_jobs", "Jobs finished, by outcome (ok, failed, refused).",
                                   labels=["trigger", "outcome"])
        bytes_ = CounterMetricFamily("rawsvc_trigger_bytes", "Bytes received from (in) and sent to (out) clients.",
                                     labels=["trigger", "direction"])
        flow = HistogramMetricFamily("rawsvc_trigger_flow_duration_seconds", "Time from job accepted to flow finished.",
                                     labels=["trigger"])
        for n, t in triggers.items():
            c = t.counters
            open_.add_metric([n], c.connections_open)
            received.add_metric([n], c.jobs_received)
            for outcome in ("ok", "failed", "refused"):
                jobs.add_metric([n, outcome], getattr(c, f"jobs_{outcome}"))
            bytes_.add_metric([n, "in"], c.bytes_in)
            bytes_.add_metric([n, "out"], c.bytes_out)
            flow.add_metric([n], buckets=c.flow_seconds.cumulative(), sum_value=float(c.flow_seconds.total))
        yield from (open_, received, jobs, bytes_, flow)

        # Triggers that connect out (tcp-client): the link's state and its reconnects.
        links = {n: t.link_status() for n, t in triggers.items() if IOutboundLink.providedBy(t)}
        if links:
            state = GaugeMetricFamily("rawsvc_trigger_link_state", "1 for the outbound link's state now.",
                                      labels=["trigger", "state"])
            reconnects = CounterMetricFamily("rawsvc_trigger_reconnects", "Times the outbound link connected again.",
                                             labels=["trigger"])
            for n, link in links.items():
                for st in LINK_STATES:
                    state.add_metric([n, st], 1 if link.get("link") == st else 0)
                reconnects.add_metric([n], int(link.get("reconnects", 0)))
            yield from (state, reconnects)

        dests = destinations(self.service)
        for name, kind, key, doc in _DESTINATION:
            dest_family: CounterMetricFamily | GaugeMetricFamily = (
                CounterMetricFamily(name, doc, labels=["destination"]) if kind == "counter"
                else GaugeMetricFamily(name, doc, labels=["destination"]))
            for d, s in dests.items():
                dest_family.add_metric([d], int(s.get(key, 0) or 0))
            yield dest_family
        yield from _cluster(self.service.cluster)


def _cluster(node: Any) -> Iterator[Metric]:
    """Cluster mode's families (L{rawsvc.cluster}); nothing on a single node."""
    if node is None:
        return
    stats = node.stats()
    age = GaugeMetricFamily("rawsvc_cluster_lease_age_seconds",
                            "Seconds since this node's last successful lease renewal was sent.", labels=["node"])
    age.add_metric([stats["node"]], float(stats["lease_age"]) if stats["lease_age"] is not None else float("nan"))
    valid = GaugeMetricFamily("rawsvc_cluster_lease_valid", "1 while this node holds its lease (not fenced).",
                              labels=["node"])
    valid.add_metric([stats["node"]], 1 if stats["lease_valid"] else 0)
    takeovers = CounterMetricFamily("rawsvc_cluster_takeovers",
                                    "Deliveries requeued from dead nodes and jobs adopted, by this node.",
                                    labels=["node"])
    takeovers.add_metric([stats["node"]], stats["takeovers"])
    fences = CounterMetricFamily("rawsvc_cluster_fences", "Times this node fenced itself.", labels=["node"])
    fences.add_metric([stats["node"]], stats["fences"])
    repeats = CounterMetricFamily("rawsvc_cluster_possible_repeats",
                                  "Deliveries this node claimed again after a takeover (may print twice).",
                                  labels=["node"])
    repeats.add_metric([stats["node"]], stats["repeats"])
    deliveries = GaugeMetricFamily("rawsvc_cluster_deliveries", "Deliveries in the cluster, by state.",
                                   labels=["state"])
    for state, n in sorted(stats["deliveries"].items()):
        deliveries.add_metric([state], n)
    yield from (age, valid, takeovers, fences, repeats, deliveries)


def registry_for(service: Any) -> CollectorRegistry:
    """A registry of C{service}'s own: its counters and this process's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RawsvcCollector(service))
    ProcessCollector(registry=registry)
    return registry


def render(service: Any, registry: CollectorRegistry | None = None) -> str:
    """Every trigger's and destination's counters (and the process's), as Prometheus text 0.0.4."""
    return generate_latest(registry or registry_for(service)).decode("utf-8")
