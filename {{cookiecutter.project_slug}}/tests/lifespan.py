"""The app's real lifespan in a test, with room for a loaded machine."""

from __future__ import annotations

from asgi_lifespan import LifespanManager
from starlette.types import ASGIApp

# asgi-lifespan allows startup and shutdown 5 s each. A suite sharing 2 cores with topology
# stacks has stalled past that in teardown (a bare TimeoutError, nothing wrong with the app);
# a real hang still fails, just later.
LIFESPAN_SECONDS = 30.0


def running(app: ASGIApp) -> LifespanManager:
    """``async with running(app):`` runs the app's startup, then its shutdown on exit."""
    return LifespanManager(app, startup_timeout=LIFESPAN_SECONDS, shutdown_timeout=LIFESPAN_SECONDS)
