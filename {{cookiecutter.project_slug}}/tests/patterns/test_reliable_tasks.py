from __future__ import annotations

import asyncio

import asyncpg
import pytest
import redis.exceptions
import sqlalchemy.exc
from celery.exceptions import SoftTimeLimitExceeded

from {{ cookiecutter.project_slug }}.patterns.reliable_tasks import (
    JobRuntime,
    TransientError,
    backoff_delay,
    is_transient,
)


def wrapped(orig: BaseException) -> sqlalchemy.exc.DBAPIError:
    return sqlalchemy.exc.DBAPIError("SELECT 1", {}, orig)


@pytest.mark.parametrize(
    "error",
    [
        ConnectionError("reset by peer"),
        TimeoutError(),
        redis.exceptions.ConnectionError("gone"),
        sqlalchemy.exc.TimeoutError("no pooled connection"),
        wrapped(asyncpg.SerializationError("could not serialize")),
        wrapped(asyncpg.DeadlockDetectedError("deadlock")),
        TransientError("provider said 503"),
    ],
)
def test_connection_drops_timeouts_and_lost_races_are_transient(error: BaseException) -> None:
    assert is_transient(error)


@pytest.mark.parametrize(
    "error",
    [
        ValueError("bad date range"),
        KeyError("missing"),
        wrapped(asyncpg.UniqueViolationError("duplicate key")),
        SoftTimeLimitExceeded(),
    ],
)
def test_bad_input_bugs_and_time_limits_are_not(error: BaseException) -> None:
    assert not is_transient(error)


def test_a_cause_chain_is_followed() -> None:
    outer = RuntimeError("report failed")
    outer.__cause__ = ConnectionError("socket closed")
    assert is_transient(outer)


def test_backoff_grows_exponentially_with_equal_jitter_and_a_cap() -> None:
    lowest = [backoff_delay(n, base=1.0, cap=30.0, rand=lambda: 0.0) for n in range(7)]
    highest = [backoff_delay(n, base=1.0, cap=30.0, rand=lambda: 1.0) for n in range(7)]
    assert lowest == [0.5, 1.0, 2.0, 4.0, 8.0, 15.0, 15.0]
    assert highest == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_the_soft_time_limit_is_an_asyncio_deadline_not_a_transient_timeout() -> None:
    async def nothing() -> None:
        return None

    async def slow(_: None) -> None:
        await asyncio.sleep(5)

    async def client_timeout(_: None) -> None:
        await asyncio.wait_for(asyncio.sleep(5), timeout=0.01)

    async def closed(_: None) -> None:
        return None

    runtime: JobRuntime[None] = JobRuntime(
        open_resources=nothing,
        close_resources=closed,
        dead_letter=lambda _, __: nothing(),
        soft_time_limit=0.1,
    )
    try:
        with pytest.raises(SoftTimeLimitExceeded):
            runtime.run(slow)
        # A client's own timeout inside the job stays a (transient) TimeoutError.
        with pytest.raises(TimeoutError):
            runtime.run(client_timeout)
    finally:
        runtime.stop()
