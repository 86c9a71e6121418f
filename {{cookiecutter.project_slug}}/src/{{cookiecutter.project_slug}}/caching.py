"""The application cache and the CDN purge client of this service.

Built from settings by the app's lifespan (one of each per process, on ``app.state``) and handed
to endpoints as typed dependencies. The patterns themselves (patterns/cache.py,
patterns/cdn_purge.py) know nothing of settings or FastAPI.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from prometheus_client import CollectorRegistry

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.cache import (
    Cache,
    CacheMetrics,
    CircuitBreaker,
    cache_redis_client,
)
from {{ cookiecutter.project_slug }}.patterns.cdn_purge import NoEdge, Purger, VarnishPurger


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
    )


def create_purger(settings: Settings) -> Purger:
    endpoints = settings.cdn_purge_endpoints
    if not endpoints:
        return NoEdge()
    return VarnishPurger(endpoints, timeout=settings.cdn_purge_timeout)


def get_cache(request: Request) -> Cache:
    cache: Cache = request.app.state.cache
    return cache


def get_purger(request: Request) -> Purger:
    purger: Purger = request.app.state.purger
    return purger


AppCache = Annotated[Cache, Depends(get_cache)]
EdgePurger = Annotated[Purger, Depends(get_purger)]
