"""A login burst larger than the pool: no login waits for a connection while another runs its
Argon2 hash, so none fails with the pool's timeout (503).

The real app in this process, on the committed database, with a pool of 2 and a pool timeout
of 2 s; 24 logins at once. Each login holds a connection for one SELECT (ms), then hashes
(tens of ms each), at most one hash per core at a time. Holding the connection through the
hash, as login once did, makes the 24th wait for 23 hashes on two connections: past the
timeout. Releasing it but hashing 24 at once failed too (8 of 24 were 503s): 24 hashing
threads on two cores starve the event loop's thread, and the queued checkouts time out.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from httpx import ASGITransport, AsyncClient
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.auth.security import hash_password
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.models import User
from tests.lifespan import running

pytestmark = pytest.mark.load

POOL = 2
BURST = 24
PASSWORD = "correct horse battery"


async def test_a_login_burst_larger_than_the_pool_never_times_out_on_it(
    committed_settings: Settings, committed_engine: AsyncEngine
) -> None:
    async with committed_engine.begin() as connection:
        await connection.execute(
            insert(User).values(
                email="burst@example.com", password_hash=await hash_password(PASSWORD)
            )
        )
    settings = committed_settings.model_copy(
        update={"db_pool_size": POOL, "db_max_overflow": 0, "db_pool_timeout": 2.0}
    )
    app = create_app(settings)
    async with running(app):
        transport = ASGITransport(app=app, raise_app_exceptions=False)
        async with AsyncClient(transport=transport, base_url="http://testserver") as client:

            async def login() -> int:
                response = await client.post(
                    "/auth/login", json={"email": "burst@example.com", "password": PASSWORD}
                )
                return response.status_code

            statuses = Counter(await asyncio.gather(*(login() for _ in range(BURST))))
            checked_out = app.state.engine.pool.checkedout()
    pool_timeouts = statuses[503]
    assert pool_timeouts == 0, statuses
    assert statuses == Counter({200: BURST})
    assert checked_out == 0
