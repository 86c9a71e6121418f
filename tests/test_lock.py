"""The bake ships a lock (the Dockerfile syncs ``--locked``), and the declared floors are real:
the lowest allowed direct versions import the project and pass a cheap slice of its suite."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.conftest import TEMPLATE, assert_ok, bake, baked_env, run, uv

# Cheap and broad: settings, the migrations (alembic, through asyncio.run), password hashing,
# keyset pagination, the app factory and its lifespan (every client it builds: Postgres, Redis,
# S3, broker), the report's reads on Postgres; sync tests between session-scoped async fixtures.
LOWEST_SLICE = [
    "tests/test_config.py",
    "tests/migrations/test_migrations.py",
    "tests/auth/test_security.py",
    "tests/patterns/test_keyset.py",
    "tests/health/test_router.py",
    "tests/reports/test_repository.py",
]


def test_the_bake_ships_a_lock_that_matches_pyproject(tmp_path: Path) -> None:
    project = bake(tmp_path)
    assert (project / "uv.lock").is_file(), "the post-gen hook writes uv.lock"
    assert_ok(run([uv(), "lock", "--check"], project, baked_env()), "uv lock --check")
    dockerfile = (project / "Dockerfile").read_text()
    assert "COPY pyproject.toml uv.lock ./" in dockerfile
    assert "--locked" in dockerfile


def test_a_bake_without_network_succeeds_and_says_what_to_run(tmp_path: Path) -> None:
    # An empty cache and no network: uv cannot resolve anything.
    env = baked_env(UV_OFFLINE="1", UV_CACHE_DIR=str(tmp_path / "empty-cache"))
    command = [sys.executable, "-m", "cookiecutter", "--no-input", "-o", str(tmp_path / "out")]
    result = subprocess.run(
        [*command, str(TEMPLATE)], capture_output=True, text=True, env=env, check=False
    )
    assert result.returncode == 0, result.stderr[-3000:]
    project = tmp_path / "out" / "ninefold_shop"
    assert (project / "pyproject.toml").is_file()
    assert not (project / "uv.lock").exists()
    [line] = [line for line in result.stdout.splitlines() if line.startswith("ninefold:")]
    assert "no uv.lock was written" in line
    assert f"run `uv lock` in {project}" in line
    assert "Traceback" not in result.stdout + result.stderr


def declared_floors(project: Path) -> dict[str, str]:
    """``name: floor`` of every ``name>=floor`` in the project's dependencies."""
    dependencies = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    floors = {}
    for requirement in dependencies["dependencies"]:
        found = re.match(r"([A-Za-z0-9_.-]+)(\[[^]]*\])?>=([0-9.]+(?:[ab][0-9]+)?)", requirement)
        assert found, f"{requirement!r} has no floor"
        floors[found[1].lower()] = found[3]
    return floors


def installed_versions(project: Path, env: dict[str, str]) -> dict[str, str]:
    listed = run([uv(), "pip", "list", "--format", "json"], project, env)
    assert_ok(listed, "uv pip list")
    versions = {}
    for package in json.loads(listed.stdout):
        version = package["version"]
        # 1.16.0 satisfies the floor 1.16 exactly: compare without trailing zeros.
        while version.endswith(".0") and version.count(".") > 1:
            version = version.removesuffix(".0")
        versions[package["name"].lower()] = version
    return versions


@pytest.mark.slow
def test_the_lowest_allowed_versions_pass_a_slice_of_the_suite(tmp_path: Path) -> None:
    project = bake(tmp_path, ci="none")
    env = baked_env()
    # The service's dependencies and the test tools at their floors; the stack and deploy
    # groups (binaries for the topology and manifest checks) are not needed for this slice.
    sync = [uv(), "sync", "--quiet", "--resolution", "lowest-direct"]
    sync += ["--no-group", "stack", "--no-group", "deploy"]
    assert_ok(run(sync, project, env), "uv sync --resolution lowest-direct")
    installed = installed_versions(project, env)
    floors = declared_floors(project)
    # lowest-direct really took the floors: the floor itself, or the first release of its
    # series (celery-redbeat 2.3 starts at 2.3.2).
    above = {
        name: (floor, installed[name])
        for name, floor in floors.items()
        if installed[name] != floor and not installed[name].startswith(f"{floor}.")
    }
    assert above == {}, "installed above the floor (floor, installed)"
    pytest_command = [uv(), "run", "--no-sync", "pytest", "-n", "0", "-p", "no:randomly", "-q"]
    # An option the installed pytest-asyncio does not know is a floor that is too low.
    pytest_command += ["-W", "error::pytest.PytestConfigWarning", *LOWEST_SLICE]
    result = run(pytest_command, project, env)
    assert_ok(result, "the slice on the lowest versions")
    assert " passed" in result.stdout
    assert "failed" not in result.stdout.splitlines()[-1]
