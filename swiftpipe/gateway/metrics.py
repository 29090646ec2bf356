"""Prometheus metrics of the gateway (`GET /metrics`), per version so a canary can be compared."""

from __future__ import annotations

from typing import Any, Iterable

from swiftpipe.task.flags import TIMEOUT, UPSTREAM_ERROR


class _Process:
    """Which process answered the scrape (`serve --workers N`: each worker keeps its own counters)."""

    def collect(self) -> Iterable[Any]:
        import os

        from prometheus_client.core import GaugeMetricFamily

        yield GaugeMetricFamily("swiftpipe_gateway_pid", "Process id of the gateway worker that answered this "
                                "scrape (with --workers N, each worker counts its own requests)", value=os.getpid())


class Metrics:
    def __init__(self) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("swiftpipe_requests", "Requests answered, by version, endpoint and HTTP status",
                                ["version", "endpoint", "status"], registry=self.registry)
        self.latency = Histogram("swiftpipe_request_latency_seconds", "Time from request to response (streams: to the end)",
                                 ["version", "endpoint"], registry=self.registry,
                                 buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
        self.flags = Counter("swiftpipe_flags", "Flagged answers, by version and flag", ["version", "flag"],
                             registry=self.registry)
        self.upstream_errors = Counter("swiftpipe_upstream_errors", "Upstream calls without a usable answer",
                                       ["version", "kind"], registry=self.registry)
        self.weight = Gauge("swiftpipe_version_weight_percent", "Share of unpinned traffic", ["version"],
                            registry=self.registry)
        self.rejected = Counter("swiftpipe_rejected", "Requests refused before routing (401, 403, 408, 413, 429)",
                                ["status"], registry=self.registry)
        self.refused_connections = Counter("swiftpipe_refused_connections",
                                           "Connections closed by the gateway's limits, by reason (too many, idle "
                                           "evicted, headers too large, headers too slow)", ["reason"],
                                           registry=self.registry)
        self.log_failures = Counter("swiftpipe_request_log_failures",
                                    "Requests refused (503) or failed (500) because the request log could not be "
                                    "written", registry=self.registry)
        self.registry.register(_Process())
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._flag_children: dict[tuple[str, str], Any] = {}  # (flag names are the schema's: a bounded set)

    def observe(self, version: str, endpoint: str, status: int, latency_s: float, flags: Iterable[str]) -> None:
        children = self._children.get((version, endpoint, status))
        if children is None:  # prometheus' labels() hashes and locks on every call: look each pair up once
            children = self._children[(version, endpoint, status)] = (
                self.requests.labels(version, endpoint, str(status)), self.latency.labels(version, endpoint))
        children[0].inc()
        children[1].observe(latency_s)
        for flag in flags:
            counter = self._flag_children.get((version, flag))
            if counter is None:
                counter = self._flag_children[(version, flag)] = self.flags.labels(version, flag)
            counter.inc()
            if flag in (UPSTREAM_ERROR, TIMEOUT):
                self.upstream_errors.labels(version, flag).inc()

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST
