"""Graceful shutdown: SIGTERM fails readiness first, the process keeps serving, then it stops.

Real signals throughout: the tests send SIGTERM to this process (with a recording handler in
the server's place) or to a real uvicorn serving the real app.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import httpx
import pytest
from httpx import ASGITransport, AsyncClient

from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.graceful import Drain
from tests.lifespan import running


@pytest.fixture
def server_handler() -> Iterator[list[tuple[int, float]]]:
    """Stands in for uvicorn's SIGTERM handler: records when it is called."""
    calls: list[tuple[int, float]] = []

    def handle_exit(signum: int, _frame: FrameType | None) -> None:
        calls.append((signum, time.monotonic()))

    original = signal.signal(signal.SIGTERM, handle_exit)
    yield calls
    signal.signal(signal.SIGTERM, original)


async def wait_until(predicate: Callable[[], object], within: float = 2.0) -> None:
    deadline = time.monotonic() + within
    while not predicate() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)


async def test_sigterm_drains_first_and_hands_over_to_the_server_after_the_drain(
    server_handler: list[tuple[int, float]],
) -> None:
    drain = Drain(seconds=0.3)
    with drain.handle_sigterm():
        sent = time.monotonic()
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_until(lambda: drain.draining)
        assert drain.draining
        assert server_handler == []  # the server does not know yet: it keeps serving
        await wait_until(lambda: server_handler, within=3)
    [(signum, called)] = server_handler
    assert signum == signal.SIGTERM
    assert called - sent >= 0.3


async def test_a_second_sigterm_skips_the_rest_of_the_drain(
    server_handler: list[tuple[int, float]],
) -> None:
    drain = Drain(seconds=30)
    with drain.handle_sigterm():
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_until(lambda: drain.draining)
        os.kill(os.getpid(), signal.SIGTERM)
        await wait_until(lambda: server_handler)
    assert [signum for signum, _ in server_handler] == [signal.SIGTERM]


async def test_the_server_handler_is_restored_afterwards(
    server_handler: list[tuple[int, float]],
) -> None:
    before = signal.getsignal(signal.SIGTERM)
    with Drain(seconds=1).handle_sigterm():
        assert signal.getsignal(signal.SIGTERM) is not before
    assert signal.getsignal(signal.SIGTERM) is before


async def test_without_a_server_handler_nothing_is_wrapped() -> None:
    original = signal.signal(signal.SIGTERM, signal.SIG_DFL)
    try:
        with Drain(seconds=1).handle_sigterm():
            assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    finally:
        signal.signal(signal.SIGTERM, original)


async def test_while_draining_readiness_fails_and_responses_close_their_connection(
    settings: Settings,
) -> None:
    app = create_app(settings)
    async with running(app):
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            before = await client.get("/healthz")
            app.state.drain.begin()
            ready = await client.get("/readyz")
            alive = await client.get("/healthz")
    assert "connection" not in before.headers
    assert ready.status_code == 503
    assert ready.json()["detail"] == "draining"
    # Still alive and still serving: a liveness failure would get it killed mid-drain.
    assert alive.status_code == 200
    assert alive.headers["connection"] == "close"


async def test_real_uvicorn_drains_on_sigterm_then_exits(database_url: str, redis_url: str) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": database_url,
        "REDIS_URL": redis_url,
        "DRAIN_SECONDS": "1.5",
        "LOG_LEVEL": "WARNING",
    }
    server = await asyncio.create_subprocess_exec(
        *[sys.executable, "-m", "{{ cookiecutter.project_slug }}", "serve", "--port", str(port)],
        env=env,
        cwd=Path(__file__).parents[2],
        stdout=asyncio.subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=2) as client:
            for _ in range(300):
                try:
                    if (await client.get("/readyz")).status_code == 200:
                        break
                except httpx.TransportError:
                    await asyncio.sleep(0.1)
            server.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            statuses: list[tuple[int, int]] = []
            while time.monotonic() - signalled < 1.2:  # inside the drain
                ready, alive = await client.get("/readyz"), await client.get("/healthz")
                statuses.append((ready.status_code, alive.status_code))
                await asyncio.sleep(0.1)
        returncode = await asyncio.wait_for(server.wait(), 15)
        exited_after = time.monotonic() - signalled
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
    assert statuses
    assert set(statuses) == {(503, 200)}  # not ready, alive, and answering throughout
    assert exited_after >= 1.5  # it did not stop before the drain was over...
    # ...and then stopped by itself, as SIGTERM asks (uvicorn re-raises it after shutdown).
    assert returncode == -signal.SIGTERM
