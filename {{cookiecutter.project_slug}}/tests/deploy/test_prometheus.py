"""deploy/prometheus: the config and rules load in promtool, and every alert has a unit test.

promtool comes with Debian's ``prometheus`` package; the test fails (never skips) without it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import DEPLOY, find, kustomize, pod_spec, run

PROMETHEUS = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
UNIT_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def test_the_config_and_its_rule_files_check(promtool: str) -> None:
    result = run(promtool, "check", "config", "prometheus.yml", cwd=PROMETHEUS)
    assert result.returncode == 0, result.stdout + result.stderr
    listed = {PROMETHEUS / name for name in _load(PROMETHEUS / "prometheus.yml")["rule_files"]}
    assert listed == set(RULE_FILES)


def test_the_rules_check(promtool: str) -> None:
    result = run(promtool, "check", "rules", *map(str, RULE_FILES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rule_unit_tests_pass(promtool: str) -> None:
    result = run(promtool, "test", "rules", *map(str, UNIT_TESTS))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test_that_sees_it_fire() -> None:
    alerts = {
        rule["alert"]
        for path in RULE_FILES
        for group in _load(path)["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    fired = {
        check["alertname"]
        for path in UNIT_TESTS
        for case in _load(path)["tests"]
        for check in case.get("alert_rule_test", [])
        if check["exp_alerts"]
    }
    silent = {
        check["alertname"]
        for path in UNIT_TESTS
        for case in _load(path)["tests"]
        for check in case.get("alert_rule_test", [])
        if not check["exp_alerts"]
    }
    assert alerts - fired == set(), "alerts no test sees firing"
    assert alerts - silent == set(), "alerts no test sees staying silent"


def test_every_cause_alert_names_a_fix_and_every_slo_alert_a_runbook() -> None:
    for path in RULE_FILES:
        for group in _load(path)["groups"]:
            for rule in group["rules"]:
                if "alert" in rule:
                    key = "runbook" if rule["labels"].get("slo") else "fix"
                    assert rule["annotations"].get(key), (rule["alert"], key)
                    assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]


def test_compose_runs_prometheus_on_the_deploy_config(compose_config: dict[str, Any]) -> None:
    services = compose_config["services"]
    prometheus = services["prometheus"]
    [volume] = prometheus["volumes"]
    assert Path(volume["source"]) == PROMETHEUS
    assert volume["target"] == "/etc/prometheus"
    # Every scrape target names a compose service (the edge's exporter is optional).
    config = _load(PROMETHEUS / "prometheus.yml")
    hosts = {
        target.split(":")[0]
        for job in config["scrape_configs"]
        for static in job.get("static_configs", [])
        for target in static["targets"]
    } | {
        name
        for job in config["scrape_configs"]
        for dns in job.get("dns_sd_configs", [])
        for name in dns["names"]
    }
    assert hosts - services.keys() == set()
    # The worker's metrics must be reachable from another container, and so must the others'.
    assert services["worker"]["environment"]["WORKER_METRICS_HOST"] == "0.0.0.0"  # noqa: S104
    for role in ("beat", "relay", "consumers"):
        assert services[role]["environment"][f"{role.upper()}_METRICS_PORT"] == "9101"
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    # The jobs `make dev` scrapes (tests/topology/test_observability.py), which the dashboard's
    # panels read: the Postgres and Redis ones through their exporters.
    assert jobs == {"api", "worker", "beat", "relay", "consumers", "gateway", "edge"} | {
        "postgres",
        "redis",
    }


# The Kubernetes workloads Prometheus scrapes, and the container port name it keeps for each.
SCRAPED = {"api": "http", "worker": "metrics", "beat": "metrics"}
SCRAPED |= {"relay": "metrics", "consumers": "metrics"}


def test_the_kubernetes_scrape_config_checks_and_uses_the_same_rules(
    promtool: str, tmp_path: Path
) -> None:
    config = _load(PROMETHEUS / "kubernetes.yml")
    assert {PROMETHEUS / name for name in config["rule_files"]} == set(RULE_FILES)
    # Debian builds Prometheus without Kubernetes discovery, so promtool here rejects the
    # kubernetes_sd_configs block itself: check its shape, and let promtool check the rest
    # (relabeling, intervals, the rule files) with a static target in its place.
    for job in config["scrape_configs"]:
        [discovery] = job.pop("kubernetes_sd_configs")
        assert discovery["role"] == "pod"
        job["static_configs"] = [{"targets": ["127.0.0.1:9101"]}]
    config["rule_files"] = [str(PROMETHEUS / name) for name in config["rule_files"]]
    (tmp_path / "kubernetes.yml").write_text(yaml.safe_dump(config))
    result = run(promtool, "check", "config", "kubernetes.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_kubernetes_workload_exposes_the_port_prometheus_keeps(
    production: list[dict[str, Any]],
) -> None:
    config = _load(PROMETHEUS / "kubernetes.yml")
    [app] = [job for job in config["scrape_configs"] if job["job_name"] == "app"]
    keep = [r for r in app["relabel_configs"] if r.get("action") == "keep"][-1]["regex"]
    settings = find(production, "ConfigMap", "app-config")["data"]
    assert settings["WORKER_METRICS_HOST"] == "0.0.0.0"  # noqa: S104  # the pod address
    for component, port_name in SCRAPED.items():
        [workload] = [
            m
            for m in production
            if m["kind"] == "Deployment"
            and m["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
            == component
        ]
        [container] = pod_spec(workload)["containers"]
        ports = {port["name"]: port["containerPort"] for port in container["ports"]}
        assert port_name in ports, (component, ports)
        assert re.fullmatch(keep, f"{component};{port_name}"), (component, keep)
        if port_name == "metrics":
            assert settings[f"{component.upper()}_METRICS_PORT"] == str(ports["metrics"])


def test_the_podmonitor_selects_every_scraped_workload(production: list[dict[str, Any]]) -> None:
    [monitor] = kustomize(DEPLOY / "k8s" / "monitoring")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert monitor["kind"] == "PodMonitor"
    spec = monitor["spec"]
    assert {e["port"] for e in spec["podMetricsEndpoints"]} == set(SCRAPED.values())
    selector = spec["selector"]["matchLabels"]
    for component in SCRAPED:
        workload = next(
            m
            for m in production
            if m["kind"] == "Deployment"
            and m["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]
            == component
        )
        labels = workload["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items(), component
        assert spec["jobLabel"] in labels
    assert (
        monitor["metadata"]["namespace"]
        == find(production, "Namespace", monitor["metadata"]["namespace"])["metadata"]["name"]
    )
