"""Merging workers' Prometheus expositions (aiServer/metrics_merge.py)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families

from aiServer.metrics_merge import merge_worker_metrics


def exposition(requests: int, latencies: list[float]) -> str:
    registry = CollectorRegistry()
    counter = Counter("demo_requests", "Requests", ["model"], registry=registry)
    counter.labels("ma").inc(requests)
    histogram = Histogram("demo_latency_seconds", "Latency", registry=registry)
    for value in latencies:
        histogram.observe(value)
    return generate_latest(registry).decode()


def test_every_sample_gets_its_worker_label_and_each_family_appears_once() -> None:
    extra = GaugeMetricFamily("demo_workers_ready", "Ready workers")
    extra.add_metric([], 2)
    text = merge_worker_metrics(
        {"0": exposition(3, [0.01]), "1": exposition(5, [0.2, 0.3])}, [extra]
    ).decode()
    assert text.count("# TYPE demo_requests_total counter") == 1
    assert text.count("# TYPE demo_latency_seconds histogram") == 1
    families = {f.name: f for f in text_string_to_metric_families(text)}
    requests = {
        s.labels["worker"]: s.value
        for s in families["demo_requests"].samples
        if s.name.endswith("_total")
    }
    assert requests == {"0": 3.0, "1": 5.0}
    counts = {
        s.labels["worker"]: s.value
        for s in families["demo_latency_seconds"].samples
        if s.name == "demo_latency_seconds_count"
    }
    assert counts == {"0": 1.0, "1": 2.0}
    assert [s.value for s in families["demo_workers_ready"].samples] == [2.0]


def test_no_worker_answering_still_gives_the_supervisors_own_families() -> None:
    extra = GaugeMetricFamily("demo_workers_ready", "Ready workers")
    extra.add_metric([], 0)
    text = merge_worker_metrics({}, [extra]).decode()
    assert "demo_workers_ready 0.0" in text
