"""The cache's circuit breaker: consecutive failures open it, one probe closes it again."""

from __future__ import annotations

import time
from collections.abc import Callable

import structlog

log = structlog.get_logger(__name__)


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
