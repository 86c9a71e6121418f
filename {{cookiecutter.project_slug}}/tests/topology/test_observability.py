"""`make dev`'s Prometheus: every process of the running stack is a target that is up, and the
deploy/prometheus rules are loaded (the stack the other topology proofs share).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.topology import LocalStack

from tests.deploy.conftest import dashboard_queries
from tests.factories import insert_products
from tests.topology.conftest import sign_up

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
    # A target that is up is an exporter that answers; these say it reached what it watches
    # (the Postgres exporter once answered every scrape with an error and no pg_stat_*).
    for reached, expected in [
        ("pg_up", "1"),
        ("pg_exporter_last_scrape_error", "0"),
        ("redis_up", "1"),
        ("varnish_up", "1"),
    ]:
        [sample] = (await prometheus_get(stack, "/api/v1/query", query=reached))["result"]
        assert sample["value"][1] == expected, reached

    groups = (await prometheus_get(stack, "/api/v1/rules"))["groups"]
    assert {Path(g["file"]).name for g in groups} == {p.name for p in RULES.glob("*.yml")}
    alerts = [r for g in groups for r in g["rules"] if r["type"] == "alerting"]
    assert len(alerts) >= 10
    assert all(r["health"] == "ok" for g in groups for r in g["rules"])


async def has_series(stack: LocalStack, expr: str) -> bool:
    return bool((await prometheus_get(stack, "/api/v1/query", query=expr))["result"])


async def test_every_dashboard_panel_finds_data_on_the_running_stack(stack: LocalStack) -> None:
    """deploy/grafana's dashboard on a live stack: each panel's query, as Grafana runs it, finds
    series once the stack has served a little of everything, before anything has failed
    (catalog reads through the edge and the app cache, orders and their jobs, an upload's S3
    check)."""
    engine = create_async_engine(stack.state["database_url"], pool_size=1, max_overflow=0)
    try:
        async with engine.begin() as connection:
            [product_id] = await insert_products(connection, [10_000_000])
    finally:
        await engine.dispose()
    token = await sign_up(stack.urls["gateway"], f"dashboard-{uuid.uuid4().hex[:8]}@example.com")
    headers = {"Authorization": f"Bearer {token}"}
    order = {"items": [{"product_id": str(product_id), "quantity": 1}]}
    declared = {"purpose": "attachment", "filename": "a.csv", "content_type": "text/csv"}
    pending = dashboard_queries()
    stop_at = time.monotonic() + 180
    async with (
        httpx.AsyncClient(base_url=stack.urls["edge"], timeout=10) as edge,
        httpx.AsyncClient(base_url=stack.urls["gateway"], timeout=10, headers=headers) as api,
    ):
        upload = await api.post("/uploads", json={**declared, "size": 10})
        assert upload.status_code == 201, upload.text
        while pending and time.monotonic() < stop_at:
            # One round of traffic: rates over the last minute need it to keep coming.
            for _ in range(3):
                assert (await edge.get("/products")).status_code == 200
            # Twice: the order below updates the product, so its first read after is a miss.
            for _ in range(2):
                assert (await api.get(f"/products/{product_id}")).status_code == 200
            assert (await api.post("/orders", json=order)).status_code == 201
            # Completed before the file is sent: a 409, after a HeadObject on the bucket.
            assert (await api.post(f"/uploads/{upload.json()['id']}/complete")).status_code == 409
            for title, exprs in list(pending.items()):
                if all([await has_series(stack, expr) for expr in exprs]):
                    del pending[title]
            await asyncio.sleep(1)
    assert pending == {}, f"panels with no data: {sorted(pending)}"
