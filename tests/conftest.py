"""Helpers for baking the template in tests."""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).resolve().parents[1]
DEFAULT_SLUG = "ninefold_shop"


# A baked suite's load proofs assert counts and ratios that a starved machine can break (a
# health check missed, a pool wait past its timeout). So a suite runs alone: it takes this
# lock exclusively, while every other test (bakes, ruff, mypy: CPU-heavy) takes it shared and
# runs beside its peers, never beside a suite. One file for every xdist worker of the run.
MACHINE_LOCK = Path(tempfile.gettempdir()) / "ninefold-machine.lock"


@contextlib.contextmanager
def machine(*, exclusive: bool) -> Iterator[None]:
    with MACHINE_LOCK.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(autouse=True)
def _share_the_machine(request: pytest.FixtureRequest) -> Iterator[None]:
    if request.node.get_closest_marker("owns_machine"):
        yield  # takes the lock itself, exclusively, around its suite
        return
    with machine(exclusive=False):
        yield


def bake(output_dir: Path, **answers: str) -> Path:
    """Bake the template with ``answers`` over the defaults; return the project folder."""
    return Path(
        cookiecutter(
            str(TEMPLATE), no_input=True, output_dir=str(output_dir), extra_context=answers
        )
    )


def uv() -> str:
    found = shutil.which("uv")
    if not found:
        pytest.fail("uv is not on PATH: `make test` installs it; run the tests through make")
    return found


def run(
    command: list[str],
    cwd: Path,
    env: Mapping[str, str] | None = None,
    timeout: float = 900,
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            command,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as expired:
        # What it was doing when time ran out (for a test suite: the test that hung).
        # (bytes even with text=True: subprocess collects raw chunks until the kill)
        raw = expired.stdout or b""
        output = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        pytest.fail(
            f"{' '.join(command)} ran past {timeout:.0f} s in {cwd}\n"
            f"--- last output ---\n{output[-6000:]}",
            pytrace=False,
        )


def baked_env(**overrides: str | None) -> dict[str, str]:
    """The environment for commands inside a bake: ours minus the template's own virtualenv."""
    env = {
        k: v for k, v in os.environ.items() if k not in {"VIRTUAL_ENV", "UV_PROJECT_ENVIRONMENT"}
    }
    for key, value in overrides.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = value
    return env


def assert_ok(result: subprocess.CompletedProcess[str], what: str) -> None:
    assert result.returncode == 0, (
        f"{what} failed with exit {result.returncode}\n"
        f"--- stdout ---\n{result.stdout[-6000:]}\n--- stderr ---\n{result.stderr[-4000:]}"
    )


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Print what the baked suites measured (tests passed, bake-to-green time) at the end."""
    lines = [
        f"{report.nodeid}: {name} = {value}"
        for report in terminalreporter.stats.get("passed", [])
        for name, value in getattr(report, "user_properties", [])
    ]
    if lines:
        terminalreporter.write_sep("-", "baked project figures")
        for line in lines:
            terminalreporter.write_line(line)
