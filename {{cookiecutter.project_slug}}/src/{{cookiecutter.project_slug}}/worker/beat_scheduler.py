"""RedBeat, made to outlive a Redis outage: the scheduler beat runs (``beat_scheduler``).

The failure it prevents: RedBeat extends its lock at the start of every tick, through a Redis
client without retries, so the first tick after Redis went away raised ``ConnectionError`` out
of beat's loop and the process exited (and, under the dev launcher, stopped the stack).

Here a tick that cannot reach Redis logs ``beat.redis_unavailable`` and asks to be called
again after a backoff (patterns/backoff.py's wait, capped at the loop interval): nothing is
sent while Redis is away, and the schedule resumes when it is back. A lock found gone or
taken after the outage (it expired meanwhile, or Redis restarted empty) is taken again when
it is free; while another beat holds it, this one waits as a standby does.
"""

from __future__ import annotations

from typing import Any

import structlog
from redbeat import RedBeatScheduler
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import LockError
from redis.exceptions import TimeoutError as RedisTimeoutError
from tenacity import RetryCallState, Retrying

from {{ cookiecutter.project_slug }}.patterns.backoff import backoff_wait

log = structlog.get_logger(__name__)

UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class ResilientRedBeatScheduler(RedBeatScheduler):  # type: ignore[misc]  # untyped base
    _failures = 0

    def _retry_in(self) -> float:
        self._failures += 1
        state = RetryCallState(Retrying(), None, (), {})
        state.attempt_number = self._failures
        wait = float(backoff_wait(max_wait=float(self.max_interval))(state))
        return max(0.1, wait)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            interval = float(super().tick(*args, **kwargs))
        except UNAVAILABLE as exc:
            retry_in = self._retry_in()
            log.warning(
                "beat.redis_unavailable",
                attempt=self._failures,
                retry_in=round(retry_in, 2),
                error=f"{type(exc).__name__}: {exc}"[:500],
            )
            return retry_in
        except LockError:
            return self._take_lock_again()
        if self._failures:
            log.info("beat.redis_recovered", after_attempts=self._failures)
            self._failures = 0
        return interval

    def _take_lock_again(self) -> float:
        """The lock expired during the outage (or Redis lost it): take it if it is free."""
        try:
            if self.lock is not None and self.lock.acquire(blocking=False):
                log.info("beat.lock_reacquired")
                self._failures = 0
                return 0.0
        except UNAVAILABLE:
            return self._retry_in()
        log.info("beat.lock_held_elsewhere")  # another beat took over: stand by
        return float(self.max_interval)
