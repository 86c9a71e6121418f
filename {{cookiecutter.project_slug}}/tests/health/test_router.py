from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import text

from devstack.servers import free_port

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.config import Settings
from tests.lifespan import running


async def test_healthz_answers_without_touching_dependencies(app_client: AsyncClient) -> None:
    response = await app_client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


async def test_readyz_checks_postgres_and_redis(app_client: AsyncClient) -> None:
    response = await app_client.get("/readyz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["postgres"]["status"] == "ok"
    assert body["checks"]["redis"]["status"] == "ok"


async def ready_response(
    settings: Settings, *, pooled: bool = False
) -> tuple[int, dict[str, object], str]:
    """``pooled``: open the app's first Postgres connection before the probe, as a serving
    instance has; a first connect (and asyncpg's type introspection) can take longer than
    the probe's deadline on a loaded machine, and these tests are about the other checks."""
    app = create_app(settings)
    async with running(app):
        if pooled:
            async with app.state.engine.connect():
                pass
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/readyz")
    return response.status_code, response.json(), response.headers["content-type"]


def nothing_listens_at() -> str:
    # A port we just freed: connections are refused, as when a server is down.
    return f"127.0.0.1:{free_port()}"


@pytest.fixture
def settings_with_dead_postgres(settings: Settings) -> Settings:
    return settings.model_copy(
        update={"database_url": f"postgresql+asyncpg://postgres@{nothing_listens_at()}/x"}
    )


async def test_readyz_is_503_naming_postgres_when_it_is_down(
    settings_with_dead_postgres: Settings,
) -> None:
    status, body, content_type = await ready_response(settings_with_dead_postgres)
    assert status == 503
    assert content_type == "application/problem+json"
    assert body["detail"] == "Unavailable: postgres"
    checks = body["checks"]
    assert isinstance(checks, dict)
    assert checks["postgres"]["status"] == "fail"
    assert checks["redis"]["status"] == "ok"
    # The probe says which dependency, never how to reach it.
    assert "127.0.0.1" not in str(body)


async def test_readyz_stays_200_degraded_when_redis_is_down(settings: Settings) -> None:
    # Every instance shares that Redis: failing readiness on it would empty the pool, while
    # the cache is fail-open and Postgres serves every read.
    dead_redis = settings.model_copy(update={"redis_url": f"redis://{nothing_listens_at()}/0"})
    app = create_app(dead_redis)
    async with running(app):
        async with app.state.engine.connect():
            pass  # pooled, as a serving instance is (see ready_response)
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/readyz")
            metrics = (await client.get("/metrics")).text
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded"
    assert body["degraded"] == ["redis"]
    assert body["checks"]["redis"]["status"] == "fail"
    assert 'dependency_up{dependency="redis",required="false"} 0.0' in metrics
    assert 'dependency_up{dependency="postgres",required="true"} 1.0' in metrics


async def test_readyz_names_every_failed_dependency(settings: Settings) -> None:
    both_dead = settings.model_copy(
        update={
            "redis_url": f"redis://{nothing_listens_at()}/0",
            "database_url": f"postgresql+asyncpg://postgres@{nothing_listens_at()}/x",
        }
    )
    status, body, _ = await ready_response(both_dead)
    assert status == 503
    assert body["detail"] == "Unavailable: postgres"
    assert body["degraded"] == ["postgres", "redis"]


@pytest.fixture
async def blackholed_port() -> AsyncIterator[int]:
    """A server that accepts connections and never answers: the worst kind of outage."""
    import asyncio

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # wait until the client gives up

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    server.close()


async def test_readyz_does_not_hang_on_a_blackholed_dependency(
    settings: Settings, blackholed_port: int
) -> None:
    hung_redis = settings.model_copy(
        update={
            "redis_url": f"redis://127.0.0.1:{blackholed_port}/0",
            "redis_socket_timeout": 30.0,
            "readiness_timeout": 0.3,
        }
    )
    status, body, _ = await ready_response(hung_redis, pooled=True)
    assert status == 200
    checks = body["checks"]
    assert isinstance(checks, dict)
    assert checks["redis"]["error"] == "timed out after 0.3s"


async def test_the_gateway_error_page_is_a_problem_hidden_from_the_contract(
    app_client: AsyncClient,
) -> None:
    response = await app_client.get("/_gateway/errors/413")
    assert response.status_code == 413
    assert response.headers["content-type"] == "application/problem+json"
    assert "1 MiB" in response.json()["detail"]
    assert (await app_client.get("/_gateway/errors/500")).status_code == 404
    schema = (await app_client.get("/openapi.json")).json()
    assert not [path for path in schema["paths"] if path.startswith("/_gateway")]


async def test_a_busy_pool_does_not_make_an_instance_unready(settings: Settings) -> None:
    # Every pooled connection is out serving requests. A probe that queued for one would miss
    # the gateway's timeout and take a healthy instance out of rotation; the statement that
    # just succeeded already proves Postgres answers.
    busy = settings.model_copy(
        update={"db_pool_size": 1, "db_max_overflow": 0, "readiness_timeout": 30.0}
    )
    app = create_app(busy)
    async with running(app), app.state.engine.connect() as held:
        await held.execute(text("SELECT 1"))
        transport = ASGITransport(app=app)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:
            response = await client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["postgres"]["status"] == "ok"
