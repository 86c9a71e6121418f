"""The cache-aside engine: :class:`Cache` (see the package docstring for what it guarantees).

Round trips to Redis: a hit is one (:data:`.scripts.READ`: generation, entry and, on a miss,
the lease, together); a miss that loads is two (that, then :data:`.scripts.STORE_IF_LEASED`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar

import structlog
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from . import scripts
from .breaker import CircuitBreaker
from .metrics import CacheMetrics
from .regions import Cached, CacheRegion

T = TypeVar("T")

log = structlog.get_logger(__name__)

_REDIS_FAILURES = (RedisError, OSError, TimeoutError)


def cache_redis_client(url: str, *, timeout: float, max_connections: int = 20) -> Redis:
    """A Redis client fit for a cache: short timeouts, no retries (the breaker decides), and
    at most ``max_connections`` connections (the :class:`Cache` queues callers for them)."""
    return Redis.from_url(
        url,
        max_connections=max_connections,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
        health_check_interval=30,
    )


class _Failed:
    """A Redis call that failed or timed out (already counted and logged)."""


_FAILED: Final = _Failed()


class _Unset:
    """Not there yet: a body not rendered, or a value not decoded."""


_UNSET: Final = _Unset()

_HIT: Final = b"hit"
_STALE: Final = b"stale"


@dataclass(frozen=True, slots=True)
class _Read:
    """What one READ script call found."""

    state: bytes  # hit, stale or miss
    generation: str
    cached: Cached | None  # the entry's body (None: a cached "not found"); for hit and stale
    lease: str | None  # ours, when the script gave it to us
    corrupt: bool = False


@dataclass(frozen=True, slots=True)
class _Filled:
    # The body (None: not found) and, when this process loaded it, the value itself.
    cached: Cached | _Unset | None
    value: Any
    # The ticket counter when the read behind it (a database query or a Redis read) was
    # issued. A caller whose ticket is higher started after that read: it may have started
    # after a write's invalidation that the read predates, so it must not take the result.
    read_at: int


class Cache:
    """Cache-aside over one Redis client. Create one per process (the app's lifespan)."""

    def __init__(
        self,
        redis: Redis,
        *,
        prefix: str,
        metrics: CacheMetrics,
        breaker: CircuitBreaker | None = None,
        timeout: float = 0.25,
        lease_ttl: float = 5.0,
        wait_timeout: float = 3.0,
        jitter: float = 0.1,
        enabled: bool = True,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.metrics = metrics
        self.breaker = breaker or CircuitBreaker()
        self.timeout = timeout
        self.lease_ttl = lease_ttl
        self.wait_timeout = wait_timeout
        self.jitter = jitter
        self.enabled = enabled
        self._clock = clock
        self._inflight: dict[str, asyncio.Future[_Filled]] = {}
        # One Redis command per pooled connection at a time, callers queued first come, first
        # served. redis-py's own BlockingConnectionPool lets newcomers overtake its waiters,
        # so under a burst a few callers starve into timeouts (and trip the breaker).
        self._gate = asyncio.Semaphore(redis.connection_pool.max_connections)
        # Every lookup takes the next ticket (see _Filled.read_at).
        self._ticket = 0
        self._read_script = redis.register_script(scripts.READ)
        self._store_if_leased = redis.register_script(scripts.STORE_IF_LEASED)
        self._release_lease = redis.register_script(scripts.RELEASE_LEASE)
        self._bump_generation = redis.register_script(scripts.BUMP_GENERATION)

    def key(self, region: CacheRegion[Any], key: str, *, scope: str | None = None) -> str:
        """The Redis key of an entry. The braces are a Redis Cluster hash tag: an entry, its
        lease and its scope's generation share a slot, so each script works on a cluster."""
        base = f"{self.prefix}:{region.name}:{region.fingerprint}:"
        if scope is None:
            return base + "{" + key + "}"
        return base + "{" + scope + "}:" + key

    # Reading -------------------------------------------------------------------------------

    async def get_or_load(
        self,
        region: CacheRegion[T],
        key: str,
        loader: Callable[[], Awaitable[T | None]],
        *,
        scope: str | None = None,
    ) -> T | None:
        """The value for ``key``: from Redis, or from ``loader`` (``None`` = not found).

        ``loader`` must read committed data as of when it runs (Postgres's default READ
        COMMITTED does): values it returns may be handed to callers that started before it.

        ``scope`` names a group of keys invalidated together (every page of a listing, every
        summary of one user): entries carry the scope's generation, and
        :meth:`invalidate_scope` moves the scope to a new one, so the old entries are never
        read again (they expire by TTL).

        A value from Redis is validated against the region's type; :meth:`get_or_load_json`
        skips that for a value that only becomes a response body.
        """
        filled = await self._get(region, key, loader, scope)
        if not isinstance(filled.value, _Unset):
            value: T | None = filled.value
            return value
        if filled.cached is None:
            return None
        assert isinstance(filled.cached, Cached)
        try:
            return region.adapter.validate_json(filled.cached.body)
        except ValidationError:
            self.metrics.errors.labels("decode").inc()
            log.warning("cache.undecodable_entry", region=region.name)
            return await self._load(region, loader)

    async def get_or_load_json(
        self,
        region: CacheRegion[T],
        key: str,
        loader: Callable[[], Awaitable[T | None]],
        *,
        scope: str | None = None,
    ) -> Cached | None:
        """As :meth:`get_or_load`, but the value's JSON and ETag (``None`` = not found): a hit
        is served as the bytes stored, with no validation or encoding. The body is the type's
        JSON, rendered once, when the loaded value was stored."""
        filled = await self._get(region, key, loader, scope)
        if isinstance(filled.cached, _Unset):
            return None if filled.value is None else region.render(filled.value)
        return filled.cached

    async def _get(
        self,
        region: CacheRegion[T],
        key: str,
        loader: Callable[[], Awaitable[T | None]],
        scope: str | None,
    ) -> _Filled:
        if not self.enabled:
            return _Filled(_UNSET, await self._load(region, loader), self._ticket)
        self._ticket += 1
        ticket = self._ticket
        full_key = self.key(region, key, scope=scope)
        if not self.breaker.allow():
            # Redis is out of the picture; concurrent callers in this process still share loads.
            return await self._single_flight(region, full_key, ticket, self._bypass(region, loader))
        read = await self._read(region, full_key, scope)
        if isinstance(read, _Failed):
            return await self._single_flight(region, full_key, ticket, self._bypass(region, loader))
        if read.corrupt:
            await self._call("invalidate", partial(self.redis.delete, full_key))
        elif read.state == _HIT:
            self._count(region, "hit")
            return _Filled(read.cached, _UNSET, ticket)
        elif read.state == _STALE:
            if read.lease is None:  # someone else is reloading it
                self._count(region, "stale")
                return _Filled(read.cached, _UNSET, ticket)
            return await self._reload(region, full_key, read, loader)
        if read.lease is not None:
            lease = read.lease
            return await self._single_flight(
                region,
                full_key,
                ticket,
                partial(self._load_and_store, region, full_key, lease, read.generation, loader),
                join=False,
            )
        return await self._single_flight(
            region, full_key, ticket, partial(self._wait, region, full_key, scope, loader)
        )

    def _bypass(
        self, region: CacheRegion[T], loader: Callable[[], Awaitable[T | None]]
    ) -> Callable[[], Awaitable[_Filled]]:
        async def fill() -> _Filled:
            self._count(region, "bypass")
            read_at = self._ticket
            value = await self._load(region, loader)
            return _Filled(_UNSET, value, read_at)

        return fill

    async def _reload(
        self,
        region: CacheRegion[T],
        full_key: str,
        stale: _Read,
        loader: Callable[[], Awaitable[T | None]],
    ) -> _Filled:
        """Past its fresh TTL, and the lease is ours: reload; on failure serve the stale one."""
        assert stale.lease is not None
        self._count(region, "miss")
        read_at = self._ticket
        try:
            value = await self._load(region, loader)
        except Exception:
            # stale-if-error: an old answer beats a 500 while the database struggles.
            log.warning("cache.reload_failed", region=region.name, exc_info=True)
            await self._give_back(full_key, stale.lease)
            return _Filled(stale.cached, _UNSET, read_at)
        cached = None if value is None else region.render(value)
        await self._store(region, full_key, stale.lease, stale.generation, cached)
        return _Filled(cached, value, read_at)

    async def _single_flight(
        self,
        region: CacheRegion[Any],
        full_key: str,
        ticket: int,
        fill: Callable[[], Awaitable[_Filled]],
        *,
        join: bool = True,
    ) -> _Filled:
        """One ``fill`` per key in this process; the callers that started before its read
        share its result. ``join=False``: this caller holds the lease, so it loads itself
        (and is joined when no other fill is in flight)."""
        while join and (joined := self._inflight.get(full_key)) is not None:
            try:
                filled: _Filled = await asyncio.shield(joined)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if joined.cancelled() and not (current and current.cancelling()):
                    continue  # the caller doing the load went away; one of us takes over
                raise
            if filled.read_at >= ticket:
                self._count(region, "coalesced")
                return filled
            # Its read was issued before we started: do our own (fresh read, at most one load).
            self._ticket += 1
            ticket = self._ticket

        if full_key in self._inflight:
            return await fill()
        future: asyncio.Future[_Filled] = asyncio.get_running_loop().create_future()
        self._inflight[full_key] = future
        try:
            filled = await fill()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            # Joiners re-raise it; mark it retrieved so a lone caller leaves no warning.
            future.exception()
            raise
        else:
            future.set_result(filled)
        finally:
            if self._inflight.get(full_key) is future:
                del self._inflight[full_key]
        return filled

    async def _load_and_store(
        self,
        region: CacheRegion[T],
        full_key: str,
        lease: str,
        generation: str,
        loader: Callable[[], Awaitable[T | None]],
    ) -> _Filled:
        """The lease is ours: load, render once, store (one round trip)."""
        self._count(region, "miss")
        read_at = self._ticket
        try:
            value = await self._load(region, loader)
        except BaseException:
            await self._give_back(full_key, lease)
            raise
        cached = None if value is None else region.render(value)
        await self._store(region, full_key, lease, generation, cached)
        return _Filled(cached, value, read_at)

    async def _wait(
        self,
        region: CacheRegion[T],
        full_key: str,
        scope: str | None,
        loader: Callable[[], Awaitable[T | None]],
    ) -> _Filled:
        """Another caller holds the lease: poll for its result, or for the lease."""
        deadline = time.monotonic() + self.wait_timeout
        pause = 0.005
        while True:
            if time.monotonic() >= deadline:
                # The holder is stuck or gone; its lease will expire. Serve this caller anyway.
                log.warning("cache.wait_timeout", region=region.name)
                self._count(region, "miss")
                read_at = self._ticket
                return _Filled(_UNSET, await self._load(region, loader), read_at)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
            read_at = self._ticket
            read = await self._read(region, full_key, scope)
            if isinstance(read, _Failed) or read.corrupt:
                return await self._bypass(region, loader)()
            if read.lease is not None:
                # The holder stored nothing (it failed, or was revoked): the load is ours now.
                if read.state == _STALE:
                    return await self._reload(region, full_key, read, loader)
                return await self._load_and_store(
                    region, full_key, read.lease, read.generation, loader
                )
            if read.state != b"miss":
                self._count(region, "coalesced")
                return _Filled(read.cached, _UNSET, read_at)

    async def _load(
        self, region: CacheRegion[T], loader: Callable[[], Awaitable[T | None]]
    ) -> T | None:
        self.metrics.loads.labels(region.name).inc()
        return await loader()

    async def _read(
        self, region: CacheRegion[Any], full_key: str, scope: str | None
    ) -> _Read | _Failed:
        token = secrets.token_hex(8)
        generation_key = self._generation_key(scope) if scope is not None else full_key
        reply = await self._call(
            "get",
            partial(
                self._read_script,
                keys=[full_key, full_key + ":lease", generation_key],
                args=[
                    int(self._clock() * 1000),
                    token,
                    int(self.lease_ttl * 1000),
                    "0" if scope is None else "1",
                    time.time_ns(),
                    scripts.GENERATION_TTL_SECONDS,
                ],
            ),
        )
        if isinstance(reply, _Failed):
            return reply
        generation_raw, state, etag, body, leased, found = reply
        generation = generation_raw.decode()
        lease = f"{generation}|{token}" if leased else None
        cached = Cached(body, etag.decode()) if found else None
        if cached is not None and state != b"miss" and not cached.intact():
            self.metrics.errors.labels("decode").inc()
            log.warning("cache.undecodable_entry", region=region.name)
            if lease is not None:
                await self._give_back(full_key, lease)
            return _Read(state, generation, None, None, corrupt=True)
        return _Read(state, generation, cached, lease)

    # Writing -------------------------------------------------------------------------------

    async def _give_back(self, full_key: str, lease: str) -> None:
        await self._call(
            "lease", partial(self._release_lease, keys=[full_key + ":lease"], args=[lease])
        )

    async def _store(
        self,
        region: CacheRegion[Any],
        full_key: str,
        lease: str,
        generation: str,
        cached: Cached | None,
    ) -> bool:
        if cached is None:
            fresh = self._jittered(region.negative_ttl)
            hard = fresh
            etag, body = "", b""
        else:
            fresh = self._jittered(region.ttl)
            hard = fresh + region.stale_ttl
            etag, body = cached.etag, cached.body
        stored = await self._call(
            "store",
            partial(
                self._store_if_leased,
                keys=[full_key, full_key + ":lease"],
                args=[
                    lease,
                    generation,
                    int((self._clock() + fresh) * 1000),
                    etag,
                    body,
                    "0" if cached is None else "1",
                    max(1, int(hard * 1000)),
                ],
            ),
        )
        if not stored:
            log.info("cache.store_skipped_after_invalidation", region=region.name)
        return bool(stored)

    async def invalidate(self, region: CacheRegion[Any], *keys: str) -> None:
        """Delete ``keys`` and revoke their leases. Call it after the write commits.

        Tried even while the breaker is open (Redis may be back with the old value in it); a
        failure is logged and counted, and the entry then lives until its TTL.
        """
        if not keys:
            return
        async with self.redis.pipeline(transaction=False) as pipe:
            for key in keys:
                full_key = self.key(region, key)
                pipe.delete(full_key, full_key + ":lease")
            result = await self._call("invalidate", pipe.execute)
        if isinstance(result, _Failed):
            log.error("cache.invalidate_failed", region=region.name, keys=list(keys))

    async def invalidate_scope(self, scope: str) -> None:
        """Move ``scope`` to a new generation: every key read under it is dropped at once.

        Call it after the write commits. A load that read the old rows stores them under the
        old generation, which no caller started after this returns will read.
        """
        result = await self._call(
            "invalidate",
            partial(
                self._bump_generation,
                keys=[self._generation_key(scope)],
                args=[time.time_ns(), scripts.GENERATION_TTL_SECONDS],
            ),
        )
        if isinstance(result, _Failed):
            log.error("cache.invalidate_failed", scope=scope)

    def _generation_key(self, scope: str) -> str:
        return f"{self.prefix}:generation:" + "{" + scope + "}"

    # Plumbing ------------------------------------------------------------------------------

    def _jittered(self, ttl: float) -> float:
        # Downward only: a value is never served as fresh for longer than its region promises.
        return ttl * (1 - self.jitter * random.random())  # noqa: S311  # spread, not secrecy

    async def _call(self, operation: str, command: Callable[[], Awaitable[Any]]) -> Any:
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            try:
                async with asyncio.timeout_at(deadline), self._gate:
                    result = await command()
            except TimeoutError:
                if not await self._event_loop_was_busy(deadline):
                    raise
                # An asyncio timeout also counts the time this process's own event loop took
                # to come back to the reply. When the loop is that busy, Redis is not the one
                # to blame (nor to route around: the database is slower): ask once more.
                self.metrics.busy_retries.inc()
                async with asyncio.timeout(self.timeout), self._gate:
                    result = await command()
        except _REDIS_FAILURES as exc:
            was_open = self.breaker.is_open
            self.breaker.record_failure()
            self.metrics.errors.labels(operation).inc()
            self.metrics.circuit_open.set(1 if self.breaker.is_open else 0)
            log.warning("cache.redis_failed", operation=operation, error=type(exc).__name__)
            if self.breaker.is_open and not was_open:
                # Pooled sockets to a Redis that died are dead too: drop them all now, so the
                # probes after it returns connect afresh instead of failing on them one by one.
                with contextlib.suppress(*_REDIS_FAILURES):
                    await self.redis.connection_pool.disconnect()
            return _FAILED
        self.breaker.record_success()
        self.metrics.circuit_open.set(0)
        return result

    async def _event_loop_was_busy(self, deadline: float) -> bool:
        """Whether the loop ran the timeout late, or still takes long to run us again: either
        way, more than a quarter of the timeout."""
        loop = asyncio.get_running_loop()
        slack = self.timeout / 4
        if loop.time() - deadline > slack:
            return True
        asked = loop.time()
        await asyncio.sleep(0)
        return loop.time() - asked > slack

    def _count(self, region: CacheRegion[Any], outcome: str) -> None:
        self.metrics.requests.labels(region.name, outcome).inc()

    async def aclose(self) -> None:
        with contextlib.suppress(*_REDIS_FAILURES):
            await self.redis.aclose()
