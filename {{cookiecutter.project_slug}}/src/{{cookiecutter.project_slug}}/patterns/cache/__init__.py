"""The application cache engine: cache-aside on Redis, loading a cold key once across instances.

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
- A value is rendered to its JSON once, when it is stored, with its strong ETag beside it:
  :meth:`Cache.get_or_load_json` serves a hit as those bytes (no validation, no encoding), and
  :meth:`Cache.get_or_load` validates them into the type. An entry whose body no longer matches
  its ETag (corrupt, or written by something else) is a miss, counted as a decode error.
- Keys are ``prefix:region:fingerprint:<key or scope in braces>``: the fingerprint is a hash of
  the cached type's JSON schema, so a deploy that changes the shape never reads the old shape
  (bump the prefix's version for a change of meaning without a change of shape).
- Redis round trips: a hit costs one, a miss that loads two (read + lease in one script, then
  the store), whatever the scope (:mod:`.scripts`).
- :meth:`Cache.invalidate` deletes the value *and revokes any lease*: a load that started
  before the invalidation can no longer store its result. Call it after the write commits
  (:mod:`.on_commit`), never before. In-process sharing is safe too: a caller only takes a
  result whose read (query or GET) was issued after the caller started, so nothing read before
  a write's invalidation reaches a caller that started after it.
- Groups of keys (every page of a listing) are invalidated together with a *scope*: entries
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
and it pickles values by default. What is left here is about 400 lines on redis-py.

Layout: :mod:`.core` (the engine), :mod:`.scripts` (its Lua), :mod:`.regions` (what is cached),
:mod:`.breaker`, :mod:`.metrics`.

Needs: redis-py (asyncio), pydantic (TypeAdapter for typed, validated JSON), prometheus-client,
structlog. Give it its own Redis client with short timeouts and no retries
(:func:`cache_redis_client`), and keep the cache Redis out of readiness checks: the point of
fail-open is that the service stays up without it.
"""

from .breaker import CircuitBreaker
from .core import Cache, cache_redis_client
from .metrics import CacheMetrics
from .regions import Cached, CacheRegion, etag_of

__all__ = [
    "Cache",
    "CacheMetrics",
    "CacheRegion",
    "Cached",
    "CircuitBreaker",
    "cache_redis_client",
    "etag_of",
]
