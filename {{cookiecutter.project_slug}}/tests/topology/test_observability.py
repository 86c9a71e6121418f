"""`make dev`'s Prometheus: every process of the running stack is a target that is up, and the
deploy/prometheus rules are loaded (the stack the other topology proofs share).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from devstack.topology import LocalStack

pytestmark = [pytest.mark.topology, pytest.mark.xdist_group("topology")]

RULES = Path(__file__).parents[2] / "deploy" / "prometheus" / "rules"
# Every process of the stack, and the exporters for Postgres, Redis and Varnish.
JOBS = {"api", "gateway", "worker", "beat", "relay", "consumers", "postgres", "redis", "edge"}


async def prometheus_get(stack: LocalStack, path: str, **params: str) -> Any:
    async with httpx.AsyncClient(base_url=stack.urls["prometheus"], timeout=10) as client:
        reply = await client.get(path, params=params)
        reply.raise_for_status()
        return reply.json()["data"]


async def until_targets_up(stack: LocalStack, deadline: float = 60.0) -> list[dict[str, Any]]:
    """The active targets, once every one has been scraped and is up (or at the deadline)."""
    stop_at = time.monotonic() + deadline
    while True:
        targets: list[dict[str, Any]] = (await prometheus_get(stack, "/api/v1/targets"))[
            "activeTargets"
        ]
        if targets and all(t["health"] == "up" for t in targets):
            return targets
        if time.monotonic() > stop_at:
            return targets
        await asyncio.sleep(0.5)


async def test_prometheus_scrapes_every_process_of_the_stack(stack: LocalStack) -> None:
    targets = await until_targets_up(stack)
    down = {t["scrapeUrl"]: t["lastError"] for t in targets if t["health"] != "up"}
    assert down == {}, down
    jobs = {t["labels"]["job"] for t in targets}
    assert jobs == JOBS
    api = [t for t in targets if t["labels"]["job"] == "api"]
    assert len(api) == stack.state["api_instances"]

    groups = (await prometheus_get(stack, "/api/v1/rules"))["groups"]
    assert {Path(g["file"]).name for g in groups} == {p.name for p in RULES.glob("*.yml")}
    alerts = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
    assert len(alerts) >= 10
    assert all(r["health"] == "ok" for g in groups for r in g["rules"])
