"""Celery tasks written as ``async def``, that retry what is transient and dead-letter the rest.

The failures it prevents:
- a network blip (Postgres failover, a Redis timeout) turning into a lost job: transient
  errors are retried with exponential backoff and jitter, so a thousand jobs that failed
  together do not come back together;
- a bad job retried forever, or failing silently: anything else (bad input, a bug), and a
  transient error after the last retry, lands in a dead-letter record via ``dead_letter``;
- a second copy of the data layer for workers: tasks get the *same* async engine, sessions
  and repositories as the API, on one event loop per worker process, opened when the
  process starts (or on first use after a fork) and closed when it stops;
- losing the thread of a request: the publisher's ``request_id`` header is bound into
  structlog's context for every line the task logs, and into jobs it enqueues in turn.

Guarantees: a task's coroutine runs under ``soft_time_limit`` (an asyncio deadline: raising a
signal inside a running event loop would corrupt it); transient means
:func:`is_transient`; each delivery is counted in ``celery_tasks_total{task,outcome}`` and
timed in ``celery_task_duration_seconds`` when metrics are installed. A task whose worker
process is killed is requeued by Celery itself (``acks_late`` + ``reject_on_worker_lost``,
set in the app's config); one killed by the hard time limit is dead-lettered from the
parent process.

Needs: celery, structlog; for classification, SQLAlchemy, asyncpg and redis exceptions.
Wire it with :func:`install_job_runtime` and declare tasks with :func:`job`.
"""

from __future__ import annotations

import asyncio
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Concatenate, Generic, ParamSpec, TypeVar, cast
from weakref import WeakKeyDictionary

import asyncpg
import redis.exceptions
import sqlalchemy.exc
import structlog
from celery import Celery, Task, shared_task
from celery.exceptions import Ignore, Reject, Retry, SoftTimeLimitExceeded, TimeLimitExceeded
from celery.signals import (
    before_task_publish,
    task_failure,
    worker_process_init,
    worker_process_shutdown,
    worker_shutdown,
)

from {{ cookiecutter.project_slug }}.patterns.after_commit import AfterCommitJobs
from {{ cookiecutter.project_slug }}.patterns.task_metrics import TaskMetrics

log = structlog.get_logger(__name__)

R = TypeVar("R")
T = TypeVar("T")
P = ParamSpec("P")


class TransientError(Exception):
    """Raise from a task to ask for a retry (say, a provider answered 503)."""


# Errors that say "the other side is briefly unavailable", never "this input is wrong".
_TRANSIENT_TYPES: tuple[type[BaseException], ...] = (
    TransientError,
    ConnectionError,
    TimeoutError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    sqlalchemy.exc.TimeoutError,  # no pooled connection in time
    asyncpg.PostgresConnectionError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    asyncpg.SerializationError,  # lost a serialisation race: the retry will win
    asyncpg.DeadlockDetectedError,
    asyncpg.InterfaceError,
)


def is_transient(exc: BaseException) -> bool:
    """True when retrying later may succeed: looks through SQLAlchemy's wrapping and causes."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, SoftTimeLimitExceeded):
            return False
        if isinstance(current, _TRANSIENT_TYPES):
            return True
        if isinstance(current, sqlalchemy.exc.DBAPIError):
            if current.connection_invalidated:
                return True
            orig = current.orig
            if isinstance(orig, BaseException) and id(orig) not in seen:
                current = orig
                continue
        current = current.__cause__ or current.__context__
    return False


def backoff_delay(
    retries: int, base: float, cap: float, rand: Callable[[], float] = random.random
) -> float:
    """Seconds before retry number ``retries + 1``: exponential, capped, with equal jitter.

    Half the delay is fixed and half random: retries still grow visibly (1x, 2x, 4x ...),
    while a burst of jobs that failed together spreads out instead of retrying in step.
    """
    ceiling = min(cap, base * (2.0**retries))
    return ceiling / 2 + rand() * ceiling / 2


@dataclass(frozen=True, slots=True)
class DeadLetterRecord:
    task_id: str
    task_name: str
    args: list[Any]
    kwargs: dict[str, Any]
    request_id: str | None
    error_type: str
    error: str
    attempts: int


@dataclass
class JobRuntime(Generic[R]):
    """One event loop and one set of resources (engine, clients) per worker process."""

    open_resources: Callable[[], Awaitable[R]]
    close_resources: Callable[[R], Awaitable[None]]
    dead_letter: Callable[[R, DeadLetterRecord], Awaitable[None]]
    max_retries: int = 5
    backoff_base: float = 2.0
    backoff_max: float = 300.0
    soft_time_limit: float = 300.0
    metrics: TaskMetrics | None = None
    _loop: asyncio.AbstractEventLoop | None = field(default=None, init=False, repr=False)
    _resources: R | None = field(default=None, init=False, repr=False)
    _pid: int | None = field(default=None, init=False, repr=False)

    def start(self) -> None:
        # After a fork the parent's loop and connections are not ours: drop them without
        # closing (closing would shut the parent's sockets), then open our own.
        if self._pid != os.getpid():
            self._loop = None
            self._resources = None
        if self._loop is not None:
            return
        self._loop = asyncio.new_event_loop()
        self._pid = os.getpid()
        self._resources = self._loop.run_until_complete(self.open_resources())
        log.info("worker.process_started", pid=self._pid)

    def stop(self) -> None:
        if self._loop is None or self._pid != os.getpid():
            return
        loop, resources = self._loop, self._resources
        self._loop, self._resources = None, None
        try:
            if resources is not None:
                loop.run_until_complete(self.close_resources(resources))
        finally:
            loop.close()

    def run(self, fn: Callable[[R], Awaitable[T]]) -> T:
        self.start()
        assert self._loop is not None
        return self._loop.run_until_complete(self._call(fn))

    async def _call(self, fn: Callable[[R], Awaitable[T]]) -> T:
        resources = cast("R", self._resources)
        deadline = asyncio.timeout(self.soft_time_limit)
        try:
            async with deadline:
                return await fn(resources)
        except TimeoutError:
            # Only our own deadline is a (non-transient) time-limit failure; a timeout
            # raised by a client inside the task stays transient and is retried.
            if deadline.expired():
                raise SoftTimeLimitExceeded(f"over {self.soft_time_limit}s") from None
            raise


_runtimes: WeakKeyDictionary[Celery, JobRuntime[Any]] = WeakKeyDictionary()


def runtime_of(app: Celery) -> JobRuntime[Any]:
    try:
        return _runtimes[app]
    except KeyError:
        raise RuntimeError("install_job_runtime(app, ...) was not called") from None


class ReliableTask(Task):  # type: ignore[type-arg]
    """Base class of every :func:`job` task: retries, dead letters, logs and metrics."""

    # Per-task override of the runtime's retry budget (None: the runtime's).
    job_max_retries: int | None = None

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        runtime = runtime_of(self.app)
        request = self.request
        request_id = request.get("request_id")
        attempt = request.retries + 1
        structlog.contextvars.clear_contextvars()
        structlog.contextvars.bind_contextvars(
            request_id=request_id, task=self.name, task_id=request.id
        )
        published_at = request.get("published_at")
        started = time.perf_counter()
        # A prefork child runs one task at a time: its CPU time over the run is the task's.
        cpu_started = time.process_time()
        outcome = "failed"
        try:
            result = super().__call__(*args, **kwargs)
            outcome = result if result in ("duplicate", "skipped") else "succeeded"
            return result
        except (Retry, Ignore, Reject):
            outcome = "retried"
            raise
        except Exception as exc:
            max_retries = (
                self.job_max_retries if self.job_max_retries is not None else runtime.max_retries
            )
            if is_transient(exc) and request.retries < max_retries:
                outcome = "retried"
                delay = backoff_delay(request.retries, runtime.backoff_base, runtime.backoff_max)
                log.warning(
                    "task.retrying",
                    attempt=attempt,
                    max_retries=max_retries,
                    countdown_s=round(delay, 3),
                    error_type=type(exc).__name__,
                    error=str(exc)[:500],
                )
                raise self.retry(exc=exc, countdown=delay, max_retries=max_retries) from exc
            log.error(
                "task.failed",
                attempt=attempt,
                transient=is_transient(exc),
                error_type=type(exc).__name__,
                error=str(exc)[:500],
            )
            record = DeadLetterRecord(
                task_id=str(request.id),
                task_name=self.name,
                args=list(args),
                kwargs=dict(kwargs),
                request_id=request_id,
                error_type=type(exc).__name__,
                error=str(exc)[:4000],
                attempts=attempt,
            )
            _record_dead_letter(runtime, record)
            raise
        finally:
            duration = time.perf_counter() - started
            if runtime.metrics is not None:
                cpu = time.process_time() - cpu_started
                runtime.metrics.observe(self.name, outcome, duration, published_at, cpu_seconds=cpu)
            log.info(
                "task.finished",
                outcome=outcome,
                attempt=attempt,
                duration_ms=round(duration * 1000, 2),
                queued_ms=_queued_ms(published_at),
                published_at=published_at,
                published_by=request.get("published_by"),
            )
            structlog.contextvars.clear_contextvars()


def _queued_ms(published_at: object) -> float | None:
    if not isinstance(published_at, (int, float)):
        return None
    return round((time.time() - published_at) * 1000, 2)


def _record_dead_letter(runtime: JobRuntime[Any], record: DeadLetterRecord) -> None:
    try:
        runtime.run(lambda resources: runtime.dead_letter(resources, record))
    except Exception:
        # The message is acknowledged after this; the log line is the last record of it.
        log.exception("task.dead_letter_failed", record=record)
    else:
        log.error("task.dead_lettered", attempts=record.attempts, error_type=record.error_type)


class JobHandle(Generic[P]):
    """A declared job: enqueue it through a unit of work's :class:`AfterCommitJobs`."""

    def __init__(self, name: str, task: Task) -> None:  # type: ignore[type-arg]
        self.name = name
        self.task = task

    def enqueue(self, jobs: AfterCommitJobs, *args: P.args, **kwargs: P.kwargs) -> str:
        if args:
            raise TypeError(f"{self.name}: pass job arguments by keyword (JSON values)")
        return jobs.enqueue(self.name, **kwargs)


def job(
    name: str, **options: Any
) -> Callable[[Callable[Concatenate[Any, P], Awaitable[Any]]], JobHandle[P]]:
    """Declare ``async def fn(resources, **kwargs)`` as the Celery task ``name``.

    The function receives the worker process's resources (engine, sessionmaker, ...) and
    keyword arguments that are JSON values. Return ``"duplicate"`` when an idempotency claim
    showed the work was already done (it is counted apart from real successes).
    """

    def decorate(fn: Callable[Concatenate[Any, P], Awaitable[Any]]) -> JobHandle[P]:
        call = cast("Callable[..., Awaitable[Any]]", fn)

        def run(self: ReliableTask, **kwargs: Any) -> Any:
            return runtime_of(self.app).run(lambda resources: call(resources, **kwargs))

        run.__name__ = fn.__name__
        run.__doc__ = fn.__doc__
        declare = cast("Callable[..., Callable[..., Task]]", shared_task)  # type: ignore[type-arg]
        task = declare(name=name, base=ReliableTask, bind=True, **options)(run)
        return JobHandle(name, task)

    return decorate


def install_job_runtime(app: Celery, runtime: JobRuntime[Any]) -> None:
    """Tie ``runtime`` to ``app``'s worker processes and stamp outgoing messages."""
    _runtimes[app] = runtime

    def process_init(**_: Any) -> None:
        runtime.start()

    def process_shutdown(**_: Any) -> None:
        runtime.stop()
        if runtime.metrics is not None:
            runtime.metrics.process_exited(os.getpid())

    def hard_time_limit(sender: Any = None, exception: Any = None, **kwargs: Any) -> None:
        # Raised in the parent when it killed a child over the hard limit: the task's own
        # code never saw it, so record it here (the parent opens the runtime lazily).
        if not isinstance(exception, TimeLimitExceeded):
            return
        record = DeadLetterRecord(
            task_id=str(kwargs.get("task_id")),
            task_name=getattr(sender, "name", "unknown"),
            args=list(kwargs.get("args") or []),
            kwargs=dict(kwargs.get("kwargs") or {}),
            request_id=None,
            error_type="TimeLimitExceeded",
            error=str(exception),
            attempts=1,
        )
        _record_dead_letter(runtime, record)

    # weak=False: these closures have no other reference and must live as long as the app.
    worker_process_init.connect(process_init, weak=False)
    worker_process_shutdown.connect(process_shutdown, weak=False)
    worker_shutdown.connect(lambda **_: runtime.stop(), weak=False)
    task_failure.connect(hard_time_limit, weak=False)


_stamping = False


def stamp_published_messages() -> None:
    """Add ``published_at`` and ``published_by`` headers to every message this process sends.

    They measure time spent waiting in the queue, and tell which process sent a job (the
    scheduler test uses it to show that one beat, the lock holder, did all the sending).
    Safe to call more than once.
    """
    global _stamping
    if _stamping:
        return
    _stamping = True
    host = socket.gethostname()

    def stamp(headers: dict[str, Any] | None = None, **_: Any) -> None:
        if headers is not None:
            headers["published_at"] = time.time()
            headers["published_by"] = f"{host}:{os.getpid()}"

    before_task_publish.connect(stamp, weak=False)
