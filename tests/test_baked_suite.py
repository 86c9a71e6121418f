"""The test that matters most: a fresh bake passes its own lint and its whole test suite against
real servers, with nothing skipped."""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import assert_ok, bake, baked_env, machine, run

# A ceiling against a hang, not a target: a baked suite takes 10-13 min on 2 cores, and CI's
# 45 minutes must hold both of them and the rest.
SUITE_TIMEOUT = 1200

SUMMARY = re.compile(r"=+ (?P<summary>.*\d+ passed.*) in [\d.]+s")
SKIP_LINE = re.compile(r"^SKIPPED \[\d+\] (?P<where>[^:]+:\d+): (?P<reason>.*)$", re.MULTILINE)
# The only skip a machine without a Docker engine may report: building the image needs one.
ALLOWED_SKIPS = ("no Docker engine reachable",)


def summary_of(output: str) -> str:
    matches = SUMMARY.findall(output)
    assert matches, f"no pytest summary in the output:\n{output[-3000:]}"
    return str(matches[-1])


def assert_all_passed_none_skipped(output: str) -> int:
    """Every test passed; the only skips allowed are the ones no machine here can run."""
    summary = summary_of(output)
    for word in ("failed", "error", "xfailed", "deselected"):
        assert word not in summary, f"baked suite reported {summary!r}"
    skips = SKIP_LINE.findall(output)
    unexpected = [
        f"{where}: {reason}" for where, reason in skips if not reason.startswith(ALLOWED_SKIPS)
    ]
    assert unexpected == [], f"baked suite skipped tests that must run: {unexpected}"
    if "skipped" in summary:
        assert skips, f"skips reported without reasons in {summary!r}"
    return int(summary.split(" passed")[0].split()[-1])


@pytest.mark.slow
@pytest.mark.owns_machine
def test_default_bake_passes_make_lint_and_make_test(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    started = time.perf_counter()
    env = baked_env()
    with machine(exclusive=False):
        project = bake(tmp_path)
        assert_ok(run(["make", "lint"], project, env), "make lint")
    with machine(exclusive=True):
        result = run(["make", "test"], project, env, timeout=SUITE_TIMEOUT)
    assert_ok(result, "make test")
    passed = assert_all_passed_none_skipped(result.stdout)
    record_property("tests_passed", passed)
    record_property("bake_to_green_seconds", round(time.perf_counter() - started, 1))


@pytest.mark.slow
@pytest.mark.owns_machine
def test_minimal_bake_passes_on_throwaway_servers(
    tmp_path: Path, record_property: Callable[[str, object], None]
) -> None:
    """With no DATABASE_URL/REDIS_URL set, the suite starts its own servers from local binaries:
    the path a fresh machine with Postgres and Redis installed takes."""
    # broker=rabbitmq: its topology proofs once failed here because every worker was named
    # celery@<host> and a second one on the broker died (tests/worker/test_worker_names.py).
    env = baked_env(DATABASE_URL=None, REDIS_URL=None)
    with machine(exclusive=False):
        project = bake(tmp_path, ci="none", broker="rabbitmq")
        assert_ok(run(["make", "install"], project, env), "make install")
    with machine(exclusive=True):
        result = run(["make", "test"], project, env, timeout=SUITE_TIMEOUT)
    assert_ok(result, "make test on throwaway servers")
    passed = assert_all_passed_none_skipped(result.stdout)
    record_property("tests_passed_on_throwaway_servers", passed)
