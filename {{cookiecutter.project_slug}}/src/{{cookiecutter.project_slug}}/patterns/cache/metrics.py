"""The cache's Prometheus metrics (one set per process, on the app's registry)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "cache_requests_total",
            "Application cache lookups by region and outcome "
            "(hit, stale, coalesced, miss, bypass).",
            ["region", "outcome"],
            registry=registry,
        )
        self.loads = Counter(
            "cache_loads_total",
            "Calls to a region's loader (the database reads the cache did not save).",
            ["region"],
            registry=registry,
        )
        self.errors = Counter(
            "cache_errors_total",
            "Cache operations that failed (Redis down or slow, undecodable entry).",
            ["operation"],
            registry=registry,
        )
        self.busy_retries = Counter(
            "cache_busy_retries_total",
            "Redis calls that timed out while this process's event loop was overloaded, and "
            "were asked again instead of counting against Redis.",
            registry=registry,
        )
        self.circuit_open = Gauge(
            "cache_circuit_open",
            "1 while the cache's circuit breaker skips Redis, else 0.",
            registry=registry,
        )
