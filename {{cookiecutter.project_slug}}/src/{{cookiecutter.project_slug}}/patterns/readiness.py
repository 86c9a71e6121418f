"""Readiness checks: run named dependency checks concurrently, each under its own deadline.

Guarantees: a check that hangs (a black-holed database) counts as failed after ``deadline``
seconds instead of hanging the probe; every check runs even when another failed, so the
result names *every* dependency that is down. Error text is the exception class only: probe
output is often public, and connection strings or hostnames must not leak.

Required vs optional: readiness must fail only for a dependency the instance cannot serve
without (its database). One the app degrades around (a fail-open cache, a broker it retries)
is reported, in the body and in :func:`dependency_gauge`, but never takes the instance out of
rotation: when it is shared by every instance, failing readiness on it empties the pool.

Busy is not down: :class:`RecentSuccess` lets a check pass without a probe when real traffic
proved the dependency within ``fresh_for`` seconds. Under load the probe would otherwise queue for
a pooled connection behind that traffic, miss the gateway's timeout, and take a healthy but busy
instance out of rotation (its load then lands on the others). An outage still fails readiness
within ``fresh_for`` plus one probe.

Needs: asyncio, prometheus-client. Wire each dependency as ``async def check() -> None`` that
raises when it is unhealthy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Gauge

Check = Callable[[], Awaitable[None]]


class RecentSuccess:
    """When a dependency last answered real traffic; call :meth:`record` after each success."""

    def __init__(self, fresh_for: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.fresh_for = fresh_for
        self._clock = clock
        self._last = float("-inf")

    def record(self) -> None:
        self._last = self._clock()

    def fresh(self) -> bool:
        return self._clock() - self._last < self.fresh_for

    def or_probe(self, probe: Check) -> Check:
        """A check that passes on recent success, else runs ``probe`` (and records its success)."""

        async def check() -> None:
            if self.fresh():
                return
            await probe()
            self.record()

        return check


@dataclass(frozen=True, slots=True)
class CheckResult:
    ok: bool
    duration_ms: float
    error: str | None = None

    def as_dict(self) -> dict[str, object]:
        result: dict[str, object] = {
            "status": "ok" if self.ok else "fail",
            "duration_ms": self.duration_ms,
        }
        if self.error:
            result["error"] = self.error
        return result


async def _run_one(check: Check, deadline: float) -> CheckResult:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(deadline):
            await check()
    except TimeoutError:
        error: str | None = f"timed out after {deadline}s"
    except Exception as exc:
        error = type(exc).__name__
    else:
        error = None
    return CheckResult(
        ok=error is None,
        duration_ms=round((time.perf_counter() - started) * 1000, 2),
        error=error,
    )


async def run_checks(checks: Mapping[str, Check], deadline: float) -> dict[str, CheckResult]:
    names = list(checks)
    results = await asyncio.gather(*(_run_one(checks[name], deadline) for name in names))
    return dict(zip(names, results, strict=True))


def dependency_gauge(registry: CollectorRegistry) -> Gauge:
    """``dependency_up{dependency, required}``: 1 when its last readiness check passed."""
    return Gauge(
        "dependency_up",
        "1 when the dependency answered the last readiness check, else 0.",
        ["dependency", "required"],
        registry=registry,
    )
