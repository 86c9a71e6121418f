"""Readiness checks: run named dependency checks concurrently, each under its own deadline.

Guarantees: a check that hangs (a black-holed database) counts as failed after ``deadline``
seconds instead of hanging the probe; every check runs even when another failed, so the
result names *every* dependency that is down. Error text is the exception class only: probe
output is often public, and connection strings or hostnames must not leak.

Required vs optional: readiness must fail only for a dependency the instance cannot serve
without (its database). One the app degrades around (a fail-open cache, a broker it retries)
is reported, in the body and in :func:`dependency_gauge`, but never takes the instance out of
rotation: when it is shared by every instance, failing readiness on it empties the pool.

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
