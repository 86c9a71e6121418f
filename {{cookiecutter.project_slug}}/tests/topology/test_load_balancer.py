"""The load balancer under load: three real API instances behind the real gateway (Traefik).

Every proof drives 30 concurrent keep-alive clients through the gateway at an endpoint that
authenticates and reads Postgres (``GET /users/me``), and counts what the clients saw.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
import uuid
from typing import Any

import httpx
import pytest

from devstack.topology import LocalStack, pid_alive

from tests.topology.conftest import (
    INSTANCES,
    gateway_counter,
    instance_urls,
    needs_edge,
    port_of,
    requests_served,
    restarted,
    sign_up,
)
from tests.topology.loadgen import run_load

pytestmark = [pytest.mark.topology, pytest.mark.load, pytest.mark.xdist_group("topology")]

CLIENTS = 30
ROUTE = "/users/me"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# Alone: an instance starved by another proof misses a health check and sheds its share.
@pytest.mark.alone
async def test_requests_are_spread_over_every_instance(
    stack: LocalStack, results: dict[str, Any]
) -> None:
    token = await sign_up(stack.urls["gateway"], f"spread-{uuid.uuid4().hex[:8]}@example.com")
    instances = instance_urls(stack)
    before = [await requests_served(url, ROUTE) for url in instances]

    load = await run_load(
        port_of(stack.urls["gateway"]), ROUTE, seconds=3, connections=CLIENTS, headers=bearer(token)
    )

    served = [
        await requests_served(url, ROUTE) - b for url, b in zip(instances, before, strict=True)
    ]
    shares = [round(n / sum(served), 3) for n in served]
    results["spread"] = {
        "requests": load.requests,
        "failed": load.failed,
        "per_instance": served,
        "stack_start_seconds": stack.state["started_seconds"],
    }
    assert load.failed == 0, (load.statuses, load.errors)
    assert load.ok >= 30 * INSTANCES  # enough requests for the shares to mean something
    # Each request reached exactly one instance...
    assert sum(served) == load.ok
    # ...and every instance carried a fair share: within 25% of an even split. Round robin is
    # exact while every instance stays in rotation; CI once measured 0.405 / 0.357 / 0.238
    # when a busy instance's readiness probe queued behind its own traffic for a pooled
    # connection and missed the gateway's timeout (fixed: tests/health, busy pool).
    fair = 1 / INSTANCES
    assert all(0.75 * fair <= share <= 1.25 * fair for share in shares), shares


async def test_a_token_from_one_instance_works_on_every_other(stack: LocalStack) -> None:
    email = f"stateless-{uuid.uuid4().hex[:8]}@example.com"
    password = "correct horse battery"
    first, *others = instance_urls(stack)
    async with httpx.AsyncClient(timeout=10) as client:
        body = {"email": email, "password": password}
        assert (await client.post(f"{first}/auth/register", json=body)).status_code == 202
        login = await client.post(f"{first}/auth/login", json=body)
        token = login.json()["access_token"]
        # No session lives in the instance that issued the token: any other one accepts it.
        for url in others:
            response = await client.get(f"{url}{ROUTE}", headers=bearer(token))
            assert response.status_code == 200, (url, response.text)
            assert response.json()["email"] == email
        # And through the gateway, whichever instance answers.
        through_gateway = [
            await client.get(f"{stack.urls['gateway']}{ROUTE}", headers=bearer(token))
            for _ in range(3 * INSTANCES)
        ]
    assert [r.status_code for r in through_gateway] == [200] * (3 * INSTANCES)


async def watch_drain(url: str, seconds: float) -> dict[str, int]:
    """Poll an instance directly while it drains: what do readiness and liveness say?"""
    seen = {"readyz_503_draining": 0, "healthz_200": 0, "answers": 0}
    deadline = time.monotonic() + seconds
    async with httpx.AsyncClient(timeout=1) as client:
        while time.monotonic() < deadline:
            try:
                ready = await client.get(f"{url}/readyz")
                alive = await client.get(f"{url}/healthz")
            except httpx.TransportError:
                break  # it stopped listening: the drain is over
            seen["answers"] += 1
            if ready.status_code == 503 and ready.json().get("detail") == "draining":
                seen["readyz_503_draining"] += 1
            if alive.status_code == 200:
                seen["healthz_200"] += 1
            await asyncio.sleep(0.1)
    return seen


async def test_sigterm_one_instance_under_load_fails_no_request(
    fresh_stack: LocalStack, results: dict[str, Any]
) -> None:
    stack = fresh_stack
    token = await sign_up(stack.urls["gateway"], "sigterm@example.com")
    victim = "api.2"
    victim_url = stack.urls[victim]
    gateway_502_before = await gateway_counter(stack, "traefik_service_requests_total", code="502")

    load = asyncio.create_task(
        run_load(
            port_of(stack.urls["gateway"]),
            ROUTE,
            seconds=7,
            connections=CLIENTS,
            headers=bearer(token),
        )
    )
    await asyncio.sleep(1.5)
    served_before = await requests_served(victim_url, ROUTE)
    victim_pid = stack.pids[victim]
    os.kill(victim_pid, signal.SIGTERM)
    signalled = time.monotonic()
    drain = await watch_drain(victim_url, seconds=5)
    result = await load

    exit_deadline = signalled + 3 + 10 + 2  # DRAIN_SECONDS + GRACEFUL_TIMEOUT + margin
    while pid_alive(victim_pid) and time.monotonic() < exit_deadline:
        await asyncio.sleep(0.1)
    gateway_502 = (
        await gateway_counter(stack, "traefik_service_requests_total", code="502")
        - gateway_502_before
    )
    results["sigterm"] = {
        "requests": result.requests,
        "failed": result.failed,
        "statuses": dict(result.statuses),
        "ok_after_sigterm": result.ok_after(signalled),
        "gateway_upstream_502": gateway_502,
        "drain_polls": drain,
        "stack_start_seconds": stack.state["started_seconds"],
    }

    assert result.failed == 0, (result.statuses, result.errors, result.failures_at)
    # Load went on all along: most of it after the signal (5.5 of its 7 seconds).
    assert result.ok_after(signalled) > 0.5 * result.ok
    # It failed readiness at once but kept serving while the load balancer took it out...
    assert drain["readyz_503_draining"] >= 1
    assert drain["healthz_200"] == drain["answers"]
    # ...so not one request needed the gateway's retry: the drain alone kept clients whole.
    assert gateway_502 == 0
    # And it exited by itself, within its drain plus graceful timeout.
    assert not pid_alive(victim_pid)
    # It was in rotation under this load before the signal.
    assert served_before > 0
    # The launcher started it again, as an orchestrator replaces a pod, and it is back in
    # rotation: a new process on the same port.
    assert await restarted(stack, victim, victim_pid) != victim_pid


@needs_edge
async def test_kill_9_one_instance_under_load_fails_no_request(
    fresh_stack: LocalStack, results: dict[str, Any]
) -> None:
    """Clients come through the edge, as they do in this topology.

    The gateway retries every request a dead instance broke before it answered; the one case it
    cannot is a response cut between its headers and its body, which it turns into a 5xx of its
    own. The edge buffers responses and retries those for GET/HEAD, so no client sees either.
    """
    stack = fresh_stack
    token = await sign_up(stack.urls["gateway"], "kill9@example.com")
    victim = "api.2"
    victim_url = stack.urls[victim]
    upstream_502_before = await gateway_counter(stack, "traefik_service_requests_total", code="502")
    gateway_5xx_before = await gateway_counter(
        stack, "traefik_entrypoint_requests_total", entrypoint="web", code="5*"
    )

    load = asyncio.create_task(
        run_load(
            port_of(stack.urls["edge"]),
            ROUTE,
            seconds=5,
            connections=CLIENTS,
            headers=bearer(token),
        )
    )
    await asyncio.sleep(1.5)
    victim_pid = stack.pids[victim]
    os.kill(victim_pid, signal.SIGKILL)  # no drain, no goodbye: mid-request
    killed = time.monotonic()
    result = await load

    upstream_502 = (
        await gateway_counter(stack, "traefik_service_requests_total", code="502")
        - upstream_502_before
    )
    gateway_5xx = (
        await gateway_counter(
            stack, "traefik_entrypoint_requests_total", entrypoint="web", code="5*"
        )
        - gateway_5xx_before
    )
    results["kill_9"] = {
        "requests": result.requests,
        "failed": result.failed,
        "statuses": dict(result.statuses),
        "ok_after_kill": result.ok_after(killed),
        "upstream_502_retried_by_gateway": upstream_502,
        "gateway_5xx_retried_by_edge": gateway_5xx,
        "stack_start_seconds": stack.state["started_seconds"],
    }
    assert result.failed == 0, (result.statuses, result.errors, result.failures_at)
    # Load went on all along: most of it after the kill (3.5 of its 5 seconds).
    assert result.ok_after(killed) > 0.5 * result.ok
    # The kill did break requests between gateway and instance; retries hid every one of them.
    assert upstream_502 >= 1
    # The launcher started a new process in its place, back in rotation once it is ready.
    assert await restarted(stack, victim, victim_pid) != victim_pid
    # The rest of the stack carried on: the survivors still answer directly.
    async with httpx.AsyncClient(timeout=5) as client:
        for url in instance_urls(stack):
            if url != victim_url:
                assert (await client.get(f"{url}/readyz")).status_code == 200
