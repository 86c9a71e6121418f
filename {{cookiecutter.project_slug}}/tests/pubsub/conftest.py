"""Fixtures of the pub-sub proofs: a Redis client and a stream namespace per test."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[Redis]:
    client = Redis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def prefix(redis: Redis) -> AsyncIterator[str]:
    """A stream namespace of this test's own; deleted afterwards (never FLUSHDB)."""
    value = f"test-events-{secrets.token_hex(4)}:"
    yield value
    keys = [key async for key in redis.scan_iter(match=f"{value}*")]
    if keys:
        await redis.delete(*keys)
