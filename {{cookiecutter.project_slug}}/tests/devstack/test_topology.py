"""The local stack's pieces, one at a time: rendered configs, the process policy, the preflight.

The whole stack under load is proven in tests/topology; these run in milliseconds to seconds.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from {{ cookiecutter.project_slug }}.devstack.topology import (
    StackSettings,
    load_procfile,
    pid_alive,
    ports_in_use,
    render_configs,
)

PROJECT_DIR = Path(__file__).parents[2]


@pytest.fixture
def stack_settings() -> StackSettings:
    return StackSettings.model_validate(
        {
            "api_port": 9101,
            "api_instances": 3,
            "gateway_port": 9180,
            "gateway_ops_port": 9182,
            "edge_port": 9100,
            "s3_port": 9133,
            "s3_internal_ports_from": 19130,
        }
    )


def test_rendered_configs_bind_loopback_on_the_configured_ports(
    stack_settings: StackSettings, tmp_path: Path
) -> None:
    env = render_configs(stack_settings, PROJECT_DIR, tmp_path, edge=True)

    traefik = yaml.safe_load((tmp_path / "traefik" / "traefik.yml").read_text())
    assert traefik["entryPoints"]["web"]["address"] == "127.0.0.1:9180"
    assert traefik["entryPoints"]["ops"]["address"] == "127.0.0.1:9182"
    # Locally the edge connects from loopback; nobody else may forward client headers.
    assert traefik["entryPoints"]["web"]["forwardedHeaders"]["trustedIPs"] == ["127.0.0.1"]
    assert "docker" not in traefik["providers"]  # no Docker needed
    dynamic = Path(traefik["providers"]["file"]["directory"])
    assert dynamic == PROJECT_DIR / "deploy" / "traefik" / "dynamic"  # the compose file itself

    backend = (tmp_path / "varnish" / "backend.vcl").read_text()
    assert '.host = "127.0.0.1"' in backend
    assert '.port = "9180"' in backend

    options = dict(
        line.split("=", 1) for line in (tmp_path / "seaweedfs" / "options").read_text().split()
    )
    assert options["ip.bind"] == "127.0.0.1"
    assert options["s3.port"] == "9133"
    assert options["bucket"] == stack_settings.s3_bucket
    assert options["master.port"] == "19130"

    assert env["API_UPSTREAMS"] == (
        "http://127.0.0.1:9101,http://127.0.0.1:9102,http://127.0.0.1:9103"
    )
    assert env["S3_ENDPOINT_URL"] == "http://127.0.0.1:9133"


def test_the_rest_of_the_static_gateway_config_is_the_compose_one(
    stack_settings: StackSettings, tmp_path: Path
) -> None:
    render_configs(stack_settings, PROJECT_DIR, tmp_path, edge=True)
    local = yaml.safe_load((tmp_path / "traefik" / "traefik.yml").read_text())
    shared = yaml.safe_load((PROJECT_DIR / "deploy" / "traefik" / "traefik.yml").read_text())
    for key in ("serversTransport", "metrics", "ping", "global", "log"):
        assert local[key] == shared[key], key
    assert local["accessLog"]["fields"] == shared["accessLog"]["fields"]


def test_every_port_is_named_after_the_setting_that_moves_it(
    stack_settings: StackSettings,
) -> None:
    named = stack_settings.named_ports(edge=True)
    assert named["API_PORT"] == 9101
    assert named["API_PORT + 2"] == 9103
    assert named["EDGE_PORT"] == 9100
    assert "EDGE_PORT" not in stack_settings.named_ports(edge=False)
    assert len(set(named.values())) == len(named)  # no two pieces share a port


def test_a_port_in_use_is_reported() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        assert ports_in_use({"GATEWAY_PORT": port}) == {"GATEWAY_PORT": port}


def test_the_procfile_runs_every_piece_of_the_topology() -> None:
    processes = load_procfile(PROJECT_DIR / "Procfile", without=set())
    assert set(processes) == {
        "api",
        "gateway",
        "edge",
        "s3",
        "worker",
        "beat",
        "relay",
        "consumers",
    }
    assert "edge" not in load_procfile(PROJECT_DIR / "Procfile", without={"edge"})
    # exec: the PID honcho reports is the server's own, so a signal reaches the server.
    assert all(command.startswith("exec ") for command in processes.values())


MANAGER_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from {{ cookiecutter.project_slug }}.devstack.topology import StackManager

    def announce(manager):
        print(json.dumps(manager.pids()), flush=True)

    manager = StackManager(grace_seconds=5, on_all_started=announce)
    for name in ("api.1", "api.2", "gateway.1"):
        manager.add_process(name, "exec sleep 60")
    manager.loop()
    sys.exit(0)
    """
)


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], dict[str, int]]]:
    script = tmp_path / "manager.py"
    script.write_text(MANAGER_SCRIPT)
    process = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=dict(os.environ)
    )
    assert process.stdout is not None
    pids: dict[str, int] = {}
    for line in process.stdout:
        if line.startswith("{"):
            pids = json.loads(line)
            break
    yield process, pids
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        process.wait(10)
    for pid in pids.values():
        if pid_alive(pid):
            os.kill(pid, signal.SIGKILL)


def wait_dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


def test_a_dead_api_instance_does_not_stop_the_stack(
    managed: tuple[subprocess.Popen[str], dict[str, int]],
) -> None:
    process, pids = managed
    os.kill(pids["api.1"], signal.SIGKILL)
    assert wait_dead(pids["api.1"])
    time.sleep(1)  # plain honcho would be tearing everything down by now
    assert process.poll() is None
    assert pid_alive(pids["api.2"])
    assert pid_alive(pids["gateway.1"])


def test_anything_else_dying_stops_everything(
    managed: tuple[subprocess.Popen[str], dict[str, int]],
) -> None:
    process, pids = managed
    os.kill(pids["gateway.1"], signal.SIGKILL)
    process.wait(15)
    assert all(wait_dead(pid) for pid in pids.values())


def test_the_last_api_instance_dying_stops_everything(
    managed: tuple[subprocess.Popen[str], dict[str, int]],
) -> None:
    process, pids = managed
    os.kill(pids["api.1"], signal.SIGKILL)
    os.kill(pids["api.2"], signal.SIGKILL)
    process.wait(15)
    assert wait_dead(pids["gateway.1"])


def test_sigterm_stops_every_process(
    managed: tuple[subprocess.Popen[str], dict[str, int]],
) -> None:
    process, pids = managed
    process.send_signal(signal.SIGTERM)
    process.wait(15)
    assert all(wait_dead(pid) for pid in pids.values())


def test_the_launcher_refuses_a_busy_port_and_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        env = {
            **os.environ,
            "GATEWAY_PORT": str(port),
            "DEVSTACK_DIR": str(tmp_path),
            # No /usr/sbin: varnishd is not found, so the edge notice shows too.
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        }
        result = subprocess.run(
            [sys.executable, "-m", "{{ cookiecutter.project_slug }}", "dev"],
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert result.returncode == 1
    assert f"{port} (GATEWAY_PORT)" in result.stderr
    if shutil.which("varnishd", path=env["PATH"]) is None:
        assert "varnishd not found" in result.stdout
