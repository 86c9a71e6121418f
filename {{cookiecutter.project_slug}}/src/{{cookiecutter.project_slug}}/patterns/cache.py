"""Application cache: cache-aside on Redis that loads a cold key once, across every instance.

The failures it prevents:
- **stampede**: a hot key expires (or a deploy starts with an empty cache) and every request on
  every instance asks the database for the same row at once;
- **stale refill**: a reader that loaded the old row before a write committed stores it *after*
  the write's invalidation, and the cache serves the old value until the TTL;
- **a sick cache takes the site down**: Redis stops or hangs and every request waits for it, or
  fails with a 500, although the database could have answered.

Guarantees:
- :meth:`Cache.get_or_load` returns the cached value, or calls ``loader`` and caches what it
  returns. For one key, concurrent callers in one process share one in-flight call
  (single-flight) and callers in different processes share one Redis *lease*: one loader runs,
  the others poll briefly for its result. A key past its fresh TTL but inside its stale window
  is served stale to everyone while the single lease holder reloads it
  (stale-while-revalidate); if that reload fails, the stale value is served (stale-if-error).
- ``None`` from the loader ("not found") is cached for the region's short ``negative_ttl``.
- TTLs carry downward jitter, so keys written together do not expire together.
- Keys are ``prefix:region:fingerprint:<key in braces>``: the fingerprint is a hash of the
  cached type's JSON schema, so a deploy that changes the shape never reads the old shape (bump
  the prefix's version for a change of meaning without a change of shape). Values are
  validated against the type on the way out: a corrupt or foreign entry is a miss.
- :meth:`Cache.invalidate` deletes the value *and revokes any lease*: a load that started
  before the invalidation can no longer store its result. Call it after the write commits
  (:mod:`.on_commit`), never before. In-process sharing is safe too: a caller only takes a
  result whose read (query or GET) was issued after the caller started, so nothing read before
  a write's invalidation reaches a caller that started after it.
- Groups of keys (every page of a listing) are invalidated together with a *scope*: keys
  carry the scope's generation, and :meth:`Cache.invalidate_scope` moves it on, so no caller
  that starts afterwards reads an entry of the old generation.
- A timeout while this process's own event loop is overloaded (it took more than a quarter of
  the timeout to run the caller again) is not Redis's fault: the call is made once more instead
  of counting against Redis (``cache_busy_retries_total``).
- Fail-open: every Redis call has a short timeout; a failure counts towards a circuit breaker,
  and the caller is served by the loader (concurrent callers in one process still share one
  load). After ``failure_threshold`` consecutive failures the
  breaker opens and requests skip Redis entirely for ``reset_timeout`` seconds; then one probe
  goes through and, if Redis answers, caching resumes by itself.
- Prometheus counters: ``cache_requests_total{region,outcome}`` (hit, stale, coalesced,
  miss, bypass), ``cache_loads_total{region}``, ``cache_errors_total{operation}``, and the
  ``cache_circuit_open`` gauge.

Why not a library: cashews (the best async candidate) was evaluated. Its ``lock=True`` waiters
spin on ``SET NX`` with no pause and then re-take the lock one after the other; its
early/soft strategies say themselves they do not protect a cold key; its Redis backend turns
errors into misses but has no breaker, so a dead Redis costs every request a GET, a SET and a
PING timeout; its invalidation does not revoke in-flight loads (the stale-refill race above);
and it pickles values by default. What is left here is about 300 lines on redis-py.

Needs: redis-py (asyncio), pydantic (TypeAdapter for typed, validated JSON), prometheus-client,
structlog. Give it its own Redis client with short timeouts and no retries
(:func:`cache_redis_client`), and keep the cache Redis out of readiness checks: the point of
fail-open is that the service stays up without it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import secrets
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, Generic, TypeVar

import orjson
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import TypeAdapter, ValidationError
from redis.asyncio import Redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

T = TypeVar("T")

log = structlog.get_logger(__name__)

# An entry is one Redis string: kind (1 byte), fresh-until as a UNIX timestamp (8 bytes),
# then the value's JSON. One GET answers both "is it there" and "is it still fresh".
_VALUE: Final = b"v"
_NOT_FOUND: Final = b"n"
_HEADER: Final = struct.Struct(">cd")

# Store only while our lease is still ours: an invalidation that ran during the load deleted
# it, and the value we loaded may predate the write.
_STORE_IF_LEASED: Final = """
if redis.call('GET', KEYS[2]) == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"""
_RELEASE_LEASE: Final = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""

# Moves a scope to a new generation. A missing counter (first use, evicted, expired) restarts
# from the clock, never from a number an older generation used.
_BUMP_GENERATION: Final = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('SET', KEYS[1], ARGV[1])
end
local generation = redis.call('INCR', KEYS[1])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return generation
"""
# Generation counters outlive any entry keyed by them.
_GENERATION_TTL_SECONDS: Final = 86_400

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


@dataclass(frozen=True)
class CacheRegion(Generic[T]):
    """A family of cached values of one type, e.g. products by id.

    ``ttl``: seconds a value is served as fresh. ``stale_ttl``: seconds after that during
    which it is served stale while one caller reloads it. ``negative_ttl``: seconds a "not
    found" is remembered (short: a row created later must appear soon).
    """

    name: str
    type: type[T]
    ttl: float
    stale_ttl: float = 0.0
    negative_ttl: float = 5.0
    adapter: TypeAdapter[T] = field(init=False, repr=False, compare=False)
    fingerprint: str = field(init=False, compare=False)

    def __post_init__(self) -> None:
        adapter = TypeAdapter(self.type)
        schema = orjson.dumps(adapter.json_schema(), option=orjson.OPT_SORT_KEYS)
        object.__setattr__(self, "adapter", adapter)
        object.__setattr__(self, "fingerprint", hashlib.blake2b(schema, digest_size=4).hexdigest())


class CacheMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "cache_requests_total",
            "Application cache lookups by region and outcome "
            "(hit, stale, coalesced, miss, bypass).",
            ["region", "outcome"],
            registry=registry,
        )
        self.loads = Counter(
            "cache_loads_total",
            "Calls to a region's loader (the database reads the cache did not save).",
            ["region"],
            registry=registry,
        )
        self.errors = Counter(
            "cache_errors_total",
            "Cache operations that failed (Redis down or slow, undecodable entry).",
            ["operation"],
            registry=registry,
        )
        self.busy_retries = Counter(
            "cache_busy_retries_total",
            "Redis calls that timed out while this process's event loop was overloaded, and "
            "were asked again instead of counting against Redis.",
            registry=registry,
        )
        self.circuit_open = Gauge(
            "cache_circuit_open",
            "1 while the cache's circuit breaker skips Redis, else 0.",
            registry=registry,
        )


class CircuitBreaker:
    """Consecutive failures open it; after ``reset_timeout`` one probe may close it again.

    Hand-written (30 lines): the async breakers on PyPI are unmaintained (aiobreaker) or
    wrap a whole call (pybreaker), where this one must guard a few Redis round trips inside
    one cache operation and fall through to the loader instead of raising.
    """

    def __init__(
        self,
        *,
        failure_threshold: int = 5,
        reset_timeout: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = failure_threshold
        self.reset_timeout = reset_timeout
        self._clock = clock
        self._failures = 0
        self._open_until: float | None = None
        self._probing = False

    @property
    def is_open(self) -> bool:
        return self._open_until is not None

    def allow(self) -> bool:
        if self._open_until is None:
            return True
        if self._probing or self._clock() < self._open_until:
            return False
        self._probing = True  # half-open: exactly one caller probes Redis
        return True

    def record_success(self) -> None:
        if self._open_until is not None:
            log.info("cache.circuit_closed")
        self._failures = 0
        self._open_until = None
        self._probing = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._probing or self._failures >= self.failure_threshold:
            if self._open_until is None:
                log.warning("cache.circuit_opened", failures=self._failures)
            self._open_until = self._clock() + self.reset_timeout
            self._probing = False


class _Failed:
    """A Redis call that failed or timed out (already counted and logged)."""


_FAILED: Final = _Failed()


@dataclass(frozen=True, slots=True)
class _Entry(Generic[T]):
    value: T | None
    fresh_until: float


@dataclass(frozen=True, slots=True)
class _Filled(Generic[T]):
    value: T | None
    # The ticket counter when the read behind ``value`` (a database query or a Redis GET) was
    # issued. A caller whose ticket is higher started after that read: it may have started
    # after a write's invalidation that the read predates, so it must not take the value.
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
        self._inflight: dict[str, asyncio.Future[_Filled[Any]]] = {}
        # One Redis command per pooled connection at a time, callers queued first come, first
        # served. redis-py's own BlockingConnectionPool lets newcomers overtake its waiters,
        # so under a burst a few callers starve into timeouts (and trip the breaker).
        self._gate = asyncio.Semaphore(redis.connection_pool.max_connections)
        # Every lookup takes the next ticket (see _Filled.read_at).
        self._ticket = 0
        self._store_if_leased = redis.register_script(_STORE_IF_LEASED)
        self._release_lease = redis.register_script(_RELEASE_LEASE)
        self._bump_generation = redis.register_script(_BUMP_GENERATION)

    def key(self, region: CacheRegion[Any], key: str) -> str:
        # The braces are a Redis Cluster hash tag: a value and its lease share a slot, so the
        # scripts that touch both work on a cluster too.
        return f"{self.prefix}:{region.name}:{region.fingerprint}:" + "{" + key + "}"

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
        summary of one user): the key is prefixed with the scope's current generation, and
        :meth:`invalidate_scope` moves the scope to a new one, so the old entries are never
        read again (they expire by TTL).
        """
        if not self.enabled:
            return await self._load(region, loader)
        self._ticket += 1
        ticket = self._ticket
        if scope is not None:
            generation = await self._generation(scope)
            if generation is None:  # Redis cannot say: the database answers, nothing is stored
                full_key = self.key(region, f"{scope}:?:{key}")
                return await self._single_flight(
                    region, full_key, ticket, self._bypass(region, loader)
                )
            key = f"{scope}:{generation}:{key}"
        full_key = self.key(region, key)
        if not self.breaker.allow():
            # Redis is out of the picture; concurrent callers in this process still share loads.
            return await self._single_flight(region, full_key, ticket, self._bypass(region, loader))
        raw = await self._call("get", partial(self.redis.get, full_key))
        if isinstance(raw, _Failed):
            return await self._single_flight(region, full_key, ticket, self._bypass(region, loader))
        entry = self._decode(region, raw)
        if entry is not None:
            if entry.fresh_until > self._clock():
                self._count(region, "hit")
                return entry.value
            return await self._revalidate(region, full_key, entry, loader)

        async def fill() -> _Filled[T]:
            return await self._fill(region, full_key, loader)

        return await self._single_flight(region, full_key, ticket, fill)

    def _bypass(
        self, region: CacheRegion[T], loader: Callable[[], Awaitable[T | None]]
    ) -> Callable[[], Awaitable[_Filled[T]]]:
        async def fill() -> _Filled[T]:
            self._count(region, "bypass")
            read_at = self._ticket
            value = await self._load(region, loader)
            return _Filled(value, read_at)

        return fill

    async def _revalidate(
        self,
        region: CacheRegion[T],
        full_key: str,
        stale: _Entry[T],
        loader: Callable[[], Awaitable[T | None]],
    ) -> T | None:
        token = await self._take_lease(full_key)
        if not isinstance(token, str):  # someone else is reloading it (or Redis failed)
            self._count(region, "stale")
            return stale.value
        self._count(region, "miss")
        try:
            value = await self._load(region, loader)
        except Exception:
            # stale-if-error: an old answer beats a 500 while the database struggles.
            log.warning("cache.reload_failed", region=region.name, exc_info=True)
            await self._give_back(full_key, token)
            return stale.value
        await self._store(region, full_key, token, value)
        return value

    async def _single_flight(
        self,
        region: CacheRegion[T],
        full_key: str,
        ticket: int,
        fill: Callable[[], Awaitable[_Filled[T]]],
    ) -> T | None:
        """One ``fill`` per key in this process; the callers that started before its read
        share its result."""
        while (joined := self._inflight.get(full_key)) is not None:
            try:
                filled: _Filled[T] = await asyncio.shield(joined)
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if joined.cancelled() and not (current and current.cancelling()):
                    continue  # the caller doing the load went away; one of us takes over
                raise
            if filled.read_at >= ticket:
                self._count(region, "coalesced")
                return filled.value
            # Its read was issued before we started: do our own (fresh GET, at most one load).
            self._ticket += 1
            ticket = self._ticket

        future: asyncio.Future[_Filled[T]] = asyncio.get_running_loop().create_future()
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
        return filled.value

    async def _fill(
        self, region: CacheRegion[T], full_key: str, loader: Callable[[], Awaitable[T | None]]
    ) -> _Filled[T]:
        """Load under the cluster-wide lease, or wait for whoever holds it."""
        deadline = time.monotonic() + self.wait_timeout
        pause = 0.005
        while True:
            token = await self._take_lease(full_key)
            if isinstance(token, _Failed):
                return await self._bypass(region, loader)()
            if token is not None:
                # The previous holder may have stored the value between our GET and our lease.
                read_at = self._ticket
                raw = await self._call("get", partial(self.redis.get, full_key))
                entry = None if isinstance(raw, _Failed) else self._decode(region, raw)
                if entry is not None:
                    await self._give_back(full_key, token)
                    self._count(region, "coalesced")
                    return _Filled(entry.value, read_at)
                self._count(region, "miss")
                read_at = self._ticket
                try:
                    value = await self._load(region, loader)
                except BaseException:
                    await self._give_back(full_key, token)
                    raise
                await self._store(region, full_key, token, value)
                return _Filled(value, read_at)
            if time.monotonic() >= deadline:
                # The holder is stuck or gone; its lease will expire. Serve this caller anyway.
                log.warning("cache.wait_timeout", region=region.name)
                self._count(region, "miss")
                read_at = self._ticket
                value = await self._load(region, loader)
                return _Filled(value, read_at)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.05)
            read_at = self._ticket
            raw = await self._call("get", partial(self.redis.get, full_key))
            if isinstance(raw, _Failed):
                return await self._bypass(region, loader)()
            entry = self._decode(region, raw)
            if entry is not None:
                self._count(region, "coalesced")
                return _Filled(entry.value, read_at)
            # No value and maybe no lease (the holder failed or was revoked): try again.

    async def _load(
        self, region: CacheRegion[T], loader: Callable[[], Awaitable[T | None]]
    ) -> T | None:
        self.metrics.loads.labels(region.name).inc()
        return await loader()

    # Writing -------------------------------------------------------------------------------

    async def _take_lease(self, full_key: str) -> str | _Failed | None:
        token = secrets.token_hex(8)
        taken = await self._call(
            "lease",
            partial(
                self.redis.set, full_key + ":lease", token, nx=True, px=int(self.lease_ttl * 1000)
            ),
        )
        if isinstance(taken, _Failed):
            return taken
        return token if taken else None

    async def _give_back(self, full_key: str, token: str) -> None:
        await self._call(
            "lease", partial(self._release_lease, keys=[full_key + ":lease"], args=[token])
        )

    async def _store(
        self, region: CacheRegion[T], full_key: str, token: str, value: T | None
    ) -> bool:
        if value is None:
            fresh = self._jittered(region.negative_ttl)
            hard = fresh
            payload = _HEADER.pack(_NOT_FOUND, self._clock() + fresh)
        else:
            fresh = self._jittered(region.ttl)
            hard = fresh + region.stale_ttl
            payload = _HEADER.pack(_VALUE, self._clock() + fresh) + region.adapter.dump_json(value)
        stored = await self._call(
            "store",
            partial(
                self._store_if_leased,
                keys=[full_key, full_key + ":lease"],
                args=[token, payload, max(1, int(hard * 1000))],
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
        old generation, where no caller started after this returns will look.
        """
        result = await self._call(
            "invalidate",
            partial(
                self._bump_generation,
                keys=[self._generation_key(scope)],
                args=[time.time_ns(), _GENERATION_TTL_SECONDS],
            ),
        )
        if isinstance(result, _Failed):
            log.error("cache.invalidate_failed", scope=scope)

    async def _generation(self, scope: str) -> str | None:
        if not self.breaker.allow():
            return None
        key = self._generation_key(scope)
        value = await self._call("get", partial(self.redis.get, key))
        if value is None:
            start = partial(
                self.redis.set, key, time.time_ns(), nx=True, ex=_GENERATION_TTL_SECONDS
            )
            await self._call("get", start)
            value = await self._call("get", partial(self.redis.get, key))
        if isinstance(value, bytes):
            return value.decode()
        return None

    def _generation_key(self, scope: str) -> str:
        return f"{self.prefix}:generation:{scope}"

    # Plumbing ------------------------------------------------------------------------------

    def _jittered(self, ttl: float) -> float:
        # Downward only: a value is never served as fresh for longer than its region promises.
        return ttl * (1 - self.jitter * random.random())  # noqa: S311  # spread, not secrecy

    def _decode(self, region: CacheRegion[T], raw: object) -> _Entry[T] | None:
        if not isinstance(raw, bytes) or len(raw) < _HEADER.size:
            return None
        kind, fresh_until = _HEADER.unpack_from(raw)
        if kind == _NOT_FOUND:
            return _Entry(None, fresh_until)
        try:
            return _Entry(region.adapter.validate_json(raw[_HEADER.size :]), fresh_until)
        except ValidationError:
            self.metrics.errors.labels("decode").inc()
            log.warning("cache.undecodable_entry", region=region.name)
            return None

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
