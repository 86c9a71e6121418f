"""Bad answers fail in the pre-gen hook with one sentence; switched-off parts are removed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TEMPLATE, bake


def bake_cli(output_dir: Path, *answers: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "cookiecutter",
            "--no-input",
            "-o",
            str(output_dir),
            str(TEMPLATE),
            *answers,
        ],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize(
    ("slug", "message"),
    [
        ("My Shop", "is not a valid package name"),
        ("9lives", "is not a valid package name"),
        ("shop-api", "is not a valid package name"),
        ("a", "is not a valid package name"),
        ("class", "is a Python keyword"),
        ("json", "standard-library module"),
        ("asyncio", "standard-library module"),
        ("fastapi", "clashes with a package the project depends on"),
        ("tests", "clashes with a package the project depends on"),
    ],
)
def test_invalid_slugs_fail_with_a_sentence_and_leave_nothing(
    tmp_path: Path, slug: str, message: str
) -> None:
    result = bake_cli(tmp_path, f"project_slug={slug}")
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert message in output
    assert "Traceback" not in output.split("ERROR:")[-1].splitlines()[0]
    assert list(tmp_path.iterdir()) == []  # the hook runs before anything is written


def test_unknown_choice_values_are_refused(tmp_path: Path) -> None:
    result = bake_cli(tmp_path, "python_version=3.9")
    assert result.returncode != 0
    assert list(tmp_path.iterdir()) == []


def test_a_project_name_becomes_a_valid_slug(tmp_path: Path) -> None:
    project = bake(tmp_path, project_name="Acme Widgets-API")
    assert project.name == "acme_widgets_api"
    assert (project / "src" / "acme_widgets_api" / "app.py").exists()


def test_ci_none_removes_the_workflow(tmp_path: Path) -> None:
    assert (bake(tmp_path / "on") / ".github" / "workflows" / "ci.yml").exists()
    assert not (bake(tmp_path / "off", ci="none") / ".github").exists()
