"""The application cache and the CDN purge client of this service.

Built from settings by the app's lifespan (one of each per process, on ``app.state``) and handed
to endpoints as typed dependencies. The patterns themselves (patterns/cache.py,
patterns/cdn_purge.py) know nothing of settings or FastAPI.

Writes call :func:`invalidate_after_commit` with what they touched; the request's session runs
it after its commit and before the response (patterns/on_commit.py), so a client that got the
write's 2xx reads the new value from Redis and from the edge.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.cache import (
    Cache,
    CacheMetrics,
    CacheRegion,
    CircuitBreaker,
    cache_redis_client,
)
from {{ cookiecutter.project_slug }}.patterns.cdn_purge import NoEdge, Purger, VarnishPurger
from {{ cookiecutter.project_slug }}.patterns.on_commit import on_commit


def create_cache(settings: Settings, registry: CollectorRegistry) -> Cache:
    return Cache(
        cache_redis_client(
            settings.cache_redis,
            timeout=settings.cache_timeout,
            max_connections=settings.cache_max_connections,
        ),
        prefix=settings.cache_key_prefix,
        metrics=CacheMetrics(registry),
        breaker=CircuitBreaker(
            failure_threshold=settings.cache_breaker_failures,
            reset_timeout=settings.cache_breaker_reset_seconds,
        ),
        timeout=settings.cache_timeout,
        lease_ttl=settings.cache_lease_ttl,
        wait_timeout=settings.cache_wait_timeout,
        jitter=settings.cache_ttl_jitter,
        enabled=settings.cache_enabled,
    )


def create_purger(settings: Settings) -> Purger:
    endpoints = settings.cdn_purge_endpoints
    if not endpoints:
        return NoEdge()
    return VarnishPurger(endpoints, timeout=settings.cdn_purge_timeout)


# async, as every dependency on a hot path: a plain def runs in the thread pool.
async def get_cache(request: Request) -> Cache:
    cache: Cache = request.app.state.cache
    return cache


async def get_purger(request: Request) -> Purger:
    purger: Purger = request.app.state.purger
    return purger


AppCache = Annotated[Cache, Depends(get_cache)]
EdgePurger = Annotated[Purger, Depends(get_purger)]


# --- after the commit: invalidate what a write touched ------------------------------------

_CLIENTS = "cache_clients"
_PENDING = "cache_pending_invalidations"


def bind_invalidation(session: AsyncSession, cache: Cache | None, purger: Purger | None) -> None:
    """Give ``session``'s unit of work the clients its invalidations go through. The request's
    session dependency does it; a job that writes catalog rows does it with its own clients."""
    if cache is not None and purger is not None:
        session.info[_CLIENTS] = (cache, purger)


@dataclass
class _Pending:
    keys: dict[str, tuple[CacheRegion[Any], set[str]]] = field(default_factory=dict)
    scopes: set[str] = field(default_factory=set)
    surrogate_keys: set[str] = field(default_factory=set)


def invalidate_after_commit(
    session: AsyncSession,
    *,
    keys: Mapping[CacheRegion[Any], Iterable[str]] | None = None,
    scopes: Iterable[str] = (),
    surrogate_keys: Iterable[str] = (),
) -> None:
    """Once ``session`` commits (never if it rolls back), and before the response: delete
    ``keys`` from the app cache, move ``scopes`` on, and purge ``surrogate_keys`` at the edge.

    Everything one transaction asks for goes out together, each key once. A session with no
    clients bound (the seed script, a fresh database) has nothing cached to invalidate.
    """
    pending: _Pending | None = session.info.get(_PENDING)
    if pending is None:
        pending = _Pending()
        session.info[_PENDING] = pending
    for region, region_keys in (keys or {}).items():
        pending.keys.setdefault(region.name, (region, set()))[1].update(region_keys)
    pending.scopes.update(scopes)
    pending.surrogate_keys.update(surrogate_keys)
    collected = pending

    async def flush() -> None:
        session.info.pop(_PENDING, None)
        clients: tuple[Cache, Purger] | None = session.info.get(_CLIENTS)
        if clients is None:
            return
        cache, purger = clients
        # The app cache first: once the edge is purged, its next fetch must find Redis clean
        # too, or it would store the old value again.
        for region, region_keys in collected.keys.values():
            await cache.invalidate(region, *sorted(region_keys))
        for scope in sorted(collected.scopes):
            await cache.invalidate_scope(scope)
        if collected.surrogate_keys:
            await purger.purge(collected.surrogate_keys)

    # Registered on every call but kept once per transaction (the key). After a rollback the
    # collected keys stay and go out with the next commit: invalidating too much is harmless.
    on_commit(session, flush, key=_PENDING)
