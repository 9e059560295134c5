"""Prometheus metrics, collected at scrape time from the counters the server keeps.

Nothing here runs per request: the hot path only bumps plain counters and cheap
bucket histograms (commonlib/stats.py); this collector reads them when
Prometheus scrapes /metrics.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from aiServer.commands.infer import InferHandler
from aiServer.commands.registry import ServerState
from aiServer.dispatcher import Dispatcher
from aiServer.facade import AIFacade
from commonlib.stats import BATCH_SIZE_BUCKETS, BucketHistogram, format_bound
from factory.packet_protocol import PacketFactory
from netlib.udp_broadcast import UdpBroadcaster


@dataclass
class MetricSources:
    """Where the numbers live."""

    facade: AIFacade
    dispatcher: Dispatcher
    factory: PacketFactory
    broadcaster: UdpBroadcaster | None
    state: ServerState
    is_ready: Callable[[], bool]


def _histogram(
    name: str, doc: str, label: str, rows: Iterable[tuple[str, BucketHistogram]]
) -> Metric:
    family = HistogramMetricFamily(name, doc, labels=[label])
    for value, histogram in rows:
        family.add_metric([value], histogram.cumulative(), histogram.sum)
    return family


class ServerCollector(Collector):
    """Exports the daemon's counters as Prometheus metrics."""

    def __init__(self, sources: MetricSources) -> None:
        self.s = sources

    def collect(self) -> Iterable[Metric]:
        """Called on every scrape."""
        s = self.s
        yield from self._requests(s)
        yield from self._batching(s)
        yield from self._connections(s)
        yield from self._models(s)
        yield from self._udp(s)
        yield from self._streams(s)
        yield from self._result_cache(s)
        ready = GaugeMetricFamily(
            "inference_ready", "1 when every model is warm and the server is not draining"
        )
        ready.add_metric([], 1.0 if s.is_ready() else 0.0)
        yield ready

    def _requests(self, s: MetricSources) -> Iterable[Metric]:
        commands = CounterMetricFamily(
            "inference_commands", "Packets received, by command (Envelope body)", labels=["command"]
        )
        for command, count in sorted(s.dispatcher.commands.items()):
            commands.add_metric([command], count)
        yield commands
        handler = s.dispatcher.handlers.get("infer_request")
        if isinstance(handler, InferHandler):
            outcomes = CounterMetricFamily(
                "inference_requests",
                "Inference requests by model and outcome (ok or the error code)",
                labels=["model", "outcome"],
            )
            for (model, outcome), count in sorted(handler.outcomes.items()):
                outcomes.add_metric([model, outcome], count)
            yield outcomes
            yield _histogram(
                "inference_request_duration_seconds",
                "Arrival to reply inside the server, per model",
                "model",
                sorted(handler.latency.items()),
            )
        errors = CounterMetricFamily(
            "inference_errors_sent", "Error packets sent, by code", labels=["code"]
        )
        for code, count in sorted(s.factory.stats.errors_sent.items()):
            errors.add_metric([code], count)
        yield errors

    def _batching(self, s: MetricSources) -> Iterable[Metric]:
        statuses = s.facade.get_queue_status()
        batchers = s.facade.batchers()
        yield _histogram(
            "inference_queue_wait_seconds",
            "Time from arrival to the start of the batch, per model",
            "model",
            [(name, b.queue_wait) for name, b in batchers],
        )
        yield _histogram(
            "inference_batch_duration_seconds",
            "Forward-pass time of each batch, per model",
            "model",
            [(name, b.inference_time) for name, b in batchers],
        )
        sizes = HistogramMetricFamily(
            "inference_batch_size", "Requests per forward pass, per model", labels=["model"]
        )
        depth = GaugeMetricFamily("inference_queue_depth", "Requests waiting", labels=["model"])
        inflight = GaugeMetricFamily(
            "inference_batches_inflight", "Batches running", labels=["model"]
        )
        rejected = CounterMetricFamily(
            "inference_queue_rejected", "Requests refused BUSY at max_queue", labels=["model"]
        )
        timed_out = CounterMetricFamily(
            "inference_queue_timed_out", "Requests failed DEADLINE_EXCEEDED", labels=["model"]
        )
        failed = CounterMetricFamily(
            "inference_batches_failed", "Batches whose forward pass raised", labels=["model"]
        )
        for status in statuses:
            histogram = BucketHistogram(BATCH_SIZE_BUCKETS)
            total = 0
            for size, count in status.batch_sizes.items():
                histogram.counts[_bucket_index(BATCH_SIZE_BUCKETS, size)] += count
                total += size * count
            histogram.sum = float(total)
            sizes.add_metric([status.model], histogram.cumulative(), histogram.sum)
            depth.add_metric([status.model], status.depth)
            inflight.add_metric([status.model], status.inflight_batches)
            rejected.add_metric([status.model], status.rejected)
            timed_out.add_metric([status.model], status.timed_out)
            failed.add_metric([status.model], status.batches_failed)
        yield from (sizes, depth, inflight, rejected, timed_out, failed)
        yield from self._admission(s)

    def _admission(self, s: MetricSources) -> Iterable[Metric]:
        board = s.facade.admission
        shed = s.factory.stats.shed_by_delay
        refused = CounterMetricFamily(
            "inference_admission_refused",
            "Requests refused BUSY because the predicted queue wait exceeded max_queue_delay_ms",
            labels=["model"],
        )
        predicted = GaugeMetricFamily(
            "inference_admission_predicted_wait_seconds",
            "Backlog (queued + running) / measured service rate, per model",
            labels=["model"],
        )
        for name, admission in sorted(board.models.items()):
            refused.add_metric([name], shed.get(name, 0))
            predicted.add_metric([name], admission.predicted_wait_s())
        lag = GaugeMetricFamily(
            "inference_reactor_lag_seconds",
            "How late the admission's 5 ms probe timer last fired (reactor saturation)",
        )
        lag.add_metric([], board.lag_s)
        yield from (refused, predicted, lag)

    def _connections(self, s: MetricSources) -> Iterable[Metric]:
        stats = s.factory.stats
        open_now = GaugeMetricFamily("inference_connections_open", "Open TCP client connections")
        open_now.add_metric([], len(s.factory.connections))
        yield open_now
        closed = CounterMetricFamily(
            "inference_connections_closed",
            "Connections the server closed or refused, by reason",
            labels=["reason"],
        )
        for reason, count in (
            ("refused_max_connections", stats.refused),
            ("idle_timeout", stats.timed_out_idle),
            ("frame_timeout", stats.timed_out_frame),
            ("auth_timeout", stats.timed_out_auth),
            ("tls_handshake_timeout", stats.timed_out_handshake),
            ("slow_reader", stats.aborted_slow_reader),
            ("close_timeout", stats.aborted_close_timeout),
            ("frame_too_large", stats.closed_frame_too_large),
            ("drained", stats.closed_draining),
            ("drain_timeout", stats.aborted_draining),
            ("truncated_by_client", stats.truncated_disconnects),
        ):
            closed.add_metric([reason], count)
        yield closed
        opened = CounterMetricFamily("inference_connections_accepted", "Connections accepted")
        opened.add_metric([], stats.opened)
        yield opened
        discarded = CounterMetricFamily(
            "inference_bytes_discarded_after_close",
            "Bytes a client sent after the server decided to close its connection (not handled)",
        )
        discarded.add_metric([], stats.discarded_after_close)
        yield discarded

    def _models(self, s: MetricSources) -> Iterable[Metric]:
        cache = s.facade.get_cache_info()
        for name, doc, value in (
            ("inference_model_cache_hits", "Model loader cache hits", cache.hits),
            ("inference_model_cache_misses", "Model loader cache misses (loads)", cache.misses),
            (
                "inference_model_cache_evictions",
                "Models evicted by the LRU loader",
                cache.evictions,
            ),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
        loaded = GaugeMetricFamily("inference_models_loaded", "Models loaded now")
        loaded.add_metric([], cache.loaded)
        yield loaded
        load_time = GaugeMetricFamily(
            "inference_model_load_seconds",
            "Time the last load of each model version took",
            labels=["model", "version"],
        )
        for key, seconds in sorted(cache.load_seconds.items()):
            model, _, version = key.partition("@")
            load_time.add_metric([model, version], seconds)
        yield load_time
        answered = CounterMetricFamily(
            "inference_version_requests",
            "Inference requests answered OK, per model version (A/B and canary splits)",
            labels=["model", "version"],
        )
        for model, version, count in s.facade.version_answers():
            answered.add_metric([model, version], count)
        yield answered

    def _udp(self, s: MetricSources) -> Iterable[Metric]:
        b = s.broadcaster
        for name, doc, value in (
            ("inference_udp_datagrams_sent", "UDP datagrams sent", b.datagrams_sent if b else 0),
            (
                "inference_udp_datagrams_dropped",
                "UDP datagrams dropped (socket full)",
                b.datagrams_dropped if b else 0,
            ),
            (
                "inference_udp_results_chunked",
                "Results split into several datagrams",
                b.results_chunked if b else 0,
            ),
            (
                "inference_udp_leases_expired",
                "Subscriptions that expired unrenewed",
                b.leases_expired if b else 0,
            ),
        ):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], value)
            yield family
        targets = GaugeMetricFamily("inference_udp_targets", "UDP targets receiving results")
        targets.add_metric([], len(b.targets()) if b else 0)
        yield targets

    def _streams(self, s: MetricSources) -> Iterable[Metric]:
        models = sorted(s.facade.streams.models.items())
        yield _histogram(
            "inference_stream_tick_duration_seconds",
            "Wall time of each stream tick's step (all its characters), per model",
            "model",
            [(name, ms.step_seconds) for name, ms in models],
        )
        yield _histogram(
            "inference_stream_characters_per_tick",
            "Characters stepped in one tick, per model",
            "model",
            [(name, ms.characters) for name, ms in models],
        )
        open_now = GaugeMetricFamily(
            "inference_streams_open", "Character streams open now", labels=["model"]
        )
        for name, ms in models:
            open_now.add_metric([name], ms.open_streams)
        yield open_now
        for metric, doc, attribute in (
            ("inference_stream_ticks", "Ticks that stepped characters", "ticks_stepped"),
            (
                "inference_stream_ticks_missed",
                "Ticks skipped: the previous step was still running or the clock fell behind",
                "ticks_missed",
            ),
            (
                "inference_stream_observations",
                "Observations taken from Tick packets",
                "observations",
            ),
            (
                "inference_stream_observations_coalesced",
                "Observations replaced by a newer one before a tick stepped them (latest wins)",
                "coalesced",
            ),
            ("inference_stream_steps_failed", "Stream steps whose model raised", "steps_failed"),
            (
                "inference_streams_closed_idle",
                "Streams the server closed after streams.idle_timeout_s without an observation",
                "closed_idle",
            ),
        ):
            family = CounterMetricFamily(metric, doc, labels=["model"])
            for name, ms in models:
                family.add_metric([name], getattr(ms, attribute))
            yield family
        b = s.broadcaster
        snapshots = CounterMetricFamily(
            "inference_udp_snapshots", "Stream tick snapshots sent (per target, all chunks)"
        )
        snapshots.add_metric([], b.snapshots_sent if b else 0)
        yield snapshots
        too_wide = CounterMetricFamily(
            "inference_udp_snapshot_rows_dropped",
            "Stream characters left out of snapshots: their row fits no datagram",
        )
        too_wide.add_metric([], b.snapshot_rows_dropped if b else 0)
        yield too_wide

    def _result_cache(self, s: MetricSources) -> Iterable[Metric]:
        cache = s.facade.result_cache
        if cache is None:
            return
        hits = CounterMetricFamily(
            "inference_result_cache_hits",
            "Requests answered from the result cache, per model and tier (local LRU or redis)",
            labels=["model", "tier"],
        )
        misses = CounterMetricFamily(
            "inference_result_cache_misses",
            "Requests the result cache did not hold (run on the model), per model",
            labels=["model"],
        )
        bypassed = CounterMetricFamily(
            "inference_result_cache_bypassed",
            "Requests sent with cache BYPASS, per model",
            labels=["model"],
        )
        evictions = CounterMetricFamily(
            "inference_result_cache_evictions",
            "Results evicted from the in-process LRU for room (cache.max_entries), per model",
            labels=["model"],
        )
        expired = CounterMetricFamily(
            "inference_result_cache_expired",
            "Results found past their TTL in the in-process LRU, per model",
            labels=["model"],
        )
        for model, stats in sorted(cache.stats.items()):
            for tier in ("local", "redis"):
                hits.add_metric([model, tier], stats.hits[tier])
            misses.add_metric([model], stats.misses)
            bypassed.add_metric([model], stats.bypassed)
            evictions.add_metric([model], cache.lru.evictions[model])
            expired.add_metric([model], cache.lru.expired[model])
        entries = GaugeMetricFamily(
            "inference_result_cache_entries", "Results held by the in-process LRU now"
        )
        entries.add_metric([], len(cache.lru))
        yield from (hits, misses, bypassed, evictions, expired, entries)
        remote = cache.remote
        if remote is not None:
            failures = CounterMetricFamily(
                "inference_result_cache_redis_failures",
                "Redis lookups or stores that failed or were skipped (the request ran on the "
                "model), per model and reason",
                labels=["model", "reason"],
            )
            for (model, reason), count in sorted(remote.failures.items()):
                failures.add_metric([model, reason], count)
            yield failures


def _bucket_index(bounds: tuple[float, ...], value: float) -> int:
    for i, bound in enumerate(bounds):
        if value <= bound:
            return i
    return len(bounds)


def make_registry(sources: MetricSources) -> CollectorRegistry:
    """A registry with the server's metrics and the process's RSS and CPU."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(ServerCollector(sources))
    ProcessCollector(registry=registry)
    return registry


__all__ = ["MetricSources", "ServerCollector", "format_bound", "make_registry"]
