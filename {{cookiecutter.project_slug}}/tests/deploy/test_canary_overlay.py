"""deploy/k8s/overlays/canary: Argo Rollouts on top of production, validated offline.

Core resources validate against the Kubernetes API schema (kubernetes-validate, strict); the
Rollout and the AnalysisTemplate against Argo Rollouts' own CRD schemas (v1.9.1, vendored in
``schemas/`` from the project's ``manifests/crds``, descriptions dropped and the pod-template
and job subtrees, which the overlay does not use, cut to "any object"), with unknown fields
refused as ``kubectl --validate=strict`` would. The analysis queries parse in promtool and ask
what the local controller asks, with its thresholds.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from devstack.canary import OPS_ROUTES, CanarySettings

from tests.deploy.conftest import DEPLOY, find, kustomize, run

SCHEMAS = json.loads((Path(__file__).parent / "schemas" / "argo-rollouts-v1.9.1.json").read_text())
CRD_GROUPS = ("traefik.io/", "argoproj.io/")


@pytest.fixture(scope="module")
def canary() -> list[dict[str, Any]]:
    return kustomize(DEPLOY / "k8s" / "overlays" / "canary")


def unknown_fields(value: Any, schema: dict[str, Any], path: str = "") -> list[str]:
    """Fields the schema does not name (the API server would drop them, strict refuses)."""
    found: list[str] = []
    if isinstance(value, dict):
        properties = schema.get("properties")
        if properties is not None and not schema.get("x-kubernetes-preserve-unknown-fields"):
            for key, item in value.items():
                if key not in properties:
                    found.append(f"{path}.{key}")
                else:
                    found += unknown_fields(item, properties[key], f"{path}.{key}")
        elif isinstance(schema.get("additionalProperties"), dict):
            for key, item in value.items():
                found += unknown_fields(item, schema["additionalProperties"], f"{path}.{key}")
    elif isinstance(value, list) and isinstance(schema.get("items"), dict):
        for index, item in enumerate(value):
            found += unknown_fields(item, schema["items"], f"{path}[{index}]")
    return found


def test_core_resources_validate_against_the_api_schema(canary: list[dict[str, Any]]) -> None:
    version = kubernetes_validate.latest_version()
    for manifest in canary:
        if not manifest["apiVersion"].startswith(CRD_GROUPS):
            kubernetes_validate.validate(manifest, version, strict=True)


@pytest.mark.parametrize("kind", ["Rollout", "AnalysisTemplate"])
def test_argo_resources_validate_against_the_crd_schemas(
    canary: list[dict[str, Any]], kind: str
) -> None:
    [manifest] = [m for m in canary if m["kind"] == kind]
    assert manifest["apiVersion"] == SCHEMAS[kind]["apiVersion"]
    schema = SCHEMAS[kind]["schema"]
    jsonschema.validate(manifest, schema)
    assert unknown_fields(manifest, schema) == []


def test_the_strict_check_refuses_a_misspelt_field() -> None:
    schema = SCHEMAS["Rollout"]["schema"]
    typo: dict[str, Any] = {"spec": {"strategy": {"canary": {"setps": []}}}}
    assert unknown_fields(typo, schema) == [".spec.strategy.canary.setps"]


def test_the_rollout_owns_the_api_pods(canary: list[dict[str, Any]]) -> None:
    rollout = find(canary, "Rollout", "api")
    deployment = find(canary, "Deployment", "api")
    assert rollout["spec"]["workloadRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "api",
        "scaleDown": "progressively",
    }
    assert rollout["spec"]["selector"] == deployment["spec"]["selector"]
    hpa = find(canary, "HorizontalPodAutoscaler", "api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "argoproj.io/v1alpha1",
        "kind": "Rollout",
        "name": "api",
    }
    pods = deployment["spec"]["template"]["metadata"]["labels"]
    for name in ("api-stable", "api-canary"):
        assert find(canary, "Service", name)["spec"]["selector"].items() <= pods.items()


def test_traffic_goes_through_the_weighted_service_the_rollout_rewrites(
    canary: list[dict[str, Any]], production: list[dict[str, Any]]
) -> None:
    strategy = find(canary, "Rollout", "api")["spec"]["strategy"]["canary"]
    weighted = find(
        canary,
        "TraefikService",
        strategy["trafficRouting"]["traefik"]["weightedTraefikServiceName"],
    )["spec"]["weighted"]["services"]
    assert {s["name"] for s in weighted} == {strategy["stableService"], strategy["canaryService"]}
    assert not [m for m in canary if m["kind"] == "Ingress" and m["metadata"]["name"] == "api"]
    [route] = find(canary, "IngressRoute", "api")["spec"]["routes"]
    assert route["services"] == [{"name": "api-rollout", "kind": "TraefikService"}]
    # The production Ingress's middlewares, in its order.
    namespace = find(production, "Deployment", "api")["metadata"]["namespace"]
    annotation = find(production, "Ingress", "api")["metadata"]["annotations"][
        "traefik.ingress.kubernetes.io/router.middlewares"
    ]
    expected = [ref.split("@")[0].removeprefix(f"{namespace}-") for ref in annotation.split(",")]
    assert [m["name"] for m in route["middlewares"]] == expected


def test_the_steps_are_the_local_controllers(canary: list[dict[str, Any]]) -> None:
    steps = find(canary, "Rollout", "api")["spec"]["strategy"]["canary"]["steps"]
    weights = [step["setWeight"] for step in steps if "setWeight" in step]
    # The Rollout ends at 100 % by itself after its last step.
    assert [*weights, 100] == CanarySettings().plan()
    assert all("pause" in after for after in steps[1::2])


def analysis_queries(canary: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    template = find(canary, "AnalysisTemplate", "canary-vs-stable")["spec"]
    return {metric["name"]: metric for metric in template["metrics"]}


def test_the_analysis_uses_the_local_controllers_thresholds_and_series(
    canary: list[dict[str, Any]],
) -> None:
    settings = CanarySettings()
    metrics = analysis_queries(canary)
    errors = metrics["error-ratio-increase"]
    assert errors["failureCondition"] == f"result[0] > {settings.max_error_increase}"
    latency = metrics["p95-latency-excess"]["provider"]["prometheus"]["query"]
    assert f"{settings.max_p95_ratio} * histogram_quantile(0.95" in latency
    assert f"+ {settings.min_p95_increase_seconds}" in latency
    ops = "|".join(sorted(OPS_ROUTES))
    for metric in metrics.values():
        assert metric["failureLimit"] == 0  # the first failed measurement aborts
        query = metric["provider"]["prometheus"]["query"]
        selectors = re.findall(r"(?:_total|_bucket)\{(.*?)\}\[2m\]", query)
        assert len(selectors) >= 4
        for selector in selectors:
            assert "rollouts_pod_template_hash=" in selector
            excluded = re.search(r'route!~"([^"]+)"', selector)
            assert excluded is not None
            assert sorted(excluded[1].split("|")) == ops.split("|")


def test_the_analysis_queries_parse_in_promtool(
    canary: list[dict[str, Any]], tmp_path: Path
) -> None:
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found: install Prometheus (`apt-get install prometheus`)")
    rules = [
        {
            "record": f"canary:{name.replace('-', '_')}",
            "expr": re.sub(
                r"\{\{args\.([a-z-]+)\}\}", r"\1-value", metric["provider"]["prometheus"]["query"]
            ),
        }
        for name, metric in analysis_queries(canary).items()
    ]
    path = tmp_path / "analysis.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "analysis", "rules": rules}]}))
    result = run(promtool, "check", "rules", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
