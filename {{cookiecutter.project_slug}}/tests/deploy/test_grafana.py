"""deploy/grafana: the dashboard is well formed, its PromQL parses, and compose and Kubernetes
both load it. Grafana itself is not run here (no package for it on this project's registries).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import yaml

from tests.deploy.conftest import DASHBOARD, DEPLOY, dashboard_queries, find, run

GRAFANA = DEPLOY / "grafana"
ROWS = ["RED per route", "Latency", "Database pool", "Caches", "Jobs", "Bill"]


def dashboard() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(DASHBOARD.read_text())
    return loaded


def test_the_dashboard_has_every_row_and_unique_panel_ids() -> None:
    panels = dashboard()["panels"]
    rows = [panel["title"] for panel in panels if panel["type"] == "row"]
    assert [row.split(":")[0] for row in rows] == ROWS
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids))


def test_every_panel_queries_the_chosen_prometheus() -> None:
    board = dashboard()
    [variable] = board["templating"]["list"]
    assert (variable["name"], variable["type"], variable["query"]) == (
        "datasource",
        "datasource",
        "prometheus",
    )
    for panel in board["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_panel_query_parses_in_promtool(promtool: str, tmp_path: Path) -> None:
    # promtool parses the PromQL of recording rules: one rule per panel query.
    rules = [
        {"record": f"dashboard:query_{n}", "expr": expr}
        for n, expr in enumerate(e for exprs in dashboard_queries().values() for e in exprs)
    ]
    assert len(rules) >= 20
    rule_file = tmp_path / "dashboard.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = run(promtool, "check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_provisions_the_dashboard_on_its_prometheus(compose_config: dict[str, Any]) -> None:
    grafana = compose_config["services"]["grafana"]
    mounts = {
        Path(volume["source"]).relative_to(DEPLOY.parent): volume["target"]
        for volume in grafana["volumes"]
    }
    assert mounts == {
        Path("deploy/grafana/provisioning"): "/etc/grafana/provisioning",
        Path("deploy/grafana/dashboards"): "/var/lib/grafana/dashboards",
    }
    assert all(port["host_ip"] == "127.0.0.1" for port in grafana["ports"])
    assert grafana["environment"]["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"

    provider = yaml.safe_load((GRAFANA / "provisioning/dashboards/service.yml").read_text())
    assert provider["providers"][0]["options"]["path"] == "/var/lib/grafana/dashboards"
    source = yaml.safe_load((GRAFANA / "provisioning/datasources/prometheus.yml").read_text())
    [prometheus] = source["datasources"]
    assert prometheus["url"] == "http://prometheus:9090"
    assert "prometheus" in compose_config["services"]


def test_kubernetes_ships_the_dashboard_as_a_configmap_for_grafanas_sidecar(
    production: list[dict[str, Any]],
) -> None:
    config_map = find(production, "ConfigMap", "grafana-dashboard-service")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"]["service.json"]) == dashboard()
