"""deploy/prometheus: the config and rules load in promtool, and every alert has a unit test.

promtool comes with Debian's ``prometheus`` package; the test fails (never skips) without it.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.conftest import DEPLOY, run

PROMETHEUS = DEPLOY / "prometheus"
RULE_FILES = sorted((PROMETHEUS / "rules").glob("*.yml"))
UNIT_TESTS = sorted((PROMETHEUS / "tests").glob("*.yml"))
PROMTOOL_HINT = (
    "promtool not found: install Prometheus (`apt-get install prometheus`, which ships promtool)"
)


@pytest.fixture(scope="session")
def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        pytest.fail(PROMTOOL_HINT, pytrace=False)
    return found


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
    # The worker's metrics must be reachable from another container.
    assert services["worker"]["environment"]["WORKER_METRICS_HOST"] == "0.0.0.0"  # noqa: S104
