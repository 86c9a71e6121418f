"""The Celery app: one factory for the API (which only publishes) and the worker and beat.

Every reliability setting is here, next to the reason for it. The broker is whatever
CELERY_BROKER_URL names (Redis by default, RabbitMQ works the same); only JSON travels.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.worker.schedule import beat_schedule

# Modules whose @job tasks the worker registers.
TASK_MODULES = [
    "{{ cookiecutter.project_slug }}.jobs.tasks",
    "{{ cookiecutter.project_slug }}.notifications.tasks",
    "{{ cookiecutter.project_slug }}.orders.tasks",
    "{{ cookiecutter.project_slug }}.products.tasks",
    "{{ cookiecutter.project_slug }}.reports.tasks",
    "{{ cookiecutter.project_slug }}.uploads.tasks",
]


def broker_transport_options(settings: Settings) -> dict[str, Any]:
    if not settings.broker_is_redis:
        # RabbitMQ: publisher confirms, so a publish returns only once the broker has it.
        # (A dead consumer's unacked messages are requeued as soon as its connection drops.)
        return {"confirm_publish": True}
    return {
        # Redis has no acks: a delivered message sits in an "unacked" hash and goes back to
        # the queue when nobody acknowledged it within this long (a worker died mid-task).
        "visibility_timeout": settings.celery_visibility_timeout,
        # Sweep for such messages every few seconds (kombu's default is every ~100s).
        "unacked_restore_interval": max(1, min(10, settings.celery_visibility_timeout // 10)),
        "unacked_restore_throttle": 1,
        "global_keyprefix": settings.celery_broker_key_prefix,
        # A broker that vanished without closing the socket must not hang a publish.
        "socket_timeout": 10,
        "socket_connect_timeout": 5,
    }


def warm_up(app: Celery) -> None:
    """Do at start-up what the first publish would otherwise do inside a request: import
    Celery's sending machinery, connect to the broker and declare the queue (~0.5 s)."""
    app.finalize(auto=True)
    _ = app.amqp.send_task_message  # a cached property that imports on first use
    with app.producer_or_acquire() as producer:
        producer.connection.ensure_connection(max_retries=1)
        producer.maybe_declare(app.amqp.queues[app.conf.task_default_queue])


def create_celery(settings: Settings) -> Celery:
    app = Celery(
        settings.jwt_issuer,
        broker=settings.broker_url,
        include=TASK_MODULES,
        # The API keeps several apps per process in tests; the worker sets its own current.
        set_as_current=False,
    )
    app.conf.update(
        broker_transport_options=broker_transport_options(settings),
        broker_connection_retry_on_startup=True,
        # A lost broker connection is re-established however long the outage lasts (Celery
        # gives up after 100 attempts by default, and the worker then exits): the worker
        # rides out a Redis or RabbitMQ restart and consumes again once it is back.
        broker_connection_retry=True,
        broker_connection_max_retries=None,
        task_default_queue=settings.celery_queue,
        # JSON only: pickle would let anyone who can write to the broker run code here.
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # Job state lives in Postgres (the jobs table), not in a result backend.
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        # Late ack: the message is acknowledged after the task finished, so a worker killed
        # mid-task leaves it with the broker, which hands it to another worker.
        task_acks_late=True,
        # ... and when the pool child running it is killed (OOM, kill -9), requeue it
        # instead of marking it failed.
        task_reject_on_worker_lost=True,
        # A task that raised is finished: our own code already retried or dead-lettered it.
        task_acks_on_failure_or_timeout=True,
        # Each process reserves one message at a time: with late ack, a prefetched message
        # would wait behind a long task (and be redelivered if this worker dies with it).
        worker_prefetch_multiplier=1,
        # Backstop for code that blocks the event loop; the soft limit is an asyncio
        # deadline inside the task (see patterns/reliable_tasks.py).
        task_time_limit=settings.job_hard_time_limit,
        # A lost broker connection means every reserved message will be redelivered: stop
        # running them here rather than run them twice.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 3,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 2.0,
        },
        # Our structlog setup owns the log output (JSON lines with request ids).
        worker_hijack_root_logger=False,
        worker_redirect_stdouts=False,
        enable_utc=True,
        timezone="UTC",
        # Beat: RedBeat keeps the schedule and a lock in Redis (even with RabbitMQ as the
        # broker), so a second beat process waits for the lock instead of double-firing.
        beat_schedule=beat_schedule(settings),
        # RedBeat that outlives a Redis outage (worker/beat_scheduler.py).
        beat_scheduler="{{ cookiecutter.project_slug }}.worker.beat_scheduler:ResilientRedBeatScheduler",
        beat_max_loop_interval=settings.beat_max_interval,
        redbeat_redis_url=settings.redis_url,
        redbeat_key_prefix=settings.beat_key_prefix,
        redbeat_lock_timeout=settings.beat_lock_timeout,
        redbeat_redis_options={
            "socket_timeout": 5,
            "socket_connect_timeout": 5,
            # RedBeat's own retries block a tick; keep them short, the scheduler backs off.
            "retry_period": 1,
        },
    )
    return app
