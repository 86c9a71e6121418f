"""The chain in front of the instances: edge (Varnish) -> gateway (Traefik) -> API instance.

What each hop promises: the edge passes every request through and states who the client is;
the gateway routes, limits bodies, logs the request id the app uses, and believes forwarded
headers from the edge only; the app believes them from the gateway only.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import uuid
from pathlib import Path

import httpx
import pytest
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import create_async_engine

from devstack.settings import StackSettings
from devstack.topology import OPTIONAL, LocalStack, optional_missing, pid_alive

from {{ cookiecutter.project_slug }}.migrate import alembic_config
from tests.topology.conftest import (
    INSTANCES,
    app_log_lines,
    instance_urls,
    needs_edge,
    requests_served,
    wait_for,
)

pytestmark = [pytest.mark.topology, pytest.mark.xdist_group("topology")]

# A second loopback address: a client that is *not* the edge, the gateway or an instance.
OUTSIDER = "127.0.0.2"


def client_from(address: str, base_url: str) -> httpx.AsyncClient:
    transport = httpx.AsyncHTTPTransport(local_address=address)
    return httpx.AsyncClient(transport=transport, base_url=base_url, timeout=10)


def seen_by_app(stack: LocalStack, request_id: str) -> dict[str, object]:
    """The app's access-log line for one request (unknown paths log it at INFO)."""
    lines = wait_for(
        lambda: [
            line for line in app_log_lines(stack, request_id) if line["event"] == "http.request"
        ]
    )
    assert len(lines) == 1, lines
    line: dict[str, object] = lines[0]
    return line


async def test_every_process_of_the_topology_runs(stack: LocalStack) -> None:
    expected = {f"api.{i}" for i in range(1, INSTANCES + 1)}
    expected |= {"gateway.1", "s3.1", "worker.1", "beat.1", "relay.1", "consumers.1"}
    # Varnish, Prometheus and the exporters run where their binaries are installed.
    expected |= {f"{name}.1" for name in OPTIONAL.keys() - optional_missing(os.environ)}
    assert set(stack.pids) == expected
    assert all(pid_alive(pid) for pid in stack.pids.values())


async def test_s3_runs_with_the_bucket_and_refuses_anonymous_access(stack: LocalStack) -> None:
    state = stack.state
    ports = StackSettings.model_validate(
        {"s3_internal_ports_from": state["s3_internal_ports_from"]}
    ).seaweedfs_ports()
    filer = f"http://127.0.0.1:{ports['filer.port']}"
    bucket = state["s3_bucket"]
    async with httpx.AsyncClient(timeout=10) as client:
        # SeaweedFS keeps each bucket as a folder under /buckets on its filer.
        listing = await client.get(f"{filer}/buckets/", headers={"Accept": "application/json"})
        anonymous = await client.get(f"{stack.urls['s3']}/{bucket}")
    buckets = [entry["FullPath"] for entry in listing.json()["Entries"]]
    assert f"/buckets/{bucket}" in buckets
    assert anonymous.status_code == 403  # the dev credentials are enforced


@needs_edge
async def test_readyz_goes_edge_gateway_instance_postgres_redis(stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=stack.urls["edge"], timeout=10) as client:
        response = await client.get("/readyz")
    assert response.status_code == 200
    assert "varnish" in response.headers["via"].lower()  # the edge answered...
    body = response.json()  # ...with what an instance found in Postgres and Redis
    assert body["checks"]["postgres"]["status"] == "ok"
    assert body["checks"]["redis"]["status"] == "ok"


@needs_edge
async def test_the_edge_passes_every_request_to_an_instance(stack: LocalStack) -> None:
    instances = instance_urls(stack)
    before = sum([await requests_served(url, "/healthz") for url in instances])
    async with httpx.AsyncClient(base_url=stack.urls["edge"], timeout=10) as client:
        statuses = [(await client.get("/healthz")).status_code for _ in range(20)]
    after = sum([await requests_served(url, "/healthz") for url in instances])
    assert statuses == [200] * 20
    # /healthz says private, no-store (as every route without a public policy does), so the
    # edge keeps nothing and all 20 reached the API.
    assert after - before == 20


@needs_edge
async def test_behind_the_edge_the_app_sees_the_real_client_not_a_spoofed_one(
    stack: LocalStack,
) -> None:
    request_id = f"edge-{uuid.uuid4().hex}"
    async with client_from(OUTSIDER, stack.urls["edge"]) as client:
        await client.get(
            "/no-such-page",
            headers={
                "X-Request-ID": request_id,
                "X-Forwarded-For": "203.0.113.7",
                "X-Forwarded-Proto": "https",
            },
        )
    line = seen_by_app(stack, request_id)
    assert line["client"] == OUTSIDER
    assert line["scheme"] == "http"  # what the edge says, not what the client claimed


async def test_the_gateway_ignores_forwarded_headers_from_anyone_but_the_edge(
    stack: LocalStack,
) -> None:
    request_id = f"gw-{uuid.uuid4().hex}"
    async with client_from(OUTSIDER, stack.urls["gateway"]) as client:
        await client.get(
            "/no-such-page",
            headers={
                "X-Request-ID": request_id,
                "X-Forwarded-For": "203.0.113.7",
                "X-Forwarded-Proto": "https",
            },
        )
    line = seen_by_app(stack, request_id)
    assert line["client"] == OUTSIDER
    assert line["scheme"] == "http"


async def test_an_instance_ignores_forwarded_headers_from_anyone_but_the_gateway(
    stack: LocalStack,
) -> None:
    request_id = f"direct-{uuid.uuid4().hex}"
    async with client_from(OUTSIDER, stack.urls["api.1"]) as client:
        await client.get(
            "/no-such-page",
            headers={"X-Request-ID": request_id, "X-Forwarded-For": "203.0.113.7"},
        )
    assert seen_by_app(stack, request_id)["client"] == OUTSIDER


async def test_from_the_trusted_hop_the_forwarded_client_and_scheme_reach_the_app(
    stack: LocalStack,
) -> None:
    # Locally the edge connects from 127.0.0.1, so a client there speaks as the edge does.
    request_id = f"trusted-{uuid.uuid4().hex}"
    async with client_from("127.0.0.1", stack.urls["gateway"]) as client:
        await client.get(
            "/no-such-page",
            headers={
                "X-Request-ID": request_id,
                "X-Forwarded-For": "198.51.100.4",
                "X-Forwarded-Proto": "https",
            },
        )
    line = seen_by_app(stack, request_id)
    assert line["client"] == "198.51.100.4"
    assert line["scheme"] == "https"


async def test_the_gateway_logs_the_request_id_the_app_made(stack: LocalStack) -> None:
    async with httpx.AsyncClient(base_url=stack.urls["gateway"], timeout=10) as client:
        response = await client.get("/no-such-page")  # no X-Request-ID sent
    request_id = response.headers["x-request-id"]
    assert seen_by_app(stack, request_id)["status"] == 404
    access_log = Path(stack.state_dir) / "gateway-access.log"

    def gateway_lines() -> list[dict[str, object]]:
        lines = [json.loads(line) for line in access_log.read_text().splitlines() if line]
        return [line for line in lines if line.get("downstream_X-Request-Id") == request_id]

    [line] = wait_for(gateway_lines)
    assert line["RequestPath"] == "/no-such-page"
    assert line["ServiceURL"] in instance_urls(stack)


async def post_expecting_continue(url: str, path: str, size: int) -> tuple[int, str, bytes]:
    """POST ``size`` bytes as curl does: `Expect: 100-continue`, the body only once asked for.

    A server that refuses a body it will not read closes the connection; a client that sends
    it all before reading (httpx has no `Expect` support) may get the reset before the answer.
    Returns status, content type and body of the final answer.
    """
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(
        (
            f"POST {path} HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {size}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
        ).encode()
    )
    await writer.drain()

    async def send_body() -> None:
        with contextlib.suppress(ConnectionError):
            chunk = b"x" * 65536
            for _ in range(0, size, len(chunk)):
                writer.write(chunk)
                await writer.drain()

    sending: asyncio.Task[None] | None = None
    received = b""
    with contextlib.suppress(ConnectionError):
        while True:
            data = await asyncio.wait_for(reader.read(65536), 30)
            if not data:
                break
            received += data
            if received.startswith(b"HTTP/1.1 100") and b"\r\n\r\n" in received:
                received = received.split(b"\r\n\r\n", 1)[1]  # interim: now send the body
                sending = sending or asyncio.create_task(send_body())
    if sending is not None:
        sending.cancel()
    writer.close()
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode().split("\r\n")
    headers = {k.lower(): v for k, _, v in (line.partition(": ") for line in lines[1:])}
    assert lines[0].startswith("HTTP/1.1 "), received[:300]
    return int(lines[0].split()[1]), headers.get("content-type", ""), body


async def test_oversized_bodies_are_refused_as_problems_by_the_gateway(stack: LocalStack) -> None:
    await refused_as_problem(stack, "gateway")


@needs_edge
async def test_oversized_bodies_are_refused_as_problems_through_the_edge(stack: LocalStack) -> None:
    await refused_as_problem(stack, "edge")


async def refused_as_problem(stack: LocalStack, front: str) -> None:
    """5 MB through the gateway, and through the edge in front of it: a 413 problem+json.

    The gateway's body limit answers before any instance reads the body; its errors middleware
    makes that answer problem+json. The edge refuses a declared length over the limit itself,
    unread, with the same problem, instead of its 503 HTML page for a fetch the gateway cut.
    """
    instances = instance_urls(stack)
    before = sum([await requests_served(url, "/auth/register") for url in instances])
    status, content_type, body = await post_expecting_continue(
        stack.urls[front], "/auth/register", 5 * 1000 * 1000
    )
    async with httpx.AsyncClient(base_url=stack.urls[front], timeout=30) as client:
        small = await client.post("/auth/register", json={"email": "not-an-email"})
    after = sum([await requests_served(url, "/auth/register") for url in instances])
    assert status == 413, body[:300]
    assert content_type == "application/problem+json"
    problem = json.loads(body)
    assert problem["status"] == 413
    assert "1 MiB" in problem["detail"]
    assert small.status_code == 422  # a normal body still reaches the app and its validation
    assert after - before == 1  # only the small one: no instance read the big body


async def test_metrics_are_not_exposed_through_the_gateway(stack: LocalStack) -> None:
    async with httpx.AsyncClient(timeout=10) as client:
        through_gateway = await client.get(f"{stack.urls['gateway']}/metrics")
        on_the_instance = await client.get(f"{stack.urls['api.1']}/metrics")
    assert through_gateway.status_code == 404
    assert on_the_instance.status_code == 200


async def test_migrations_ran_before_the_instances_served(stack: LocalStack) -> None:
    # The launcher migrates once, before honcho starts any instance: the stack's database is at
    # head although no instance ever runs a migration.
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    database_url = stack.state["database_url"]
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as connection:
            current = (
                await connection.execute(text("SELECT version_num FROM alembic_version"))
            ).scalar()
    finally:
        await engine.dispose()
    assert current == head
    assert make_url(database_url).database != "postgres"  # a database of the stack's own
