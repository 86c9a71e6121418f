"""Rate limits shared by every instance: the ``limits`` library's moving window on Redis.

Guarantees:
- one bucket per (policy, key) for the whole deployment: every instance counts in the same
  Redis key, so N instances enforce one limit, not N of them;
- the strategy is the *moving window* (a sliding log): each hit is a timestamp in a Redis list,
  and a hit is accepted only if fewer than ``limit`` hits fall inside the last ``window``
  seconds, checked and written by one Lua script. Exact under concurrency (no fixed-window
  boundary that lets 2x the limit through), and ``Retry-After`` is the moment the oldest hit
  leaves the window. It stores one entry per accepted hit, so it suits the small limits an API
  uses (tens to a few thousand per window); a GCRA or a window counter is cheaper for more;
- a refused request raises :class:`RateLimited`: a 429 ``application/problem+json`` of the
  ``quota-exceeded`` type naming the violated policy, with ``Retry-After`` in whole seconds,
  rounded up, so it is never earlier than the moment a slot frees;
- every response whose request passed a policy carries the ``RateLimit-Policy`` and
  ``RateLimit`` fields of draft-ietf-httpapi-ratelimit-headers-10 (:class:`RateLimitHeaders`),
  e.g. ``RateLimit-Policy: "login-ip";q=20;w=60`` and ``RateLimit: "login-ip";r=19;t=60``;
- Redis down or slow (past ``timeout``): the policy's :attr:`Policy.fallback` decides.
  ``"open"`` lets the request through; ``"local"`` counts it in this process's memory with the
  same limit (so N instances allow at most N times the limit until Redis is back). Both are
  counted in ``rate_limit_backend_errors_total``; after a failure Redis is left alone for
  ``retry_after_failure`` seconds, so an outage costs one timeout, not one per request.

Needs: limits, redis, prometheus-client, fastapi/starlette; the 429 is a
:class:`~.problem.ProblemError`. Wire it with an app-level :class:`RateLimiter` on
``app.state.rate_limiter``, :func:`enforce` in dependencies, and the :class:`RateLimitHeaders`
middleware.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Literal

import structlog
from fastapi import Request
from limits import RateLimitItem, parse
from limits.aio.storage import MemoryStorage, RedisStorage
from limits.aio.strategies import MovingWindowRateLimiter
from prometheus_client import CollectorRegistry, Counter
from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from {{ cookiecutter.project_slug }}.patterns.problem import ProblemError

log = structlog.get_logger(__name__)

STATE_KEY = "rate_limit_decisions"
QUOTA_EXCEEDED = "https://iana.org/assignments/http-problem-types#quota-exceeded"

Fallback = Literal["open", "local"]


@dataclass(frozen=True)
class Policy:
    """A named quota: ``limit`` is a ``limits`` string such as ``"20/minute"``."""

    name: str
    limit: str
    fallback: Fallback = "open"

    @cached_property
    def item(self) -> RateLimitItem:
        return parse(self.limit)

    @cached_property
    def window_seconds(self) -> int:
        return int(self.item.get_expiry())


@dataclass(frozen=True)
class Decision:
    policy: Policy
    allowed: bool
    remaining: int
    # Seconds until a slot frees (moving window: when the oldest counted hit expires).
    reset_after: int
    # None: Redis decided. "open"/"local": Redis failed and the fallback decided.
    degraded: Fallback | None = None

    def policy_field(self) -> str:
        item = self.policy.item
        return f'"{self.policy.name}";q={item.amount};w={self.policy.window_seconds}'

    def limit_field(self) -> str:
        return f'"{self.policy.name}";r={max(self.remaining, 0)};t={self.reset_after}'


class RateLimited(ProblemError):
    status = 429
    title = "Request cannot be satisfied as assigned quota has been exceeded"
    type = QUOTA_EXCEEDED

    def __init__(self, decision: Decision) -> None:
        super().__init__(
            f"Too many requests for the '{decision.policy.name}' policy "
            f"({decision.policy.limit}); retry in {decision.reset_after} s.",
            headers={"Retry-After": str(max(decision.reset_after, 1))},
            **{"violated-policies": [decision.policy.name]},
        )


class RateLimitMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.decisions = Counter(
            "rate_limit_decisions_total",
            "Rate-limit checks by policy and outcome (allowed, limited).",
            ["policy", "outcome"],
            registry=registry,
        )
        self.backend_errors = Counter(
            "rate_limit_backend_errors_total",
            "Checks the shared Redis could not answer, by policy and the fallback that decided.",
            ["policy", "fallback"],
            registry=registry,
        )


class RateLimiter:
    """One per process (the app's lifespan closes it). Every check is one Lua script for the
    hit and one read for the window's state, on a Redis client of its own."""

    def __init__(
        self,
        redis_url: str,
        *,
        key_prefix: str,
        timeout: float,
        registry: CollectorRegistry,
        retry_after_failure: float = 1.0,
    ) -> None:
        scheme, rest = redis_url.split("://", 1)
        self._storage = RedisStorage(
            f"async+{scheme}://{rest}",
            implementation="redispy",
            key_prefix=key_prefix,
            wrap_exceptions=True,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        self._shared = MovingWindowRateLimiter(self._storage)
        self._local = MovingWindowRateLimiter(MemoryStorage())
        self._timeout = timeout
        self._metrics = RateLimitMetrics(registry)
        self.retry_after_failure = retry_after_failure
        self._redis_down_until = 0.0

    async def hit(self, policy: Policy, key: str) -> Decision:
        if time.monotonic() >= self._redis_down_until:
            try:
                async with asyncio.timeout(self._timeout):
                    decision = await self._decide(self._shared, policy, key)
            except Exception as exc:  # any storage failure: the fallback decides
                self._redis_down_until = time.monotonic() + self.retry_after_failure
                log.warning(
                    "rate_limit.backend_unavailable",
                    policy=policy.name,
                    fallback=policy.fallback,
                    error_type=type(exc).__name__,
                )
            else:
                self._count(decision)
                return decision
        self._metrics.backend_errors.labels(policy.name, policy.fallback).inc()
        if policy.fallback == "local":
            decision = await self._decide(self._local, policy, key, degraded="local")
        else:
            window = policy.window_seconds
            decision = Decision(policy, True, policy.item.amount, window, degraded="open")
        self._count(decision)
        return decision

    async def _decide(
        self,
        limiter: MovingWindowRateLimiter,
        policy: Policy,
        key: str,
        degraded: Fallback | None = None,
    ) -> Decision:
        item = policy.item
        allowed = await limiter.hit(item, policy.name, key)
        stats = await limiter.get_window_stats(item, policy.name, key)
        reset_after = max(math.ceil(stats.reset_time - time.time()), 0)
        if not allowed:
            reset_after = max(reset_after, 1)
        return Decision(policy, allowed, stats.remaining, reset_after, degraded)

    def _count(self, decision: Decision) -> None:
        outcome = "allowed" if decision.allowed else "limited"
        self._metrics.decisions.labels(decision.policy.name, outcome).inc()

    async def clear(self, policy: Policy, key: str) -> None:
        await self._shared.clear(policy.item, policy.name, key)

    async def aclose(self) -> None:
        # The storage's client is created lazily; close its pool if it was.
        storage: Any = self._storage
        bridge = getattr(storage, "bridge", None)
        client = getattr(bridge, "storage", None)
        if client is not None:
            await client.aclose()


async def enforce(request: Request, policy: Policy, key: str) -> Decision | None:
    """Count one hit of ``key`` against ``policy``; raise :class:`RateLimited` past the quota.
    No limiter on the app (rate limits switched off): nothing is counted."""
    limiter: RateLimiter | None = getattr(request.app.state, "rate_limiter", None)
    if limiter is None:
        return None
    decision = await limiter.hit(policy, key)
    decisions: list[Decision] = request.scope.setdefault("state", {}).setdefault(STATE_KEY, [])
    decisions.append(decision)
    if not decision.allowed:
        log.info("rate_limit.limited", policy=policy.name, retry_after=decision.reset_after)
        raise RateLimited(decision)
    return decision


class RateLimitHeaders:
    """Adds ``RateLimit-Policy`` and ``RateLimit`` to every response whose request was
    counted, success or not. A policy decided by the ``"open"`` fallback is left out: there is
    no count to report."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # Created here, so a copy of the scope further in still shares this one dict.
        scope.setdefault("state", {})

        async def send_with_fields(message: Message) -> None:
            if message["type"] == "http.response.start":
                decisions: list[Decision] = scope.get("state", {}).get(STATE_KEY, [])
                counted = [d for d in decisions if d.degraded != "open"]
                if counted:
                    headers = MutableHeaders(scope=message)
                    headers["RateLimit-Policy"] = ", ".join(d.policy_field() for d in counted)
                    headers["RateLimit"] = ", ".join(d.limit_field() for d in counted)
            await send(message)

        await self.app(scope, receive, send_with_fields)
