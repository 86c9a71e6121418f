"""The Kubernetes manifests: they render, they validate, and they run the API safely."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from tests.deploy.conftest import find, gateway_config, pod_spec

# Traefik's own resources are CRDs: Kubernetes has no schema for them, the checks below do.
CRD_GROUPS = ("traefik.io/",)
WORKLOADS = [
    ("Deployment", "api"),
    ("Deployment", "worker"),
    ("Deployment", "beat"),
    ("Job", "migrate"),
]


def test_base_and_overlay_render(
    base: list[dict[str, Any]], production: list[dict[str, Any]]
) -> None:
    assert base
    assert production


@pytest.mark.parametrize("version", [kubernetes_validate.latest_version()])
def test_every_core_resource_validates_against_the_api_schema(
    production: list[dict[str, Any]], version: str
) -> None:
    checked = 0
    for manifest in production:
        if manifest["apiVersion"].startswith(CRD_GROUPS):
            continue
        kubernetes_validate.validate(manifest, version, strict=True)
        checked += 1
    assert checked >= 10


def test_the_topology_is_all_there(production: list[dict[str, Any]]) -> None:
    kinds = {(m["kind"], m["metadata"]["name"]) for m in production}
    assert {
        ("Namespace", "{{ cookiecutter.project_slug | replace('_', '-') }}"),
        ("ConfigMap", "app-config"),
        ("Deployment", "api"),
        ("Service", "api"),
        ("HorizontalPodAutoscaler", "api"),
        ("PodDisruptionBudget", "api"),
        ("Deployment", "worker"),
        ("Deployment", "beat"),
        ("Job", "migrate"),
        ("Ingress", "api"),
    } <= kinds


def api_container(manifests: list[dict[str, Any]]) -> dict[str, Any]:
    containers: list[dict[str, Any]] = pod_spec(find(manifests, "Deployment", "api"))["containers"]
    [container] = containers
    return container


def test_the_api_has_all_three_probes_on_the_right_routes(production: list[dict[str, Any]]) -> None:
    container = api_container(production)
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert container["startupProbe"]["httpGet"]["path"] == "/healthz"


def test_the_api_takes_its_secret_key_from_a_required_secret(
    production: list[dict[str, Any]],
) -> None:
    # No literal value and no optional ref: a missing secret keeps the pod from starting
    # (CreateContainerConfigError) instead of running it on a default anyone can sign with.
    [secret_key] = [e for e in api_container(production)["env"] if e["name"] == "SECRET_KEY"]
    assert "value" not in secret_key
    ref = secret_key["valueFrom"]["secretKeyRef"]
    assert ref["key"] == "SECRET_KEY"
    assert ref["name"]
    assert ref.get("optional", False) is False


def test_the_api_drains_within_its_grace_period(production: list[dict[str, Any]]) -> None:
    config = find(production, "ConfigMap", "app-config")["data"]
    spec = pod_spec(find(production, "Deployment", "api"))
    pre_stop = api_container(production)["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain, graceful = float(config["DRAIN_SECONDS"]), float(config["GRACEFUL_TIMEOUT"])
    # preStop keeps serving while endpoint removal reaches every proxy, as long as the app's
    # own drain; then SIGTERM: drain, then in-flight requests; all before the kill.
    assert pre_stop == drain
    assert spec["terminationGracePeriodSeconds"] > pre_stop + drain + graceful


def test_every_pod_runs_non_root_on_a_read_only_root(production: list[dict[str, Any]]) -> None:
    for kind, name in WORKLOADS:
        spec = pod_spec(find(production, kind, name))
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert spec["securityContext"]["runAsUser"] != 0
        assert spec["automountServiceAccountToken"] is False
        for container in spec["containers"]:
            security = container["securityContext"]
            assert security["readOnlyRootFilesystem"] is True
            assert security["allowPrivilegeEscalation"] is False
            assert security["capabilities"]["drop"] == ["ALL"]
            # ...with a writable /tmp, and resources the scheduler can plan with.
            assert {m["mountPath"] for m in container["volumeMounts"]} == {"/tmp"}
            assert container["resources"]["requests"]
            assert container["resources"]["limits"]["memory"]


def test_each_role_runs_its_command_from_the_one_image(production: list[dict[str, Any]]) -> None:
    images = set()
    for kind, name in WORKLOADS:
        [container] = pod_spec(find(production, kind, name))["containers"]
        assert container["args"] == [name]
        images.add(container["image"])
    assert images == {"ghcr.io/your-org/{{ cookiecutter.project_slug | replace('_', '-') }}:0.1.0"}


def test_the_service_hpa_and_pdb_select_the_api_pods(production: list[dict[str, Any]]) -> None:
    deployment = find(production, "Deployment", "api")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = find(production, "Service", "api")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    port_names = {p["name"] for p in api_container(production)["ports"]}
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= port_names
    pdb = find(production, "PodDisruptionBudget", "api")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    hpa = find(production, "HorizontalPodAutoscaler", "api")
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "api",
    }
    assert hpa["spec"]["minReplicas"] >= 2  # with the PDB, a drain never empties the service
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0


def test_the_ingress_goes_through_the_gateway_middlewares(
    production: list[dict[str, Any]],
) -> None:
    namespace = find(production, "Deployment", "api")["metadata"]["namespace"]
    middlewares = {
        m["metadata"]["name"]: m["spec"] for m in production if m["kind"] == "Middleware"
    }
    for ingress in (m for m in production if m["kind"] == "Ingress"):
        assert ingress["spec"]["ingressClassName"] == "traefik"
        refs = ingress["metadata"]["annotations"][
            "traefik.ingress.kubernetes.io/router.middlewares"
        ].split(",")
        for ref in refs:
            name, _, provider = ref.partition("@")
            assert provider == "kubernetescrd"
            assert name.removeprefix(f"{namespace}-") in middlewares, ref
    # The same policy the local and compose gateway apply.
    shared = gateway_config()["http"]["middlewares"]
    assert middlewares["retry"] == shared["retry"]
    assert middlewares["body-limit"] == shared["body-limit"]
    # The outer ring keys on the same hop as the gateway's (its rates are template output
    # there, so only the key is compared).
    outer = middlewares["rate-limit"]["rateLimit"]
    assert outer["sourceCriterion"] == shared["rate-limit"]["rateLimit"]["sourceCriterion"]
    assert outer["period"] == shared["rate-limit"]["rateLimit"]["period"]
    api = find(production, "Ingress", "api")["metadata"]["annotations"]
    assert api["traefik.ingress.kubernetes.io/router.middlewares"].endswith(
        "body-limit@kubernetescrd," + namespace + "-retry@kubernetescrd"
    )
