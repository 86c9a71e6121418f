"""The canary controller's arithmetic and settings, without a stack (the proofs on the real
stack are tests/topology/test_canary.py)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from devstack.canary import (
    CanarySettings,
    Counts,
    judge,
    parse_counts,
    weights_config,
)

METRICS = """\
http_requests_total{method="GET",route="/products",status="200"} 80.0
http_requests_total{method="GET",route="/products",status="500"} 20.0
http_requests_total{method="GET",route="/readyz",status="200"} 1000.0
http_request_duration_seconds_bucket{method="GET",route="/products",le="0.1"} 50.0
http_request_duration_seconds_bucket{method="GET",route="/products",le="0.5"} 100.0
http_request_duration_seconds_bucket{method="GET",route="/products",le="+Inf"} 100.0
http_request_duration_seconds_bucket{method="GET",route="/readyz",le="0.1"} 1000.0
http_request_duration_seconds_bucket{method="GET",route="/readyz",le="0.5"} 1000.0
http_request_duration_seconds_bucket{method="GET",route="/readyz",le="+Inf"} 1000.0
"""


def test_user_routes_are_counted_and_probes_are_not() -> None:
    counts = parse_counts(METRICS)
    assert (counts.requests, counts.errors) == (100.0, 20.0)
    assert counts.error_ratio == 0.2
    # Rank 95 of 100 lies in (0.1, 0.5]: 45 of its 50, as histogram_quantile interpolates.
    assert counts.quantile(0.95) == pytest.approx(0.1 + 0.4 * 45 / 50)


def test_a_counter_reset_counts_from_zero() -> None:
    before = Counts(100, 5, ((1.0, 100),))
    after = Counts(10, 1, ((1.0, 10),))
    assert (after - before) == after
    assert (Counts(150, 5, ((1.0, 150),)) - before).requests == 50


def test_the_verdict_names_what_is_worse() -> None:
    settings = CanarySettings()
    fast = Counts(100, 0, ((0.05, 100), (float("inf"), 100)))
    slow = Counts(100, 0, ((0.05, 0), (1.0, 100), (float("inf"), 100)))
    failing = Counts(100, 20, ((0.05, 100), (float("inf"), 100)))
    assert judge(fast, fast, settings) == ()
    assert judge(slow, fast, settings) == ("p95_latency",)
    assert judge(failing, fast, settings) == ("error_ratio",)
    # As good as the stable group, even if both fail: no regression.
    assert judge(failing, failing, settings) == ()


def test_the_plan_starts_at_the_weight_and_ends_at_100() -> None:
    assert CanarySettings().plan() == [5, 25, 50, 100]
    assert CanarySettings(weight=20).plan() == [20, 25, 50, 100]
    with pytest.raises(ValidationError, match="CANARY_STEPS"):
        CanarySettings(steps="5,50")


def test_weight_0_and_100_leave_one_side_out() -> None:
    def members(weight: int) -> list[dict[str, object]]:
        services = weights_config(["http://127.0.0.1:1"], weight)["http"]["services"]
        return list(services["api-rollout"]["weighted"]["services"])

    assert members(0) == [{"name": "api", "weight": 100}]
    assert members(25) == [{"name": "api", "weight": 75}, {"name": "api-canary", "weight": 25}]
    assert members(100) == [{"name": "api-canary", "weight": 100}]
