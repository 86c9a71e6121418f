"""A real Prometheus scrapes a real API process; the SLO alerts tell down from slow.

The rules are deploy/prometheus's, windows shortened (devstack/prometheus.py:short_windows), so
the expressions under test are the production ones. A fault route fails a share of the load:
the availability page fires, the latency alerts stay silent.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from devstack.prometheus import (
    PrometheusServer,
    prometheus_binary,
    run_prometheus,
    short_windows,
)

from tests.conftest import LiveServer

RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "rules"
CLIENTS = 4
FAULT_EVERY = 5  # one request in five goes to the failing route: 20% errors, a 200x burn
# Each client waits this long between requests: at most 100 requests/s, a fraction of what one
# process serves. A saturated server would turn any stall of a shared machine into requests
# over 500 ms, and the latency ticket (1% of them) would fire beside the availability page.
PAUSE_SECONDS = 0.04

# Down must not look slow: a load proof on the other worker would make it so.
pytestmark = [pytest.mark.load, pytest.mark.alone]


def _rules() -> list[dict[str, Any]]:
    return [short_windows(yaml.safe_load(path.read_text())) for path in sorted(RULES.glob("*.yml"))]


async def _load(
    base_url: str,
    fault: str,
    stop: asyncio.Event,
    statuses: Counter[int],
    *,
    clients: int = CLIENTS,
    fault_every: int = FAULT_EVERY,
) -> None:
    async def client(offset: int) -> None:
        async with httpx.AsyncClient(base_url=base_url, timeout=10) as http:
            sent = offset
            while not stop.is_set():
                sent += 1
                path = fault if sent % fault_every == 0 else "/products"
                statuses[(await http.get(path)).status_code] += 1
                await asyncio.sleep(PAUSE_SECONDS)

    await asyncio.gather(*(client(offset) for offset in range(clients)))


async def _until_firing(
    prometheus: PrometheusServer, wanted: set[str], deadline: float
) -> dict[str, float]:
    started = time.monotonic()
    fired: dict[str, float] = {}
    while time.monotonic() - started < deadline:
        for name in await asyncio.to_thread(prometheus.firing):
            fired.setdefault(name, round(time.monotonic() - started, 1))
        if wanted <= fired.keys():
            break
        await asyncio.sleep(0.5)
    return fired


@pytest.fixture(scope="module")
def prometheus_installed() -> None:
    if prometheus_binary() is None:
        pytest.fail("prometheus not found: `apt-get install prometheus`", pytrace=False)


async def _fire_under(
    server: LiveServer, fault: str, wanted: set[str], **shape: int
) -> tuple[dict[str, float], Counter[int]]:
    """Load with one request in five sent to ``fault`` (``shape`` overrides), until ``wanted``
    fire (or 90 s)."""
    target = server.base_url.removeprefix("http://")
    with run_prometheus({"api": [target]}, _rules()) as prometheus:
        stop = asyncio.Event()
        statuses: Counter[int] = Counter()
        load = asyncio.create_task(_load(server.base_url, fault, stop, statuses, **shape))
        try:
            fired = await _until_firing(prometheus, wanted, deadline=90)
        finally:
            stop.set()
            await load
    print(  # noqa: T201  # the figures docs/observability.md quotes (pytest -s)
        f"\n{fault}: fired (s after load start) {fired}; responses {dict(statuses)}"
    )
    return fired, statuses


@pytest.mark.usefixtures("prometheus_installed")
async def test_a_failing_route_pages_for_availability_not_latency(live_server: LiveServer) -> None:
    wanted = {"ApiAvailabilityBurnFast", "ApiAvailabilityBurnSlow", "ApiAvailabilityBurnTicket"}
    fired, statuses = await _fire_under(live_server, "/_faults/unhandled", wanted)
    assert wanted <= fired.keys(), fired
    assert statuses[500] > 0, statuses
    assert statuses[200] > 3 * statuses[500], statuses
    assert not {name for name in fired if name.startswith("ApiLatency")}, fired


@pytest.mark.usefixtures("prometheus_installed")
async def test_a_slow_route_pages_for_latency_not_availability(live_server: LiveServer) -> None:
    wanted = {"ApiLatencyBurnFast", "ApiLatencyBurnSlow", "ApiLatencyBurnTicket"}
    fired, statuses = await _fire_under(live_server, "/_faults/slow?seconds=0.7", wanted)
    assert wanted <= fired.keys(), fired
    assert set(statuses) == {200}, statuses
    assert not {name for name in fired if name.startswith("ApiAvailability")}, fired


@pytest.mark.usefixtures("prometheus_installed")
async def test_an_exhausted_pool_fires_saturation_not_availability(
    live_server: LiveServer,
) -> None:
    # More clients than pooled connections, each holding one: requests queue for the pool
    # (DB_POOL_TIMEOUT is long), so users see slowness and the page names the pool.
    pool = live_server.settings.db_pool_size
    fired, statuses = await _fire_under(
        live_server,
        "/_faults/slow-db?seconds=0.5",
        {"DbPoolSaturated"},
        clients=pool + pool // 2,
        fault_every=1,
    )
    assert "DbPoolSaturated" in fired, fired
    assert set(statuses) == {200}, statuses
    assert not {name for name in fired if name.startswith("ApiAvailability")}, fired
