"""Real brokers, worker and beat processes for the job proofs.

Which brokers: ``TEST_BROKERS`` (default ``redis,rabbitmq``: both, always). Redis is the one at
``REDIS_URL``; RabbitMQ is ``TEST_RABBITMQ_URL`` (default the local guest account). A broker
that does not answer fails the run with a message saying how to start it or to opt out with
``TEST_BROKERS=redis``; it is never skipped silently.

Isolation: each stack gets its own queue name, Redis key prefix (broker keys and the RedBeat
schedule/lock) and metrics ports, so concurrent runs and xdist workers never share a message.
Processes start in their own session and are stopped through their process group, by PID.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from celery import Celery
from kombu import Connection
from redis import Redis

from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.reliable_tasks import stamp_published_messages
from {{ cookiecutter.project_slug }}.worker.celery_app import create_celery

PROJECT_ROOT = Path(__file__).resolve().parents[1]
KNOWN_BROKERS = ("redis", "rabbitmq")
DEFAULT_RABBITMQ_URL = "amqp://guest:guest@127.0.0.1:5672//"
PACKAGES = {"redis": "redis-server", "rabbitmq": "rabbitmq-server"}

# Short limits so each proof takes seconds. The visibility timeout still exceeds the hard
# limit and the longest retry delay, as the settings validator insists.
PROOF_ENV = {
    "JOB_MAX_RETRIES": "3",
    "JOB_RETRY_BACKOFF_SECONDS": "0.25",
    "JOB_RETRY_BACKOFF_MAX_SECONDS": "2",
    "JOB_SOFT_TIME_LIMIT": "4",
    "JOB_HARD_TIME_LIMIT": "5",
    "CELERY_VISIBILITY_TIMEOUT": "6",
}


def requested_brokers() -> list[str]:
    names = [n.strip() for n in os.environ.get("TEST_BROKERS", "redis,rabbitmq").split(",")]
    unknown = [n for n in names if n and n not in KNOWN_BROKERS]
    if unknown:
        raise pytest.UsageError(f"TEST_BROKERS names unknown brokers {unknown}; use redis,rabbitmq")
    return [n for n in names if n]


def broker_url(kind: str) -> str:
    if kind == "redis":
        return os.environ["REDIS_URL"]
    return os.environ.get("TEST_RABBITMQ_URL", DEFAULT_RABBITMQ_URL)


def require_broker(kind: str, url: str) -> None:
    try:
        with Connection(url, connect_timeout=3) as connection:
            connection.ensure_connection(max_retries=1, timeout=3)
    except Exception as exc:
        pytest.fail(
            f"The {kind} broker at {url} does not answer ({type(exc).__name__}). Start it "
            f"(Debian: apt-get install {PACKAGES[kind]}), point TEST_RABBITMQ_URL at one, or "
            "test fewer brokers on purpose with TEST_BROKERS=redis.",
            pytrace=False,
        )


@dataclass
class CeleryProcess:
    name: str
    popen: subprocess.Popen[bytes]
    log_path: Path
    metrics_port: int | None = None

    @property
    def pid(self) -> int:
        return self.popen.pid

    def events(self) -> list[dict[str, Any]]:
        events = []
        for line in self.log_path.read_text(errors="replace").splitlines():
            if line.startswith("{"):
                try:
                    events.append(json.loads(line))
                except ValueError:
                    continue
        return events

    def wait_for(self, predicate: Callable[[dict[str, Any]], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(predicate(event) for event in self.events()):
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        tail = self.log_path.read_text(errors="replace")[-3000:]
        raise AssertionError(f"{self.name} never logged what we waited for; log tail:\n{tail}")

    def metrics(self) -> str:
        assert self.metrics_port is not None
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def kill_hard(self) -> None:
        """kill -9 the whole worker: parent and pool children, as a lost machine would."""
        if self.popen.poll() is None:
            os.killpg(self.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.pid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # Pool children outlive a killed parent for a moment; never leave one behind.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)


def parent_pid(pid: int) -> int:
    """The parent of ``pid`` (which worker a pool child belongs to)."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return int(stat.rsplit(")", 1)[1].split()[1])


@dataclass
class JobStack:
    """One isolated broker namespace with its worker and beat processes."""

    broker: str
    database_url: str
    redis_url: str
    log_dir: Path
    tag: str = field(default_factory=lambda: secrets.token_hex(4))
    extra_env: dict[str, str] = field(default_factory=dict)
    processes: list[CeleryProcess] = field(default_factory=list)
    _celery: Celery | None = None

    @property
    def queue(self) -> str:
        return f"proof-{self.tag}"

    def env(self) -> dict[str, str]:
        env = {
            **os.environ,
            **PROOF_ENV,
            "ENVIRONMENT": "test",
            "LOG_JSON": "true",
            "LOG_LEVEL": "INFO",
            "DATABASE_URL": self.database_url,
            "REDIS_URL": self.redis_url,
            "CELERY_BROKER_URL": broker_url(self.broker),
            "CELERY_QUEUE": self.queue,
            "CELERY_BROKER_KEY_PREFIX": f"proof-{self.tag}:",
            "BEAT_KEY_PREFIX": f"proof-{self.tag}:beat",
            "PYTHONUNBUFFERED": "1",
            # The in-process API of the proofs (live_client): a small pool, as Postgres's
            # connections are shared with every other server of the run.
            "DB_POOL_SIZE": "4",
            "DB_MAX_OVERFLOW": "4",
            # Proofs queue hundreds of requests on one row lock: they must wait for a pooled
            # connection, not fail after the default 5 s (CI once stalled past it: a 503).
            "DB_POOL_TIMEOUT": "60",
            **self.extra_env,
        }
        return env

    def settings(self) -> Settings:
        fields = {name.upper() for name in Settings.model_fields}
        values = {k.lower(): v for k, v in self.env().items() if k in fields}
        return Settings.model_validate(values)

    @property
    def celery(self) -> Celery:
        """A publisher like the API's: same factory, same message stamps."""
        if self._celery is None:
            self._celery = create_celery(self.settings())
            stamp_published_messages()
        return self._celery

    def send(self, task: str, **kwargs: Any) -> str:
        return str(self.celery.send_task(task, kwargs=kwargs).id)

    def _spawn(self, name: str, argv: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
        log_path = self.log_dir / f"{name}.log"
        with log_path.open("wb") as log_file:
            return subprocess.Popen(  # our own interpreter and CLI
                [sys.executable, "-m", "{{ cookiecutter.project_slug }}", *argv],
                cwd=PROJECT_ROOT,
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stopped as one, by PID
            )

    def start_worker(self, name: str, *, concurrency: int = 1) -> CeleryProcess:
        port = free_port()
        env = {**self.env(), "WORKER_METRICS_PORT": str(port)}
        argv = [
            "worker",
            f"--concurrency={concurrency}",
            f"--hostname={name}-{self.tag}@%h",
            "--include=tests.worker.proof_tasks",
        ]
        process = CeleryProcess(
            name, self._spawn(name, argv, env), self.log_dir / f"{name}.log", port
        )
        self.processes.append(process)
        return process

    def start_workers(self, count: int = 2) -> list[CeleryProcess]:
        workers = [self.start_worker(f"w{i + 1}") for i in range(count)]
        for worker in workers:
            worker.wait_for(lambda e: str(e.get("event", "")).endswith(" ready."), timeout=60)
        return workers

    def start_beat(self, name: str, **env_overrides: str) -> CeleryProcess:
        env = {**self.env(), "WORKER_METRICS_PORT": "0", **env_overrides}
        process = CeleryProcess(
            name, self._spawn(name, ["beat"], env), self.log_dir / f"{name}.log"
        )
        self.processes.append(process)
        return process

    def redis(self) -> Redis:
        return Redis.from_url(self.redis_url, decode_responses=True)

    def close(self) -> None:
        for process in self.processes:
            process.stop()
        if self._celery is not None:
            self._celery.close()
        self._forget_broker_state()

    def _forget_broker_state(self) -> None:
        with self.redis() as client:
            for key in client.scan_iter(match=f"proof-{self.tag}:*", count=500):
                client.delete(key)
        if self.broker == "rabbitmq":
            with Connection(broker_url("rabbitmq")) as connection:
                channel: Any = connection.default_channel
                try:
                    channel.queue_delete(self.queue)
                    channel.exchange_delete(self.queue)
                except connection.channel_errors:
                    pass


def wait_until(check: Callable[[], bool], timeout: float, what: str) -> float:
    """Poll ``check`` until it holds; returns the seconds it took."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
    return time.monotonic() - started


def metric_value(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def iter_chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
