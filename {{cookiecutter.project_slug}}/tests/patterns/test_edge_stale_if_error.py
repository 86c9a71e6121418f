"""stale-if-error at the edge: a real Varnish (deploy/varnish/default.vcl) keeps serving a
cacheable object when the origin fails, for the object's ``stale-if-error`` and no longer.

The origin declares ``s-maxage=1, stale-while-revalidate=1, stale-if-error=STALE_IF_ERROR``.
Clients read one object without pause while the origin first answers every request with a 5xx
(alternately the app's 503 problem+json, as in a Postgres outage, and the gateway's plain 503,
as when no instance is up), then stops listening altogether. Every answer is counted: stale
copies served, requests the failing origin received, and the edge's own 503 problem+json once
the object is past its allowance.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from fastapi.responses import JSONResponse, PlainTextResponse, Response

from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.patterns.http_cache import (
    CachePolicy,
    cache_policy,
    install_http_cache,
)
from tests.edge import Edge, needs_varnish, start_edge

pytestmark = [needs_varnish, pytest.mark.load]

S_MAXAGE = 1
STALE_IF_ERROR = 5
POLICY = CachePolicy.public(
    max_age=0, s_maxage=S_MAXAGE, stale_while_revalidate=1, stale_if_error=STALE_IF_ERROR
)
CLIENTS = 8
BODY = b'{"id":"lamp","name":"lamp"}'


@dataclass
class Origin:
    port: int
    failing: bool = False
    served: Counter[str] = field(default_factory=Counter)
    server: uvicorn.Server | None = None
    task: asyncio.Task[None] | None = None


def origin_app(origin: Origin) -> FastAPI:
    app = FastAPI()
    install_http_cache(app)

    @app.get("/items/{item_id}", dependencies=[cache_policy(POLICY)], response_model=None)
    async def item(item_id: str) -> Response | dict[str, str]:
        if not origin.failing:
            origin.served["ok"] += 1
            return {"id": item_id, "name": "lamp"}
        origin.served["error"] += 1
        if origin.served["error"] % 2:
            return JSONResponse(
                {"title": "Service Unavailable", "status": 503},
                status_code=503,
                media_type="application/problem+json",
            )
        return PlainTextResponse("no available server", status_code=503)

    return app


@pytest.fixture
async def origin() -> AsyncIterator[Origin]:
    served = Origin(port=free_port())
    config = uvicorn.Config(
        origin_app(served), host="127.0.0.1", port=served.port, log_level="warning", lifespan="off"
    )
    served.server = uvicorn.Server(config)
    served.task = asyncio.create_task(served.server.serve())
    while not served.server.started:
        await asyncio.sleep(0.02)
    yield served
    await stop(served)


async def stop(origin: Origin) -> None:
    if origin.server is not None and origin.task is not None and not origin.task.done():
        origin.server.should_exit = True
        await origin.task


@pytest.fixture
def edge(origin: Origin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    running = start_edge(tmp_path_factory.mktemp("edge-stale"), origin.port)
    yield running
    running.stop()


async def test_the_edge_serves_stale_while_the_origin_fails_for_stale_if_error_only(
    origin: Origin, edge: Edge, results: dict[str, Any]
) -> None:
    path = "/items/lamp"
    replies: list[tuple[str, int, str, int]] = []  # (phase, status, x-cache, age)
    # When each reply's request left and its answer came, on the loop's clock: the edge decides
    # stale-or-503 somewhere in between, so two requests in flight at once may end either way.
    spans: list[tuple[float, float]] = []
    bodies: set[bytes] = set()
    problems: list[httpx.Response] = []
    phase = "warm"
    stop_reading = asyncio.Event()

    async def reader() -> None:
        async with httpx.AsyncClient(base_url=edge.url, timeout=30) as client:
            clock = asyncio.get_running_loop().time
            while not stop_reading.is_set():
                sent = clock()
                response = await client.get(path)
                spans.append((sent, clock()))
                replies.append(
                    (
                        phase,
                        response.status_code,
                        response.headers.get("x-cache", ""),
                        int(response.headers.get("age", "0")),
                    )
                )
                if response.status_code == 200:
                    bodies.add(response.content)
                else:
                    problems.append(response)
                await asyncio.sleep(0.01)

    async def until(predicate: Any, what: str, within: float = 30) -> None:
        async def poll() -> None:
            while not predicate():
                await asyncio.sleep(0.02)

        try:
            await asyncio.wait_for(poll(), within)
        except TimeoutError:
            raise AssertionError(f"{what}: {Counter(replies)}") from None

    def stale(in_phase: str) -> int:
        return sum(1 for p, _, cache, _ in replies if p == in_phase and cache == "STALE")

    readers = [asyncio.create_task(reader()) for _ in range(CLIENTS)]
    try:
        await until(lambda: len(replies) >= CLIENTS, "warm reads")
        # Every instance answers 5xx: the app's own problem, or the gateway's plain 503.
        origin.failing = True
        phase = "origin_5xx"
        await until(lambda: stale("origin_5xx") >= 50, "stale copies while the origin fails")
        # Then nothing answers at all.
        await stop(origin)
        phase = "origin_down"
        await until(lambda: stale("origin_down") >= 50, "stale copies with the origin down")
        # Past stale-if-error, the failure is the answer.
        await until(lambda: len(problems) >= 20, "the edge's 503 once the allowance is spent")
    finally:
        stop_reading.set()
        await asyncio.gather(*readers)

    failures = [i for i, reply in enumerate(replies) if reply[1] != 200]
    # Every request answered before the first failure was sent was within the allowance; every
    # request sent after the first failure was answered is past it.
    first_failure_sent = min(spans[i][0] for i in failures)
    first_failure_answered = min(spans[i][1] for i in failures)
    served = [
        r for r, (_, answered) in zip(replies, spans, strict=True) if answered < first_failure_sent
    ]
    past = [r for r, (sent, _) in zip(replies, spans, strict=True) if sent > first_failure_answered]
    failed = [replies[i] for i in failures]
    by_phase = {
        name: dict(Counter(f"{status} {cache}" for p, status, cache, _ in replies if p == name))
        for name in ("warm", "origin_5xx", "origin_down")
    }
    results["stale_if_error"] = {
        "requests": len(replies),
        "by_phase": by_phase,
        "stale_served": sum(1 for _, _, cache, _ in replies if cache == "STALE"),
        "origin_errors": origin.served["error"],
        "oldest_stale_age": max(age for _, _, cache, age in replies if cache == "STALE"),
        "edge_503": len(failed),
    }
    print(f"\nstale-if-error at the edge: {results['stale_if_error']}")  # noqa: T201

    # Until the allowance is spent, every client got the object, and only the good copy.
    assert {status for _, status, _, _ in served} == {200}
    assert bodies == {BODY}
    # The copies served past stale-while-revalidate are marked, and never older than
    # s-maxage + stale-if-error (Varnish's own Age of the object).
    assert stale("origin_5xx") >= 50
    assert stale("origin_down") >= 50
    assert all(age <= S_MAXAGE + STALE_IF_ERROR for _, _, cache, age in replies if cache == "STALE")
    # The origin was asked (stale-if-error serves after a failure, not instead of asking).
    assert origin.served["error"] > 0
    # Then only the edge's problem: no stale copy once past the bound, no HTML error page.
    assert {status for _, status, _, _ in failed} == {503}
    assert past, "no request was sent after the allowance was spent"
    assert {status for _, status, _, _ in past} == {503}
    for response in problems:
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == 503
        assert response.headers["retry-after"] == "5"


@pytest.fixture
def results() -> dict[str, Any]:
    return {}
