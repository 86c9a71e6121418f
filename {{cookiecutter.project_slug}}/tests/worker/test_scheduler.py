"""The scheduler: two beat processes (as people run them for availability) fire each job once
per tick, because RedBeat's lock in Redis lets only one of them send."""

from __future__ import annotations

import itertools
import time
from typing import Any

import pytest

from tests.worker_harness import CeleryProcess, JobStack

pytestmark = pytest.mark.load

TICK = 1.0  # seconds between runs of the test schedule
TASK = "jobs.cleanup_stale_data"


@pytest.fixture(scope="module")
def workers(job_stack: JobStack) -> list[CeleryProcess]:
    return job_stack.start_workers(2)


def runs(workers: list[CeleryProcess]) -> list[dict[str, Any]]:
    found = [
        event
        for worker in workers
        for event in worker.events()
        if event.get("event") == "task.finished" and event.get("task") == TASK
    ]
    return sorted(found, key=lambda event: float(event["published_at"]))


def beat_env() -> dict[str, str]:
    return {
        "SCHEDULE_CLEANUP_SECONDS": str(TICK),
        "SCHEDULE_EXPIRE_UNPAID_ORDERS_SECONDS": "0",
        "SCHEDULE_REVENUE_ROLLUP_SECONDS": "0",
        "BEAT_MAX_INTERVAL": "0.25",
        "BEAT_LOCK_TIMEOUT": "3",
    }


def test_two_beat_processes_fire_each_job_once_per_tick_and_the_standby_takes_over(
    job_stack: JobStack, workers: list[CeleryProcess]
) -> None:
    beats = [job_stack.start_beat(name, **beat_env()) for name in ("beat1", "beat2")]
    leader = None
    deadline = time.monotonic() + 30
    while leader is None and time.monotonic() < deadline:
        leader = next(
            (b for b in beats if any(e.get("event") == "beat: Acquired lock" for e in b.events())),
            None,
        )
        time.sleep(0.1)
    assert leader is not None, "no beat acquired the lock"
    standby = next(b for b in beats if b is not leader)

    # Six runs, polled for (a deadline, not a fixed wait): then judge them by their own stamps.
    deadline = time.monotonic() + 30 * TICK
    while len(fired := runs(workers)) < 6:
        assert time.monotonic() < deadline, f"only {len(fired)} runs in {30 * TICK:.0f} s"
        time.sleep(0.1)
    senders = {event["published_by"].split(":")[1] for event in fired}
    published = [float(event["published_at"]) for event in fired]
    gaps = [later - earlier for earlier, later in itertools.pairwise(published)]
    ticks = (published[-1] - published[0]) / TICK
    print(  # noqa: T201  # the figure the docs quote (pytest -s)
        f"\n[{job_stack.broker}] two beats, {len(fired)} runs over {ticks:.1f} ticks, "
        f"senders={sorted(senders)}, smallest gap={min(gaps):.2f}s"
    )
    assert standby.popen.poll() is None, "the standby beat must keep running, waiting"
    assert not any(e.get("event") == "beat: Acquired lock" for e in standby.events())
    # Only the lock holder sent, and no tick was sent twice (two sends would be ~0 s apart):
    # at most one run per tick between the first and the last.
    assert senders == {str(leader.pid)}
    assert min(gaps) > TICK / 2
    assert len(fired) <= ticks + 1.5

    # The leader dies without releasing its lock: the standby takes over when it expires.
    leader.kill_hard()
    killed_at = time.time()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        after = [e for e in runs(workers) if float(e["published_at"]) > killed_at]
        if len(after) >= 3:
            break
        time.sleep(0.2)
    after = [e for e in runs(workers) if float(e["published_at"]) > killed_at]
    published = [float(e["published_at"]) for e in after]
    print(  # noqa: T201
        f"[{job_stack.broker}] standby took over {published[0] - killed_at:.1f}s after the kill"
        if published
        else ""
    )
    assert len(after) >= 3
    assert {e["published_by"].split(":")[1] for e in after} == {str(standby.pid)}
    assert min(b - a for a, b in itertools.pairwise(published)) > TICK / 2
