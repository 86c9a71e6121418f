"""The edge (a real Varnish with deploy/varnish/default.vcl) in front of an origin that uses
patterns/http_cache.py, and the purge client of patterns/cdn_purge.py.

The origin counts every request it serves: "origin hits" below are requests that reached it.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import httpx
import pytest
import uvicorn
from fastapi import FastAPI, Request

from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.patterns.cdn_purge import PurgeFailed, VarnishPurger
from {{ cookiecutter.project_slug }}.patterns.http_cache import (
    PRIVATE_NO_STORE,
    CachePolicy,
    add_surrogate_keys,
    cache_policy,
    install_http_cache,
)
from tests.edge import Edge, fetch_many, needs_varnish, start_edge

pytestmark = needs_varnish

CATALOG = CachePolicy.public(max_age=30, s_maxage=300, stale_while_revalidate=60)
SHORT_S_MAXAGE = 1
SHORT = CachePolicy.public(max_age=0, s_maxage=SHORT_S_MAXAGE, stale_while_revalidate=30)


@dataclass
class Origin:
    url: str
    names: dict[str, str] = field(default_factory=dict)
    hits: Counter[str] = field(default_factory=Counter)
    # /slow/{id} reads the name, then waits here before answering: a read that overlaps a write.
    gates: dict[str, asyncio.Event] = field(default_factory=dict)
    reading: dict[str, asyncio.Event] = field(default_factory=dict)


def origin_app(origin: Origin) -> FastAPI:
    app = FastAPI()
    install_http_cache(app)

    @app.get("/catalog/{item_id}", dependencies=[cache_policy(CATALOG)])
    async def catalog(item_id: str, request: Request) -> dict[str, str]:
        origin.hits[item_id] += 1
        add_surrogate_keys(request, f"item-{item_id}", "catalog")
        return {"id": item_id, "name": origin.names.get(item_id, "unnamed")}

    async def slow_read(item_id: str) -> dict[str, str]:
        origin.hits[f"slow-{item_id}"] += 1
        name = origin.names.get(item_id, "unnamed")
        origin.reading[item_id].set()
        await origin.gates[item_id].wait()
        return {"id": item_id, "name": name}

    @app.get("/slow/{item_id}", dependencies=[cache_policy(CATALOG)])
    async def slow(item_id: str, request: Request, keys: bool = True) -> dict[str, str]:
        if keys:
            add_surrogate_keys(request, f"item-{item_id}")
        return await slow_read(item_id)

    @app.get("/slow-private/{item_id}", dependencies=[cache_policy(PRIVATE_NO_STORE)])
    async def slow_private(item_id: str) -> dict[str, str]:
        return await slow_read(item_id)

    @app.get("/short/{item_id}", dependencies=[cache_policy(SHORT)])
    async def short(item_id: str) -> dict[str, str]:
        origin.hits[f"short-{item_id}"] += 1
        return {"id": item_id, "name": origin.names.get(item_id, "unnamed")}

    @app.get("/whoami/{case}", dependencies=[cache_policy(CATALOG)])
    async def whoami_public(case: str, request: Request) -> dict[str, str]:
        # A route that (wrongly) declares itself public yet answers per caller: the edge's
        # own rule (credentials are never cached) is what stands between users here.
        origin.hits[f"whoami-{case}"] += 1
        return {"caller": request.headers.get("authorization", "anonymous")}

    @app.get("/account/{case}", dependencies=[cache_policy(PRIVATE_NO_STORE)])
    async def account(case: str, request: Request) -> dict[str, str]:
        origin.hits[f"account-{case}"] += 1
        return {"caller": request.headers.get("authorization", "anonymous")}

    return app


@pytest.fixture(scope="module")
async def origin() -> AsyncIterator[Origin]:
    port = free_port()
    served = Origin(url=f"http://127.0.0.1:{port}")
    config = uvicorn.Config(
        origin_app(served), host="127.0.0.1", port=port, log_level="warning", lifespan="off"
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        await asyncio.sleep(0.02)
    yield served
    server.should_exit = True
    await task


@pytest.fixture(scope="module")
def edge(origin: Origin, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Edge]:
    running = start_edge(tmp_path_factory.mktemp("edge"), int(origin.url.rsplit(":", 1)[1]))
    yield running
    running.stop()


@pytest.fixture
async def client(edge: Edge) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=50, max_keepalive_connections=50)
    async with httpx.AsyncClient(base_url=edge.url, limits=limits, timeout=10) as client:
        yield client


def fresh_id() -> str:
    return uuid.uuid4().hex[:12]


@pytest.mark.load
async def test_two_thousand_requests_reach_the_origin_at_most_twice(
    origin: Origin, edge: Edge
) -> None:
    item = fresh_id()
    origin.names[item] = "lamp"

    replies = await fetch_many(edge.port, [(f"/catalog/{item}", {})] * 2000)

    assert len(replies) == 2000
    assert all(reply.status == 200 for reply in replies)
    assert {reply.body for reply in replies} == {b'{"id":"%s","name":"lamp"}' % item.encode()}
    assert origin.hits[item] <= 2
    assert Counter(reply.headers["x-cache"] for reply in replies)["HIT"] >= 1998
    # The purge keys stay at the edge.
    assert "xkey" not in replies[0].headers


async def test_a_purge_by_key_makes_the_next_request_a_miss_with_the_new_content(
    origin: Origin, client: httpx.AsyncClient, edge: Edge
) -> None:
    item, neighbour = fresh_id(), fresh_id()
    origin.names |= {item: "old name", neighbour: "neighbour"}
    await client.get(f"/catalog/{item}")
    await client.get(f"/catalog/{neighbour}")
    assert (await client.get(f"/catalog/{item}")).headers["x-cache"] == "HIT"

    origin.names[item] = "new name"
    purger = VarnishPurger([edge.url])
    try:
        await purger.purge([f"item-{item}"])
    finally:
        await purger.aclose()

    after = await client.get(f"/catalog/{item}")
    assert after.headers["x-cache"] == "MISS"
    assert after.json()["name"] == "new name"
    assert origin.hits[item] == 2
    # Purged by key, not everything: the neighbour is still served from the edge.
    assert (await client.get(f"/catalog/{neighbour}")).headers["x-cache"] == "HIT"


async def test_a_fetch_a_purge_overtook_is_fetched_again_not_stored(
    origin: Origin, client: httpx.AsyncClient, edge: Edge
) -> None:
    """The race a purge alone loses: a miss reads the old row, the write commits and purges (the
    cache is empty: nothing to drop), then the miss's answer arrives and would be stored, and
    served to everyone after the write's 2xx."""
    item = fresh_id()
    origin.names[item] = "old name"
    origin.gates[item], origin.reading[item] = asyncio.Event(), asyncio.Event()
    in_flight = asyncio.create_task(client.get(f"/slow/{item}"))
    await asyncio.wait_for(origin.reading[item].wait(), 10)  # the origin has read "old name"

    origin.names[item] = "new name"  # the write commits,
    purger = VarnishPurger([edge.url])
    try:
        await purger.purge([f"item-{item}"])  # and purges: the write's 2xx could go now
    finally:
        await purger.aclose()
    origin.gates[item].set()

    assert (await in_flight).json()["name"] == "new name"  # fetched again, after the purge
    after = await client.get(f"/slow/{item}")
    assert after.json()["name"] == "new name"
    assert after.headers["x-cache"] == "HIT"  # the second fetch was stored
    assert origin.hits[f"slow-{item}"] == 2


@pytest.mark.parametrize("path", ["/slow/{item}?keys=false", "/slow-private/{item}"])
async def test_an_overtaken_fetch_nothing_could_purge_reaches_the_origin_once(
    origin: Origin, client: httpx.AsyncClient, edge: Edge, path: str
) -> None:
    """An answer without keys, or one that is never stored, cannot be made stale by a purge:
    fetching it again would only double what the origin serves."""
    item = fresh_id()
    origin.gates[item], origin.reading[item] = asyncio.Event(), asyncio.Event()
    in_flight = asyncio.create_task(client.get(path.format(item=item)))
    await asyncio.wait_for(origin.reading[item].wait(), 10)
    purger = VarnishPurger([edge.url])
    try:
        await purger.purge(["item-unrelated"])
    finally:
        await purger.aclose()
    origin.gates[item].set()

    assert (await in_flight).status_code == 200
    assert origin.hits[f"slow-{item}"] == 1


async def test_a_purge_answers_how_many_objects_went(edge: Edge, client: httpx.AsyncClient) -> None:
    items = [fresh_id() for _ in range(3)]
    for item in items:
        await client.get(f"/catalog/{item}")
    async with httpx.AsyncClient() as raw:
        response = await raw.request(
            "PURGE", edge.url + "/", headers={"xkey-purge": " ".join(f"item-{i}" for i in items)}
        )
    assert response.status_code == 200
    assert response.headers["x-purged"] == "3"


async def test_conditional_requests_get_a_304_from_the_edge(
    origin: Origin, client: httpx.AsyncClient
) -> None:
    item = fresh_id()
    first = await client.get(f"/catalog/{item}")
    etag = first.headers["etag"]

    again = await client.get(f"/catalog/{item}", headers={"If-None-Match": etag})

    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["etag"] == etag
    assert origin.hits[item] == 1  # answered by the edge


async def test_purges_from_outside_the_local_network_are_refused(
    origin: Origin, client: httpx.AsyncClient, edge: Edge
) -> None:
    item = fresh_id()
    await client.get(f"/catalog/{item}")
    # 127.0.0.2 is loopback too, but not in the VCL's purgers ACL: it stands for "elsewhere".
    outsider = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(local_address="127.0.0.2"))
    purger = VarnishPurger([edge.url], client=outsider)
    try:
        with pytest.raises(PurgeFailed, match="403"):
            await purger.purge([f"item-{item}"])
    finally:
        await purger.aclose()
    assert (await client.get(f"/catalog/{item}")).headers["x-cache"] == "HIT"
    assert origin.hits[item] == 1


async def test_an_unreachable_edge_fails_the_purge_after_retries() -> None:
    purger = VarnishPurger([f"http://127.0.0.1:{free_port()}"], attempts=2, timeout=0.5)
    try:
        with pytest.raises(PurgeFailed, match="did not acknowledge"):
            await purger.purge(["item-1"])
    finally:
        await purger.aclose()


async def test_stale_while_revalidate_serves_the_old_object_while_one_fetch_refreshes_it(
    origin: Origin, edge: Edge, client: httpx.AsyncClient
) -> None:
    item = fresh_id()
    origin.names[item] = "before"
    await client.get(f"/short/{item}")
    filled = time.monotonic()
    origin.names[item] = "after"
    # No request may reach the edge before the burst (it would start the refresh), so there is
    # nothing to poll: let the object's s-maxage run out, counted from its fill.
    await asyncio.sleep(max(0.0, filled + SHORT_S_MAXAGE + 0.5 - time.monotonic()))

    burst = await fetch_many(edge.port, [(f"/short/{item}", {})] * 200)

    assert all(reply.status == 200 for reply in burst)
    # Nobody waited for the origin: the first ones got the stale object, the rest the
    # refreshed one, every one of them from the edge.
    assert {reply.headers["x-cache"] for reply in burst} == {"HIT"}
    assert b"before" in burst[0].body

    # The one background refresh lands: poll the edge (each read is a HIT; while the refresh
    # runs, Varnish starts no second one) until it serves the new object.
    deadline = time.monotonic() + 10
    while (await client.get(f"/short/{item}")).json()["name"] != "after":
        assert time.monotonic() < deadline, "the background refresh never landed"
        await asyncio.sleep(0.05)
    assert origin.hits[f"short-{item}"] == 2  # the first fill and one background refresh


async def test_private_responses_are_never_stored(
    origin: Origin, client: httpx.AsyncClient
) -> None:
    case = fresh_id()
    for _ in range(3):
        response = await client.get(f"/account/{case}")
        assert response.headers["x-cache"] in {"MISS", "PASS"}
    assert origin.hits[f"account-{case}"] == 3


@pytest.mark.load
async def test_an_authenticated_answer_is_never_served_to_another_caller(
    origin: Origin, edge: Edge
) -> None:
    case = fresh_id()
    callers = ["Bearer user-a", "Bearer user-b", None] * 400
    requests = [
        (f"/{route}/{case}", {"Authorization": caller} if caller else {})
        for route in ("whoami", "account")
        for caller in callers
    ]

    replies = await fetch_many(edge.port, requests)

    assert len(replies) == 2400
    assert all(reply.status == 200 for reply in replies)
    leaks = [
        (headers.get("Authorization"), reply.body)
        for (_, headers), reply in zip(requests, replies, strict=True)
        if json.loads(reply.body)["caller"] != headers.get("Authorization", "anonymous")
    ]
    assert leaks == []
