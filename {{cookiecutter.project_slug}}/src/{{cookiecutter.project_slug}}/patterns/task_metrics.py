"""Prometheus metrics for Celery workers: task outcomes, durations, queue wait and depth.

Guarantees: ``celery_tasks_total{task,outcome}`` (succeeded, duplicate, retried, failed),
``celery_task_duration_seconds{task}``, ``celery_task_cpu_seconds_total{task}`` (the bill: CPU
the runs burnt), ``s3_requests_total{operation}`` (when the storage reports its calls here),
``celery_task_queue_wait_seconds{task}`` (publish to start, from the ``published_at`` header)
and ``celery_queue_depth{queue}`` read from the broker at scrape time. Prefork children each
write their own samples to files in ``PROMETHEUS_MULTIPROC_DIR`` and the parent serves the sum,
so counts survive a child being replaced (``max_tasks_per_child``, a crash) and nothing is
counted twice.

Needs: prometheus-client; :func:`enable_multiprocess` before any metric is created (the
worker command calls it first), and :func:`serve_metrics` in the parent process.

:func:`serve_publish_metrics` is beat's: ``celery_tasks_published_total{task}`` (every message
the process sends) beside the process's own CPU and memory.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

from celery.signals import before_task_publish
from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    start_http_server,
    values,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector

DURATION_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0)


def enable_multiprocess(directory: Path) -> None:
    """Switch this process (and the children it forks) to file-backed metric values."""
    shutil.rmtree(directory, ignore_errors=True)  # stale files would resurrect old counts
    directory.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(directory)
    values.ValueClass = values.get_value_class()  # type: ignore[no-untyped-call]


class TaskMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.outcomes = Counter(
            "celery_tasks_total",
            "Task deliveries by task name and outcome.",
            ["task", "outcome"],
            registry=registry,
        )
        self.duration = Histogram(
            "celery_task_duration_seconds",
            "Time a task delivery spent running, by task name.",
            ["task"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )
        self.cpu_seconds = Counter(
            "celery_task_cpu_seconds",
            "CPU seconds task deliveries used, by task name.",
            ["task"],
            registry=registry,
        )
        self.s3_requests = Counter(
            "s3_requests",
            "S3 API calls this worker made, by operation.",
            ["operation"],
            registry=registry,
        )
        self.queue_wait = Histogram(
            "celery_task_queue_wait_seconds",
            "Time from publish to the start of the run, by task name.",
            ["task"],
            buckets=DURATION_BUCKETS,
            registry=registry,
        )

    def observe(
        self,
        task: str,
        outcome: str,
        duration: float,
        published_at: object,
        *,
        cpu_seconds: float = 0.0,
    ) -> None:
        self.outcomes.labels(task, outcome).inc()
        self.duration.labels(task).observe(duration)
        self.cpu_seconds.labels(task).inc(max(cpu_seconds, 0.0))
        if isinstance(published_at, (int, float)):
            waited = time.time() - duration - published_at
            self.queue_wait.labels(task).observe(max(waited, 0.0))

    def s3_request(self, operation: str) -> None:
        self.s3_requests.labels(operation).inc()

    def process_exited(self, pid: int) -> None:
        if "PROMETHEUS_MULTIPROC_DIR" in os.environ:
            mark_process_dead(pid)  # type: ignore[no-untyped-call]


class QueueDepthCollector(Collector):
    """Reads each queue's length from the broker when Prometheus scrapes."""

    def __init__(self, depths: Callable[[], Mapping[str, int]]) -> None:
        self._depths = depths

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "celery_queue_depth", "Messages waiting in the broker queue.", labels=["queue"]
        )
        try:
            depths = self._depths()
        except Exception:  # a broker outage must not break the whole scrape
            depths = {}
        for queue, depth in depths.items():
            family.add_metric([queue], float(depth))
        yield family


def serve_metrics(host: str, port: int, depths: Callable[[], Mapping[str, int]]) -> None:
    """Serve the sum over every worker process, plus queue depth, on ``host:port``."""
    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(QueueDepthCollector(depths))
    start_http_server(port, addr=host, registry=registry)


def serve_publish_metrics(host: str, port: int, registry: CollectorRegistry | None = None) -> None:
    """Count every task message this process publishes; serve it (and process metrics)."""
    published = Counter(
        "celery_tasks_published_total",
        "Task messages this process sent, by task name.",
        ["task"],
        registry=registry,
    )

    def count(sender: Any = None, **_: Any) -> None:
        published.labels(str(sender)).inc()

    before_task_publish.connect(count, weak=False)
    start_http_server(port, addr=host, registry=registry or REGISTRY)
