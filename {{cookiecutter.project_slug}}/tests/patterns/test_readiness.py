"""patterns/readiness.py: checks run under a deadline, and recent success stands in for a probe."""

from __future__ import annotations

from {{ cookiecutter.project_slug }}.patterns.readiness import RecentSuccess, run_checks


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


async def test_recent_success_passes_without_probing_and_a_stale_one_probes() -> None:
    clock = Clock()
    seen = RecentSuccess(fresh_for=1.0, clock=clock)
    probes: list[float] = []

    async def probe() -> None:
        probes.append(clock.now)

    check = seen.or_probe(probe)
    await check()  # nothing seen yet: probe
    clock.now += 0.5
    await check()  # the probe's success is fresh
    seen.record()
    clock.now += 0.75
    await check()  # real traffic's success is fresh
    clock.now += 0.5
    await check()  # 1.25 s since anything succeeded: probe again
    assert probes == [100.0, 101.75]


async def test_a_failing_probe_is_not_recorded_as_success() -> None:
    seen = RecentSuccess(fresh_for=60.0)

    async def down() -> None:
        raise ConnectionRefusedError

    results = await run_checks({"db": seen.or_probe(down)}, deadline=1.0)
    assert not results["db"].ok
    assert not seen.fresh()
