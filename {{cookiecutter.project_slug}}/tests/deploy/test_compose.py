"""compose.yaml: valid for compose itself, and the same topology as `make dev`."""

from __future__ import annotations

import re
from typing import Any

from {{ cookiecutter.project_slug }}.config import DEV_SECRET
from tests.deploy.conftest import (
    APP_SERVICES,
    COMPOSE_SECRET_KEY,
    compose_binary,
    compose_env,
    gateway_config,
    run,
    traefik_static,
)

# Jobs that run to completion before the API starts: the schema, the bucket's rules.
ONE_SHOT = ("migrate", "storage-init")
EXPECTED = {
    *("postgres", "redis", "seaweedfs", "traefik", "varnish", "prometheus", "grafana"),
    *("postgres-exporter", "redis-exporter"),
    *APP_SERVICES,
}


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(?:(\d+)m)?(?:(\d+(?:\.\d+)?)s)?", duration)
    assert duration
    assert match, duration
    return int(match.group(1) or 0) * 60 + float(match.group(2) or 0)


def test_compose_config_is_valid() -> None:
    result = run(compose_binary(), "-f", "compose.yaml", "config", "-q", env=compose_env())
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""  # no warnings either


def test_compose_refuses_to_start_without_a_secret_key() -> None:
    """Fail closed: no published default signs tokens in a container. Unset or empty,
    compose stops before creating anything and names the variable."""
    for value in (None, ""):
        result = run(
            compose_binary(),
            "-f",
            "compose.yaml",
            "config",
            "-q",
            env=compose_env(SECRET_KEY=value),
        )
        assert result.returncode != 0, value
        assert "SECRET_KEY" in result.stderr, result.stderr


def test_every_app_service_gets_the_secret_key_it_was_given(
    compose_config: dict[str, Any],
) -> None:
    for name in APP_SERVICES:
        environment = compose_config["services"][name]["environment"]
        assert environment["SECRET_KEY"] == COMPOSE_SECRET_KEY, name
        assert DEV_SECRET not in str(compose_config)


def test_every_piece_of_the_topology_is_a_service(compose_config: dict[str, Any]) -> None:
    assert set(compose_config["services"]) == EXPECTED


def test_every_long_running_service_has_a_healthcheck(compose_config: dict[str, Any]) -> None:
    for name, service in compose_config["services"].items():
        check = service.get("healthcheck", {})
        if name in ONE_SHOT:
            # One-shot: its exit code is its health (service_completed_successfully).
            assert check.get("disable") is True
            assert service["restart"] == "no"
            continue
        assert check.get("test"), f"{name} has no healthcheck"


def test_startup_order_waits_for_health_not_for_start(compose_config: dict[str, Any]) -> None:
    for name, service in compose_config["services"].items():
        for dependency, rule in service.get("depends_on", {}).items():
            assert rule["condition"] in {
                "service_healthy",
                "service_completed_successfully",
            }, (name, dependency)
    api = compose_config["services"]["api"]["depends_on"]
    for job in ONE_SHOT:
        assert api[job]["condition"] == "service_completed_successfully"
    assert api["postgres"]["condition"] == "service_healthy"
    assert api["redis"]["condition"] == "service_healthy"


def test_the_api_scales(compose_config: dict[str, Any]) -> None:
    api = compose_config["services"]["api"]
    assert "container_name" not in api  # a fixed name would forbid a second replica
    assert "ports" not in api  # replicas are reached through the gateway only
    assert api["deploy"]["replicas"] >= 2


def test_published_ports_bind_loopback_only(compose_config: dict[str, Any]) -> None:
    published = [
        (name, port)
        for name, service in compose_config["services"].items()
        for port in service.get("ports", [])
    ]
    assert {name for name, _ in published} == {"traefik", "varnish", "prometheus", "grafana"}
    assert all(port["host_ip"] == "127.0.0.1" for _, port in published)


def test_forwarded_headers_are_trusted_hop_by_hop(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    gateway_ip = services["traefik"]["networks"]["backend"]["ipv4_address"]
    edge_ip = services["varnish"]["networks"]["backend"]["ipv4_address"]
    for name in APP_SERVICES:
        assert services[name]["environment"]["FORWARDED_ALLOW_IPS"] == gateway_ip
    trusted = traefik_static()["entryPoints"]["web"]["forwardedHeaders"]["trustedIPs"]
    assert trusted == [edge_ip]


def test_the_gateway_and_edge_use_the_deploy_configs(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    mounts = {
        name: {volume["target"]: volume for volume in services[name]["volumes"]}
        for name in ("traefik", "varnish")
    }
    traefik = mounts["traefik"]["/etc/traefik"]
    assert traefik["source"].endswith("deploy/traefik")
    assert traefik["read_only"] is True
    varnish = mounts["varnish"]["/etc/varnish"]
    assert varnish["source"].endswith("deploy/varnish")
    assert varnish["read_only"] is True


def test_the_replicas_get_the_health_checks_make_dev_uses(compose_config: dict[str, Any]) -> None:
    labels = compose_config["services"]["api"]["labels"]
    prefix = "traefik.http.services.api.loadbalancer."
    local = gateway_config()["http"]["services"]["api"]["loadBalancer"]
    assert labels[prefix + "healthcheck.path"] == local["healthCheck"]["path"]
    assert labels[prefix + "healthcheck.interval"] == local["healthCheck"]["interval"]
    assert labels[prefix + "healthcheck.timeout"] == local["healthCheck"]["timeout"]
    passive = local["passiveHealthCheck"]
    assert (
        int(labels[prefix + "passivehealthcheck.maxfailedattempts"]) == passive["maxFailedAttempts"]
    )
    assert labels[prefix + "passivehealthcheck.failurewindow"] == passive["failureWindow"]
    # And compose's router is the shared one, pointing at these replicas.
    weighted = gateway_config()["http"]["services"]["api"]["weighted"]["services"]
    assert weighted == [{"name": "api@docker"}]


def test_the_api_gets_time_to_drain_before_a_kill(compose_config: dict[str, Any]) -> None:
    api = compose_config["services"]["api"]
    env = api["environment"]
    grace = seconds(api["stop_grace_period"])
    assert grace > float(env["DRAIN_SECONDS"]) + float(env["GRACEFUL_TIMEOUT"])
