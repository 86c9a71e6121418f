"""The edge's VCL: it compiles, and compose's backend is the gateway compose runs."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import DEPLOY, run, traefik_static

VARNISHD = shutil.which("varnishd") or shutil.which("varnishd", path="/usr/sbin:/usr/local/sbin")


@pytest.mark.usefixtures("varnish_installed")
def test_the_vcl_compiles(tmp_path: Path) -> None:
    assert VARNISHD is not None
    # As `make dev` does: a local backend.vcl first in vcl_path, then deploy/varnish.
    (tmp_path / "backend.vcl").write_text(
        'backend gateway { .host = "127.0.0.1"; .port = "8080"; }\n'
    )
    result = run(
        VARNISHD,
        "-C",
        "-j",
        "none",
        "-n",
        str(tmp_path / "work"),
        "-p",
        f"vcl_path={tmp_path}:{DEPLOY / 'varnish'}",
        "-f",
        "default.vcl",
    )
    assert result.returncode == 0, result.stderr[-2000:]


def test_compose_points_the_edge_at_the_gateway(compose_config: dict[str, Any]) -> None:
    backend = (DEPLOY / "varnish" / "backend.vcl").read_text()
    host = re.search(r'\.host = "([^"]+)"', backend)
    port = re.search(r'\.port = "([^"]+)"', backend)
    assert host
    assert port
    assert host.group(1) in compose_config["services"]
    assert traefik_static()["entryPoints"]["web"]["address"] == f":{port.group(1)}"


def test_the_edge_states_the_client_and_never_retries_unsafe_methods() -> None:
    vcl = (DEPLOY / "varnish" / "default.vcl").read_text()
    # Set, not appended to: a client's own X-Forwarded-For never travels further.
    assert "set req.http.X-Forwarded-For = client.ip;" in vcl
    retries = [line for line in vcl.splitlines() if "bereq.retries <" in line]
    assert retries
    assert all('bereq.method ~ "^(GET|HEAD)$"' in line for line in retries)
