"""Readiness checks: run named dependency checks concurrently, each under its own deadline.

Guarantees: a check that hangs (a black-holed database) counts as failed after ``deadline``
seconds instead of hanging the probe; every check runs even when another failed, so the
result names *every* dependency that is down. Error text is the exception class only: probe
output is often public, and connection strings or hostnames must not leak.

Needs: nothing but asyncio. Wire each dependency as ``async def check() -> None`` that raises
when it is unhealthy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

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
