"""Every supported answer combination bakes into a rendered, typed, lint-clean project."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.conftest import TEMPLATE, assert_ok, bake, baked_env, run, uv

# One-off toggles and the meaningful pairs. Components add their answers here as they land.
SUPPORTED_COMBINATIONS: list[dict[str, str]] = [
    {},
    {"ci": "none"},
    {"python_version": "3.12"},
    {"python_version": "3.13", "ci": "none"},
    {"project_name": "Acme Widgets"},
    {"broker": "rabbitmq"},
    {"broker": "rabbitmq", "ci": "none", "python_version": "3.12"},
]

UNRENDERED = re.compile(r"\{\{\s*cookiecutter\.|\{%[-\s]|cookiecutter\.project_slug")


def combination_id(answers: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in answers.items()) or "defaults"


@pytest.fixture(scope="session")
def typing_env(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A synced environment of the default bake: its packages type-check every combination
    (this machine has one Python, so bakes for other versions cannot get their own)."""
    project = bake(tmp_path_factory.mktemp("typing-env"))
    assert_ok(run([uv(), "sync", "--quiet"], project, baked_env()), "uv sync")
    return project / ".venv"


def text_files(project: Path) -> list[Path]:
    return [
        path
        for path in project.rglob("*")
        if path.is_file() and ".venv" not in path.parts and path.suffix not in {".pyc", ".lock"}
    ]


@pytest.mark.parametrize("answers", SUPPORTED_COMBINATIONS, ids=combination_id)
def test_combination_bakes_clean(tmp_path: Path, typing_env: Path, answers: dict[str, str]) -> None:
    project = bake(tmp_path, **answers)

    leftovers = [
        str(path.relative_to(project))
        for path in text_files(project)
        if UNRENDERED.search(path.read_text(errors="ignore"))
    ]
    assert leftovers == [], f"unrendered template syntax in {leftovers}"

    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    version = answers.get("python_version", "3.11")
    assert pyproject["project"]["requires-python"] == f">={version}"
    assert pyproject["tool"]["mypy"]["python_version"] == version

    env = baked_env()
    ruff = str(typing_env / "bin" / "ruff")
    assert_ok(run([ruff, "check", "."], project, env), "ruff check")
    assert_ok(run([ruff, "format", "--check", "."], project, env), "ruff format --check")
    mypy = [str(typing_env / "bin" / "mypy"), "--python-executable", str(typing_env / "bin/python")]
    assert_ok(run(mypy, project, env), "mypy --strict")


def test_the_baked_ci_workflow_starts_what_make_test_needs_and_checks_the_image(
    tmp_path: Path,
) -> None:

    project = bake(tmp_path)
    workflow = yaml.safe_load((project / ".github/workflows/ci.yml").read_text())
    test_job = workflow["jobs"]["lint-and-test"]
    # make test needs Postgres, Redis and RabbitMQ (TEST_BROKERS defaults to both brokers).
    assert set(test_job["services"]) >= {"postgres", "redis", "rabbitmq"}
    assert test_job["services"]["rabbitmq"]["ports"] == ["5672:5672"]
    runs = "\n".join(step.get("run", "") for step in test_job["steps"])
    assert "varnish" in runs  # the edge proofs fail without it
    assert "make test" in runs
    assert "make lint" in runs
    image = "\n".join(step.get("run", "") for step in workflow["jobs"]["image"]["steps"])
    assert "docker build" in image
    assert "{{.State.Health.Status}}" in image  # rendered, not eaten by Jinja
    assert "uv lock --check" in image  # the bake ships uv.lock; the Dockerfile syncs --locked


def test_fastapi_floor_has_dependency_scopes() -> None:
    """``Depends(scope="function")`` (postgres.py) arrived in FastAPI 0.121."""
    project = TEMPLATE / "{{cookiecutter.project_slug}}"
    dependencies = tomllib.loads((project / "pyproject.toml").read_text())["project"][
        "dependencies"
    ]
    assert any(re.fullmatch(r"fastapi>=0\.12[1-9].*|fastapi>=0\.1[3-9].*", d) for d in dependencies)
