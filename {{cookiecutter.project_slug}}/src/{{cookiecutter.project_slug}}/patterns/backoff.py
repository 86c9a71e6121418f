"""Ride out a dependency outage: retry a loop's step with exponential backoff until told to stop.

The failure it prevents: a long-lived process (the outbox relay, a stream consumer, beat) that
exits, or spins, when Redis or the broker goes away for a few seconds. Under an orchestrator a
crash loop is a restart storm; under the dev launcher it stopped the whole stack.

Guarantees:
- :func:`reconnecting` retries the step it wraps on any exception, waiting 0.2 s, 0.4 s, ...
  up to ``max_wait`` (with jitter, so many processes do not reconnect in lockstep), and logs
  one ``<event>`` warning per failed attempt with the attempt number and the error;
- the wait is cut short when ``stop`` is set: a process in an outage still stops at once on
  SIGTERM (the last error is then re-raised to the caller, who checks ``stop``);
- a successful step starts the next outage from the shortest wait again (one retrier per step).

Needs: tenacity, structlog. Imports no domain code.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    retry_if_exception_type,
    wait_exponential_jitter,
)

log = structlog.get_logger(__name__)

INITIAL_WAIT = 0.2
MAX_WAIT = 10.0


def backoff_wait(initial: float = INITIAL_WAIT, max_wait: float = MAX_WAIT) -> Any:
    """The wait strategy every reconnecting loop shares (tenacity's, jittered)."""
    return wait_exponential_jitter(multiplier=initial, max=max_wait, jitter=initial)


def reconnecting(
    stop: asyncio.Event, event: str, *, max_wait: float = MAX_WAIT, **fields: Any
) -> AsyncRetrying:
    """A retrier for one step of a loop that must outlive its dependencies:
    ``await reconnecting(stop, "outbox.relay_failed")(relay.publish_batch)``."""

    async def sleep(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=seconds)

    def before_sleep(state: RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        log.warning(
            event,
            attempt=state.attempt_number,
            retry_in=round(state.next_action.sleep, 2) if state.next_action else None,
            error=f"{type(error).__name__}: {error}"[:500] if error else None,
            **fields,
        )

    return AsyncRetrying(
        retry=retry_if_exception_type(Exception),
        wait=backoff_wait(max_wait=max_wait),
        stop=lambda _: stop.is_set(),
        sleep=sleep,
        before_sleep=before_sleep,
        reraise=True,
    )
