"""One request's trace continues into the job it started and the events it wrote: a real API
process, worker, relay and consumers export over OTLP (devstack/otlp.py says why the
receiver is ours); the worker's job span and the consumer's handling span are descendants of
the request's span, in the same trace, with each side's SQL spans.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import date

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from devstack.api_process import uvicorn_command, wait_until_healthy
from devstack.otlp import OtlpReceiver, ReceivedSpan, otlp_receiver
from devstack.servers import free_port, stop_process

from tests.factories import make_user
from tests.s3_server import S3Server
from tests.worker.helpers import eventually
from tests.worker_harness import JobStack, broker_url, require_broker


@pytest.fixture(scope="module")
def receiver() -> Iterator[OtlpReceiver]:
    with otlp_receiver() as running:
        yield running


@pytest.fixture(scope="module")
def traced_stack(
    receiver: OtlpReceiver,
    jobs_database_url: str,
    redis_url: str,
    s3: S3Server,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[JobStack, str]]:
    """A worker and an API process, both exporting to ``receiver`` (Redis broker); the report
    file goes to the session's real S3."""
    require_broker("redis", broker_url("redis"))
    log_dir = tmp_path_factory.mktemp("traced")
    env = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url,
        "OTEL_SERVICE_NAME": "shop",
        # Export within a tenth of a second, not the default 5 s: the proof polls for spans.
        "OTEL_BSP_SCHEDULE_DELAY": "100",
        "S3_ENDPOINT_URL": s3.endpoint,
        "S3_BUCKET": s3.bucket,
        "S3_ACCESS_KEY_ID": s3.access_key,
        "S3_SECRET_ACCESS_KEY": s3.secret_key,
    }
    env["EVENTS_STREAM_PREFIX"] = f"traced-{secrets.token_hex(4)}:"
    env["OUTBOX_POLL_INTERVAL"] = "0.05"
    stack = JobStack("redis", jobs_database_url, redis_url, log_dir, extra_env=env)
    started: list[subprocess.Popen[bytes]] = []

    def start(name: str, command: list[str]) -> subprocess.Popen[bytes]:
        with (log_dir / f"{name}.log").open("wb") as log:
            process = subprocess.Popen(
                command, env=stack.env(), stdout=log, stderr=subprocess.STDOUT
            )
        started.append(process)
        return process

    try:
        stack.start_workers(1)
        for role in ("relay", "consumers"):
            start(role, [sys.executable, "-m", "{{ cookiecutter.project_slug }}", role])
        port = free_port()
        api = start("api", uvicorn_command(port))
        base_url = f"http://127.0.0.1:{port}"
        wait_until_healthy(api, base_url, log_path=log_dir / "api.log")
        yield stack, base_url
    finally:
        for process in started:
            stop_process(process)
        stack.close()


@pytest.fixture
async def staff_client(
    traced_stack: tuple[JobStack, str], jobs_engine: AsyncEngine
) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the traced API, signed in as a new staff user."""
    stack, base_url = traced_stack
    async with AsyncSession(jobs_engine, expire_on_commit=False) as session:
        staff = await make_user(session, stack.settings(), staff=True)
        await session.commit()
    async with httpx.AsyncClient(base_url=base_url, headers=staff.headers, timeout=30) as client:
        yield client


def server_span(spans: list[ReceivedSpan], name: str) -> ReceivedSpan:
    [span] = [
        s
        for s in spans
        if s.service == "shop-api" and s.kind == "SPAN_KIND_SERVER" and s.name == name
    ]
    return span


async def exported(receiver: OtlpReceiver, service: str, name: str, what: str) -> ReceivedSpan:
    """The one span ``name`` of ``service``, once the process's batch exporter sent it."""

    def matching() -> list[ReceivedSpan]:
        return [s for s in receiver.snapshot() if s.service == service and s.name == name]

    async def arrived() -> bool:
        return bool(matching())

    await eventually(arrived, within=30, what=what)
    [span] = matching()
    return span


def ancestors(span: ReceivedSpan, spans: list[ReceivedSpan]) -> list[ReceivedSpan]:
    by_id = {s.span_id: s for s in spans}
    chain = []
    while span.parent_id in by_id:
        span = by_id[span.parent_id]
        chain.append(span)
    return chain


async def test_a_report_request_and_its_job_are_one_trace(
    traced_stack: tuple[JobStack, str], receiver: OtlpReceiver, staff_client: httpx.AsyncClient
) -> None:
    stack, _ = traced_stack
    body = {"start": date(2001, 1, 1).isoformat(), "end": date(2001, 1, 3).isoformat()}
    response = await staff_client.post("/reports", json=body)
    assert response.status_code == 202, response.text
    location = response.headers["location"]

    async def finished() -> bool:
        status = (await staff_client.get(location)).json()["status"]
        return status in {"succeeded", "failed"}

    await eventually(finished, within=60, what="the report job")
    job = (await staff_client.get(location)).json()
    assert job["status"] == "succeeded", job

    run = await exported(
        receiver, "shop-worker", "run/reports.sales_report", "the worker's job span"
    )
    spans = receiver.snapshot()
    request = server_span(spans, "POST /reports")
    assert run.trace_id == request.trace_id
    chain = ancestors(run, spans)
    assert request in chain, [(s.service, s.name) for s in chain]
    publish = chain[0]  # the enqueue, inside the request: the context crossed in the headers
    assert publish.service == "shop-api", publish
    assert publish.name == "apply_async/reports.sales_report", publish
    trace = [s for s in spans if s.trace_id == request.trace_id]
    sql = {s.service for s in trace if s.attributes.get("db.system") == "postgresql"}
    assert sql == {"shop-api", "shop-worker"}, sql
    # The job's log lines carry the request's trace id.
    [worker] = stack.processes
    assert any(e.get("trace_id") == request.trace_id for e in worker.events())


async def test_a_product_update_and_its_event_handling_are_one_trace(
    receiver: OtlpReceiver, staff_client: httpx.AsyncClient
) -> None:
    product = {"sku": f"TRACE-{secrets.token_hex(4)}", "name": "Traced", "price_cents": 100}
    created = await staff_client.post("/products", json=product)
    assert created.status_code == 201, created.text
    path = f"/products/{created.json()['id']}"
    updated = await staff_client.patch(path, json={"price_cents": 250})
    assert updated.status_code == 200, updated.text

    # The outbox row carried the request's trace context through the relay and the stream.
    handled = await exported(
        receiver, "shop-consumers", "events.handle cache", "the consumer's handling span"
    )
    spans = receiver.snapshot()
    request = server_span(spans, "PATCH /products/{product_id}")
    assert handled.trace_id == request.trace_id
    assert request in ancestors(handled, spans)
    assert handled.kind == "SPAN_KIND_CONSUMER"
    handler_sql = [
        s
        for s in spans
        if s.service == "shop-consumers"
        and s.attributes.get("db.system") == "postgresql"
        and handled in ancestors(s, spans)
    ]
    assert handler_sql, "the handler's inbox insert is a span of the handling"
