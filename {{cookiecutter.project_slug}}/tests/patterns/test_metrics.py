from __future__ import annotations

import asyncio
import time

from httpx import AsyncClient

from tests.worker_harness import metric_value


async def test_metrics_count_requests_by_route_template_and_status(
    app_client: AsyncClient,
) -> None:
    for _ in range(3):
        await app_client.get("/users/me")
    await app_client.get("/healthz")
    text = (await app_client.get("/metrics")).text
    assert 'http_requests_total{method="GET",route="/users/me",status="401"} 3.0' in text
    assert 'http_requests_total{method="GET",route="/healthz",status="200"} 1.0' in text
    assert 'http_request_duration_seconds_count{method="GET",route="/users/me"} 3.0' in text


async def test_metrics_expose_in_flight_requests_and_the_db_pool(app_client: AsyncClient) -> None:
    await app_client.get("/readyz")
    response = await app_client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    # The scrape itself is in flight while the gauge is read.
    assert "http_requests_in_flight 1.0" in response.text
    assert "db_pool_size 10.0" in response.text
    # The pub-sub metrics task borrows a connection now and then: every borrowed connection
    # must come back (a leak would keep the gauge above 0 for good).
    deadline = time.monotonic() + 10
    while "db_pool_checked_out 0.0" not in response.text:
        assert time.monotonic() < deadline, "a pooled connection was never returned"
        await asyncio.sleep(0.05)
        response = await app_client.get("/metrics")


async def test_raw_ids_never_become_labels(app_client: AsyncClient) -> None:
    await app_client.get("/products/123e4567-e89b-12d3-a456-426614174000")
    await app_client.get("/no-such-thing/223e4567-e89b-12d3-a456-426614174000")
    text = (await app_client.get("/metrics")).text
    assert "123e4567" not in text
    assert "223e4567" not in text
    assert 'route="/products/{product_id}"' in text
    assert 'route="<unmatched>"' in text


async def test_the_bill_counts_bytes_sent_and_database_time_per_route(
    app_client: AsyncClient,
) -> None:
    catalog = await app_client.get("/products")  # a cache miss: it reads Postgres
    assert catalog.status_code == 200
    await app_client.get("/healthz")
    text = (await app_client.get("/metrics")).text
    sent = metric_value(text, "http_response_body_bytes_total", route="/products")
    assert sent == int(catalog.headers["content-length"])
    assert metric_value(text, "http_request_db_seconds_total", route="/products") > 0
    # A route that touches no database bills none.
    assert 'http_request_db_seconds_total{route="/healthz"}' not in text
