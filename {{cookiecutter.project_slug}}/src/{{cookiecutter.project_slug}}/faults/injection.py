"""A build that is worse on purpose: every Nth request fails, every request is slowed.

What the canary proofs deploy as the bad canary (another config: ``FAULT_ERROR_RATE``,
``FAULT_DELAY_SECONDS`` in its ``CANARY_ENV_FILE``). Mounted by the app factory only when
``ENVIRONMENT=test`` and one of them is set; the settings refuse them in any other environment.

Failures are deterministic (request k fails when ``floor(k * rate)`` steps up), so a proof can
bound the failed requests exactly instead of statistically. Health, readiness and metrics are
never touched: a bad build still passes its health checks, which is why a canary needs a
controller watching its error rate.
"""

from __future__ import annotations

import asyncio
import math

from starlette.types import ASGIApp, Receive, Scope, Send

from {{ cookiecutter.project_slug }}.patterns.problem import PROBLEM_JSON

OPS_PATHS = ("/healthz", "/readyz", "/metrics", "/_gateway/")
BODY = (
    b'{"type":"about:blank","title":"Internal Server Error","status":500,'
    b'"detail":"Injected fault (FAULT_ERROR_RATE)."}'
)


class FaultInjectionMiddleware:
    def __init__(self, app: ASGIApp, *, error_rate: float, delay_seconds: float) -> None:
        self.app = app
        self.error_rate = error_rate
        self.delay_seconds = delay_seconds
        self._seen = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(OPS_PATHS):
            await self.app(scope, receive, send)
            return
        self._seen += 1
        if self.delay_seconds:
            await asyncio.sleep(self.delay_seconds)
        seen = self._seen
        if math.floor(seen * self.error_rate) > math.floor((seen - 1) * self.error_rate):
            headers = [
                (b"content-type", PROBLEM_JSON.encode()),
                (b"content-length", b"%d" % len(BODY)),
            ]
            await send({"type": "http.response.start", "status": 500, "headers": headers})
            await send({"type": "http.response.body", "body": BODY})
            return
        await self.app(scope, receive, send)
