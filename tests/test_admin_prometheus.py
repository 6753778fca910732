"""/metrics comes from prometheus_client: rawsvc's collector with its old names, plus the process collector."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from rawsvc.admin.prometheus import RawsvcCollector, registry_for, render
from rawsvc.metrics import TriggerCounters


class _Trigger:
    type_name = "tcp"
    listening = True

    def __init__(self) -> None:
        self.counters = TriggerCounters()


class _Service:
    def __init__(self) -> None:
        self.triggers = {"orders": _Trigger()}
        self.destinations = None
        self.cluster = None


def _families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def test_the_collector_registers_with_a_prometheus_client_registry():
    from prometheus_client import CollectorRegistry

    registry = CollectorRegistry()
    registry.register(RawsvcCollector(_Service()))
    assert registry.get_sample_value("rawsvc_trigger_up", {"trigger": "orders", "type": "tcp"}) == 1


def test_counters_keep_their_names_types_and_labels():
    service = _Service()
    service.triggers["orders"].counters.jobs_ok = 4
    service.triggers["orders"].counters.flow_seconds.observe(0.02)
    families = _families(render(service))
    assert families["rawsvc_trigger_jobs"].type == "counter"
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in families["rawsvc_trigger_jobs"].samples}
    assert samples[("rawsvc_trigger_jobs_total", (("outcome", "ok"), ("trigger", "orders")))] == 4
    assert families["rawsvc_trigger_up"].type == "gauge"
    hist = families["rawsvc_trigger_flow_duration_seconds"]
    assert hist.type == "histogram"
    assert {s.name for s in hist.samples} == {
        "rawsvc_trigger_flow_duration_seconds_bucket", "rawsvc_trigger_flow_duration_seconds_sum",
        "rawsvc_trigger_flow_duration_seconds_count"}


def test_process_metrics_are_exported():
    families = _families(render(_Service()))
    assert families["process_resident_memory_bytes"].samples[0].value > 0
    assert families["process_open_fds"].samples[0].value > 0


def test_each_service_has_its_own_registry():
    one, two = _Service(), _Service()
    one.triggers["orders"].counters.jobs_received = 7
    assert 'rawsvc_trigger_jobs_received_total{trigger="orders"} 7.0' in render(one, registry_for(one))
    assert 'rawsvc_trigger_jobs_received_total{trigger="orders"} 0.0' in render(two, registry_for(two))
