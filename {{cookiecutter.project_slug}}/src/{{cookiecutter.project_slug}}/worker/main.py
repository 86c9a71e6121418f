"""Start a worker or a beat process (``{{ cookiecutter.project_slug }} worker`` / ``beat``).

Both build the Celery app from the same settings as the API, log through the same structlog
setup, and stamp the messages they send (``published_at`` / ``published_by`` headers).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from celery import Celery
from celery.signals import (
    beat_init,
    setup_logging,
    worker_init,
    worker_process_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
)

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.logging import configure_logging
from {{ cookiecutter.project_slug }}.patterns.reliable_tasks import (
    JobRuntime,
    install_job_runtime,
    stamp_published_messages,
)
from {{ cookiecutter.project_slug }}.patterns.task_metrics import (
    TaskMetrics,
    enable_multiprocess,
    serve_metrics,
    serve_publish_metrics,
)
from {{ cookiecutter.project_slug }}.patterns.tracing import configure_tracing, shutdown_tracing
from {{ cookiecutter.project_slug }}.worker.celery_app import create_celery
from {{ cookiecutter.project_slug }}.worker.context import WorkerContextFactory
from {{ cookiecutter.project_slug }}.worker.heartbeat import Heartbeat


def _use_our_logging(settings: Settings) -> None:
    # Connecting a receiver tells Celery not to configure logging itself.
    setup_logging.connect(lambda **_: configure_logging(settings), weak=False)


def create_worker_app(settings: Settings, *, metrics: TaskMetrics | None = None) -> Celery:
    """The Celery app with the async runtime installed: what a worker process runs."""
    app = create_celery(settings)
    factory = WorkerContextFactory(
        settings, app, on_s3_request=metrics.s3_request if metrics is not None else None
    )
    install_job_runtime(
        app,
        JobRuntime(
            open_resources=factory.open,
            close_resources=factory.close,
            dead_letter=factory.dead_letter,
            max_retries=settings.job_max_retries,
            backoff_base=settings.job_retry_backoff_seconds,
            backoff_max=settings.job_retry_backoff_max_seconds,
            soft_time_limit=settings.job_soft_time_limit,
            metrics=metrics,
        ),
    )
    return app


def queue_depths(app: Celery, queues: list[str]) -> dict[str, int]:
    depths: dict[str, int] = {}
    with app.connection_for_read() as connection:
        channel: Any = connection.default_channel
        for queue in queues:
            try:
                _, count, _ = channel.queue_declare(queue=queue, passive=True)
            except connection.channel_errors:
                count = 0  # not declared yet: nobody has sent to it
                channel = connection.channel()
            depths[queue] = int(count)
    return depths


def run_worker(extra_args: list[str]) -> int:
    settings = Settings()
    # In each prefork child, before the job runtime opens its engine (connected first).
    tracing = settings.tracing_for("worker")
    worker_process_init.connect(lambda **_: configure_tracing(*tracing), weak=False)
    worker_process_shutdown.connect(lambda **_: shutdown_tracing(), weak=False)
    metrics = None
    if settings.worker_metrics_port:
        # Before any metric exists: prefork children write samples the parent can sum.
        metrics_dir = Path(tempfile.gettempdir()) / f"celery-metrics-{os.getpid()}"
        enable_multiprocess(metrics_dir)
        metrics = TaskMetrics()
    app = create_worker_app(settings, metrics=metrics)
    app.set_current()
    _use_our_logging(settings)
    stamp_published_messages()

    if metrics is not None:

        def start_metrics_server(**_: Any) -> None:
            serve_metrics(
                settings.worker_metrics_host,
                settings.worker_metrics_port,
                lambda: queue_depths(app, [settings.celery_queue]),
            )

        worker_init.connect(start_metrics_server, weak=False)

    # Healthy (for the container's health check) once connected and consuming.
    heartbeat = Heartbeat("worker")
    worker_ready.connect(lambda **_: heartbeat.start(), weak=False)
    worker_shutdown.connect(lambda **_: heartbeat.stop(), weak=False)

    app.worker_main(worker_argv(settings, extra_args))
    return 0


def worker_argv(settings: Settings, extra_args: list[str]) -> list[str]:
    """The worker's command line. Unless told otherwise, each worker names itself after its
    PID: Celery's default node name (``celery@<host>``) is the same for every worker on a
    machine, and on RabbitMQ the node's control queue (``<node>.celery.pidbox``) is exclusive,
    so a second worker on the same broker dies at start with RESOURCE_LOCKED."""
    concurrency = (
        []
        if any(a.startswith(("-c", "--concurrency")) for a in extra_args)
        else [f"--concurrency={settings.worker_concurrency}"]
    )
    named = any(a.startswith(("-n", "--hostname")) for a in extra_args)
    hostname = [] if named else [f"--hostname={settings.celery_queue}-{os.getpid()}@%h"]
    return [
        "worker",
        "--pool=prefork",
        "--loglevel=INFO",
        *concurrency,
        *hostname,
        # Gossip and mingle chat with every other worker on the broker at start-up and
        # afterwards; nothing here needs them.
        "--without-gossip",
        "--without-mingle",
        *extra_args,
    ]


def run_beat(extra_args: list[str]) -> int:
    settings = Settings()
    configure_tracing(*settings.tracing_for("beat"))
    app = create_celery(settings)
    app.set_current()
    _use_our_logging(settings)
    stamp_published_messages()
    # Connected before RedBeat's own beat_init receiver, which blocks a standby beat until it
    # gets the lock: a standby is healthy, it is waiting on purpose.
    heartbeat = Heartbeat("beat")
    beat_init.connect(lambda **_: heartbeat.start(), weak=False)
    if settings.beat_metrics_port:
        serve_publish_metrics(settings.worker_metrics_host, settings.beat_metrics_port)
    try:
        app.start(["beat", "--loglevel=INFO", *extra_args])
    finally:
        heartbeat.stop()
    return 0
