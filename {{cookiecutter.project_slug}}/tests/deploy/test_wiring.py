"""One set of names everywhere: every env var and probe the deploy files use exists in the app.

A setting renamed in config.py, or a route moved, would otherwise leave compose or Kubernetes
setting a variable nobody reads, or probing a path that 404s, and the failure would show up
only in a deploy.
"""

from __future__ import annotations

import re
from typing import Any

from devstack.canary import CanarySettings
from devstack.settings import StackSettings

from {{ cookiecutter.project_slug }}.app import create_app
from {{ cookiecutter.project_slug }}.config import Settings
from tests.deploy.conftest import APP_SERVICES, PROJECT_DIR, gateway_config, pod_spec

SETTINGS = {name.upper() for name in Settings.model_fields}

# Names the deploy files use that are not Settings fields, each with the reason.
NOT_SETTINGS = {
    **{
        name.upper(): "the local stack's ports and places (devstack StackSettings), never the app's"
        for name in StackSettings.model_fields
    },
    **{
        f"CANARY_{name.upper()}": "the local canary and its controller (devstack CanarySettings)"
        for name in CanarySettings.model_fields
    },
    "API_HOST": "where the serve command binds (cli.py): a server argument, not app config",
    "API_PORT": "where the serve command listens (cli.py): a server argument, not app config",
    "IMAGE": "compose: which image tag to run",
    "PROMETHEUS_PORT": "compose: where the Prometheus UI is published on loopback",
    "GRAFANA_PORT": "compose: where the Grafana UI is published on loopback",
    "POSTGRES_PASSWORD": "compose: the postgres container's password, spliced into DATABASE_URL",
    "PATH": "Dockerfile: the virtualenv on the PATH",
    "PYTHONUNBUFFERED": "Dockerfile: interpreter behaviour",
    "PYTHONDONTWRITEBYTECODE": "Dockerfile: interpreter behaviour (read-only root)",
}


def compose_names(compose_config: dict[str, Any]) -> set[str]:
    names: set[str] = set()
    for service in APP_SERVICES:
        names |= set(compose_config["services"][service]["environment"])
    # ${VAR:-default} anywhere in the file, infrastructure services included.
    text = (PROJECT_DIR / "compose.yaml").read_text()
    names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", text))
    return names


def kubernetes_names(manifests: list[dict[str, Any]]) -> set[str]:
    names: set[str] = set()
    for manifest in manifests:
        # The dashboard's ConfigMap holds a file for Grafana, not environment variables.
        labels = manifest["metadata"].get("labels", {})
        if manifest["kind"] == "ConfigMap" and "grafana_dashboard" not in labels:
            names |= set(manifest["data"])
        if manifest["kind"] in {"Deployment", "Job"}:
            for container in pod_spec(manifest)["containers"]:
                for variable in container.get("env", []):
                    names.add(variable["name"])
                    secret = variable.get("valueFrom", {}).get("secretKeyRef")
                    if secret:
                        names.add(secret["key"])
    return names


def env_example_names() -> set[str]:
    text = (PROJECT_DIR / ".env.example").read_text()
    return set(re.findall(r"^#? ?([A-Z][A-Z0-9_]*)=", text, re.MULTILINE))


def dockerfile_names() -> set[str]:
    """ENV of the runtime stage: what the running container sees (build-stage ENV configures uv)."""
    text = re.sub(r"\\\n\s*", " ", (PROJECT_DIR / "Dockerfile").read_text())
    text = text.rsplit("\nFROM ", 1)[1]
    names: set[str] = set()
    for line in text.splitlines():
        if line.startswith("ENV "):
            names |= set(re.findall(r"([A-Z][A-Z0-9_]*)=", line))
    return names


def test_every_env_var_of_compose_kubernetes_and_env_example_is_known(
    compose_config: dict[str, Any], production: list[dict[str, Any]]
) -> None:
    used = {
        "compose.yaml": compose_names(compose_config),
        "deploy/k8s": kubernetes_names(production),
        ".env.example": env_example_names(),
        "Dockerfile": dockerfile_names(),
    }
    unknown = {
        source: sorted(names - SETTINGS - set(NOT_SETTINGS)) for source, names in used.items()
    }
    assert unknown == {source: [] for source in used}


def test_compose_and_kubernetes_give_the_app_its_required_settings(
    compose_config: dict[str, Any], production: list[dict[str, Any]]
) -> None:
    required = {
        name.upper() for name, field in Settings.model_fields.items() if field.is_required()
    }
    for service in APP_SERVICES:
        given = set(compose_config["services"][service]["environment"])
        # Migrations need only the database; everything else needs all required settings.
        required_here = {"DATABASE_URL"} if service == "migrate" else required | {"SECRET_KEY"}
        assert required_here <= given, service
    k8s = kubernetes_names(production)
    assert required | {"SECRET_KEY"} <= k8s


def get_routes() -> set[str]:
    """Every GET path the app serves, as its OpenAPI schema lists them."""
    settings = {"database_url": "postgresql://x@h/db", "redis_url": "redis://h:1/0"}
    schema = create_app(Settings.model_validate(settings)).openapi()
    return {path for path, operations in schema["paths"].items() if "get" in operations}


def test_every_probe_path_and_port_exists_in_the_app(
    compose_config: dict[str, Any], production: list[dict[str, Any]]
) -> None:
    routes = get_routes()
    paths = {gateway_config()["http"]["services"]["api"]["loadBalancer"]["healthCheck"]["path"]}
    labels = compose_config["services"]["api"]["labels"]
    paths.add(labels["traefik.http.services.api.loadbalancer.healthcheck.path"])
    api = next(
        m for m in production if m["kind"] == "Deployment" and m["metadata"]["name"] == "api"
    )
    [container] = pod_spec(api)["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        http = container[probe]["httpGet"]
        paths.add(http["path"])
        assert ports[http["port"]] == 8000
    assert paths <= routes, paths - routes
    # One port everywhere: the image listens where every probe and the load balancer look.
    dockerfile = (PROJECT_DIR / "Dockerfile").read_text()
    assert "API_PORT=8000" in dockerfile
    assert "EXPOSE 8000" in dockerfile
    assert labels["traefik.http.services.api.loadbalancer.server.port"] == "8000"
