"""Start the real local stack (``{{ cookiecutter.project_slug }} dev``) for the topology proofs, and prove it stops.

Each stack gets its own database (migrated by the launcher, as ``make dev`` does), its own
state directory and ports nobody else uses. Stopping it is part of every test that starts one:
the fixture fails the test if any process the stack started is still alive afterwards.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import signal
import socket
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.servers import RunningServer, start_redis
from devstack.settings import StackSettings
from devstack.topology import (
    GATEWAY_UNLIMITED,
    LocalStack,
    gateway_servers_up,
    pid_alive,
    ports_in_use,
)

from tests.conftest import drop_database, recreate_database, run_database_name

PROJECT_DIR = Path(__file__).parents[2]
INSTANCES = 3
HAVE_VARNISH = shutil.which("varnishd") is not None
# Fails (never skips) where Varnish is missing: the message says what to install.
needs_edge = pytest.mark.usefixtures("varnish_installed")

_stacks_started = 0


def free_stack_ports(instances: int) -> dict[str, str]:
    """Port settings for a stack that collides with nothing listening now."""
    for _ in range(200):
        # Below Linux's ephemeral range (32768+), where client sockets would collide.
        base = random.randrange(10000, 32000 - 10050, 50)  # ports, not secrets
        env = {
            "API_PORT": str(base),
            "GATEWAY_PORT": str(base + 20),
            "GATEWAY_OPS_PORT": str(base + 21),
            "EDGE_PORT": str(base + 22),
            "S3_PORT": str(base + 23),
            "S3_INTERNAL_PORTS_FROM": str(base + 30),
            "PROMETHEUS_PORT": str(base + 24),
            "METRICS_PORTS_FROM": str(base + 40),
        }
        settings = StackSettings.model_validate(
            {key.lower(): value for key, value in env.items()} | {"api_instances": instances}
        )
        if not ports_in_use(settings.named_ports(edge=True)):
            return env
    raise RuntimeError("no free block of ports for a stack")


async def start_stack(
    slot: dict[str, str],
    worker_id: str,
    extra_env: dict[str, str] | None = None,
    *,
    instances: int = INSTANCES,
) -> tuple[LocalStack, str]:
    global _stacks_started
    _stacks_started += 1
    database = run_database_name(f"stack{_stacks_started}", worker_id)
    env = {
        **os.environ,
        **slot,
        "DATABASE_URL": await recreate_database(database),
        # The stack's own cache namespace, as it has its own database.
        "CACHE_KEY_PREFIX": database,
        "LOG_LEVEL": "INFO",
        # Mounts the fault routes (faults/router.py) the fault-injection proofs send poison to.
        "ENVIRONMENT": "test",
        # Three instances share the test server with the rest of the suite: small pools keep
        # the run inside a stock Postgres's 100 connections. The proofs need concurrency
        # through the gateway, not dozens of connections per instance.
        "DB_POOL_SIZE": "5",
        "DB_MAX_OVERFLOW": "3",
        # test_rate_limits.py puts the gateway's limit back through extra_env.
        **GATEWAY_UNLIMITED,
        **(extra_env or {}),
    }
    stack = LocalStack.start(PROJECT_DIR, env, instances=instances)
    return stack, database


def new_slot(directory: Path) -> dict[str, str]:
    return {**free_stack_ports(INSTANCES), "DEVSTACK_DIR": str(directory / "devstack")}


def assert_nothing_left_running(stack: LocalStack) -> None:
    stragglers = stack.stop()
    assert stragglers == [], f"processes outlived the stack: {stragglers}\n{stack.log()[-2000:]}"
    assert not [pid for pid in stack.pids.values() if pid_alive(pid)]
    ports = [port_of(url) for url in stack.urls.values()]
    listening = [port for port in ports if listens(port)]
    assert listening == [], f"the stopped stack still listens on {listening}"


def listens(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class StackRedis:
    """The shared stack's own Redis (REDIS_URL: cache, broker, limiter, streams, schedule),
    with an AOF as production runs it, so a proof can SIGKILL it and start it again on the
    same port and data; the suite's Redis on 6379 is never touched."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.server: RunningServer = start_redis(data_dir=data_dir)
        self.url = self.server.url
        self.port = int(self.url.rsplit(":", 1)[1].split("/")[0])

    def kill(self) -> None:
        """kill -9: no shutdown, no final write; returns once the port is closed."""
        assert self.server.pid is not None
        os.kill(self.server.pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while listens(self.port):
            assert time.monotonic() < deadline, "the killed Redis still listens"
            time.sleep(0.02)

    def restart(self) -> None:
        self.server = start_redis(port=self.port, data_dir=self.data_dir)

    def stop(self) -> None:
        self.server.stop()


@pytest.fixture(scope="package")
def stack_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackRedis]:
    redis = StackRedis(tmp_path_factory.mktemp("stack-redis"))
    yield redis
    redis.stop()


@pytest.fixture(scope="package")
async def stack(
    tmp_path_factory: pytest.TempPathFactory, worker_id: str, stack_redis: StackRedis
) -> AsyncIterator[LocalStack]:
    """One stack with three API instances, shared by every test that leaves it intact (or,
    like the Redis outage proof, puts it back as it was)."""
    running, database = await start_stack(
        new_slot(tmp_path_factory.mktemp("shared")),
        worker_id,
        extra_env={"REDIS_URL": stack_redis.url},
    )
    yield running
    assert_nothing_left_running(running)
    await drop_database(database)


@pytest.fixture(scope="package")
def restart_slot(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Ports and state directory that every fresh stack reuses, one after the other."""
    return new_slot(tmp_path_factory.mktemp("restarts"))


@pytest.fixture
async def fresh_stack(restart_slot: dict[str, str], worker_id: str) -> AsyncIterator[LocalStack]:
    """A stack of its own, for the proofs that stop or kill an instance.

    Each one starts on the ports and in the directory the previous one used, as a second
    `make dev` does: the launcher refuses to start while anything still holds one of those
    ports, so a stop that left something behind fails the next start.
    """
    running, database = await start_stack(restart_slot, worker_id)
    yield running
    assert_nothing_left_running(running)
    await drop_database(database)


async def restarted(stack: LocalStack, name: str, old_pid: int, within: float = 90.0) -> int:
    """Poll until the launcher has started ``name`` again; return its new PID.

    For an API instance, also until the gateway's load balancer counts it up again.
    """
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        pid = stack.refresh()["pids"].get(name)
        if pid and pid != old_pid and pid_alive(pid):
            url = stack.urls.get(name)
            if url is None or gateway_servers_up(port_of(stack.urls["gateway_ops"])).get(url):
                return int(pid)
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name} was not back within {within}s:\n{stack.log()[-3000:]}")


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def instance_urls(stack: LocalStack) -> list[str]:
    return [stack.urls[f"api.{i}"] for i in range(1, stack.state["api_instances"] + 1)]


async def requests_served(url: str, route: str) -> float:
    """How many requests for ``route`` this instance answered, from its own /metrics."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{url}/metrics")).text
    label = f'route="{route}"'
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("http_requests_total") and label in line
    )


async def gateway_counter(stack: LocalStack, metric: str, **labels: str) -> float:
    """Sum of one of the gateway's Prometheus counters over the series matching ``labels``
    (a label value ending in ``*`` matches by prefix: ``code="5*"``)."""
    async with httpx.AsyncClient() as client:
        text = (await client.get(f"{stack.urls['gateway_ops']}/metrics")).text
    wanted = [
        f'{k}="{v.removesuffix("*")}' if v.endswith("*") else f'{k}="{v}"'
        for k, v in labels.items()
    ]
    total = 0.0
    for line in text.splitlines():
        if line.startswith(metric + "{") and all(label in line for label in wanted):
            total += float(line.rsplit(" ", 1)[1])
    return total


async def sign_up(gateway: str, email: str, password: str = "correct horse battery") -> str:
    """Register through the gateway; return a bearer token obtained the same way."""
    async with httpx.AsyncClient(base_url=gateway, timeout=10) as client:
        body = {"email": email, "password": password}
        assert (await client.post("/auth/register", json=body)).status_code == 202
        response = await client.post("/auth/login", json=body)
        assert response.status_code == 200, response.text
        token: str = response.json()["access_token"]
        return token


def app_log_lines(stack: LocalStack, request_id: str) -> list[dict[str, Any]]:
    """The app's JSON log lines (from any instance) that carry ``request_id``."""
    found = []
    for line in stack.log().splitlines():
        _, _, payload = line.partition("| ")
        if request_id in payload and payload.startswith("{"):
            found.append(json.loads(payload))
    return found


def unhandled_errors(stack: LocalStack, last: int = 3) -> list[str]:
    """The app's latest ``http.unhandled_error`` lines (with their tracebacks), for the
    message of a proof that saw a 500: the stack's log is gone once the fixture stops it."""
    return [line for line in stack.log().splitlines() if "http.unhandled_error" in line][-last:]


def wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


@pytest.fixture
def results() -> Iterator[dict[str, Any]]:
    """Figures a proof measured, appended to bench/results/topology.json for the docs."""
    figures: dict[str, Any] = {}
    yield figures
    if figures:
        path = PROJECT_DIR / "bench" / "results" / "topology.json"
        path.parent.mkdir(exist_ok=True)
        existing = json.loads(path.read_text()) if path.exists() else {}
        path.write_text(json.dumps(existing | figures, indent=2) + "\n")
