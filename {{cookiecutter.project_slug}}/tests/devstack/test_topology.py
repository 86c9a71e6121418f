"""The local stack's pieces, one at a time: rendered configs, the process policy, the preflight.

The whole stack under load is proven in tests/topology; these run in milliseconds to seconds.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from devstack.settings import StackSettings
from devstack.topology import (
    load_procfile,
    pid_alive,
    ports_in_use,
    render_configs,
)

from tests.devstack.cli import run_cli

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
            "prometheus_port": 9190,
            "metrics_ports_from": 9150,
        }
    )


def test_rendered_configs_bind_loopback_on_the_configured_ports(
    stack_settings: StackSettings, tmp_path: Path
) -> None:
    env = render_configs(stack_settings, PROJECT_DIR, tmp_path, without=set())

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


def test_the_local_prometheus_scrapes_every_process_with_the_deploy_rules(
    stack_settings: StackSettings, tmp_path: Path
) -> None:
    env = render_configs(stack_settings, PROJECT_DIR, tmp_path, without=set())
    rendered = tmp_path / "prometheus" / "prometheus.yml"
    config = yaml.safe_load(rendered.read_text())
    targets = {
        job["job_name"]: job["static_configs"][0]["targets"] for job in config["scrape_configs"]
    }
    assert targets["api"] == ["127.0.0.1:9101", "127.0.0.1:9102", "127.0.0.1:9103"]
    assert targets["gateway"] == ["127.0.0.1:9182"]
    ports = {"worker": 9150, "beat": 9151, "relay": 9152, "consumers": 9153}
    ports |= {"postgres": 9154, "redis": 9155, "edge": 9156}
    assert {job: hosts for job, hosts in targets.items() if job in ports} == {
        job: [f"127.0.0.1:{port}"] for job, port in ports.items()
    }
    for variable, job in [("WORKER_METRICS_PORT", "worker"), ("BEAT_METRICS_PORT", "beat")]:
        assert env[variable] == str(ports[job])
    assert [Path(path).parent for path in config["rule_files"]] == [
        PROJECT_DIR / "deploy" / "prometheus" / "rules"
    ] * 3
    promtool = shutil.which("promtool")
    assert promtool, "promtool not found: `apt-get install prometheus`"
    subprocess.run([promtool, "check", "config", str(rendered)], check=True, capture_output=True)

    # A missing exporter is a missing target, not a target that is always down.
    render_configs(stack_settings, PROJECT_DIR, tmp_path, without={"edge", "redis_exporter"})
    jobs = {job["job_name"] for job in yaml.safe_load(rendered.read_text())["scrape_configs"]}
    assert jobs == {"api", "gateway", "worker", "beat", "relay", "consumers", "postgres"}


def test_the_rest_of_the_static_gateway_config_is_the_compose_one(
    stack_settings: StackSettings, tmp_path: Path
) -> None:
    render_configs(stack_settings, PROJECT_DIR, tmp_path, without=set())
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
        "prometheus",
        "postgres_exporter",
        "redis_exporter",
        "edge_exporter",
    }
    assert "edge" not in load_procfile(PROJECT_DIR / "Procfile", without={"edge"})
    # exec: the PID honcho reports is the server's own, so a signal reaches the server.
    assert all(command.startswith("exec ") for command in processes.values())


MANAGER_SCRIPT = textwrap.dedent(
    """
    import json, os, sys
    from devstack.topology import StackManager

    def announce(manager):
        if os.environ.get("STACK_READY"):
            manager.mark_ready()
        print(json.dumps(manager.pids()), flush=True)

    manager = StackManager(
        grace_seconds=5, on_all_started=announce, on_started=announce, max_backoff=2
    )
    for name in ("api.1", "api.2", "gateway.1"):
        manager.add_process(name, "exec sleep 600")
    manager.loop()
    sys.exit(manager.returncode or 0)
    """
)


class Managed:
    """A StackManager in a child process running three `sleep`s; its output read as it comes."""

    def __init__(self, directory: Path, *, ready: bool) -> None:
        script = directory / "manager.py"
        script.write_text(MANAGER_SCRIPT)
        # devstack/ sits beside src/, importable from the project root (as `make dev` runs it).
        env = {**os.environ, "STACK_READY": "1" if ready else "", "PYTHONPATH": str(PROJECT_DIR)}
        self.process = subprocess.Popen(
            [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, env=env
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.output: list[str] = []
        self.every_pid: set[int] = set()
        threading.Thread(target=self._read, daemon=True).start()
        self.pids = self.next_pids(lambda pids: len(pids) == 3)

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line)

    def next_pids(
        self, wanted: Callable[[dict[str, int]], bool], timeout: float = 20
    ) -> dict[str, int]:
        """The PIDs the manager announces next that satisfy ``wanted`` (polled, with a deadline)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.1)
            except queue.Empty:
                continue
            self.output.append(line)
            if line.startswith("{"):
                pids: dict[str, int] = json.loads(line)
                if wanted(pids):
                    self.every_pid |= set(pids.values())
                    return pids
        raise AssertionError(f"no such PIDs announced in {timeout}s:\n{''.join(self.output)}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(15)
        for pid in self.every_pid:
            if pid_alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def managed(tmp_path: Path) -> Iterator[Managed]:
    manager = Managed(tmp_path, ready=True)
    yield manager
    manager.stop()


@pytest.fixture
def launching(tmp_path: Path) -> Iterator[Managed]:
    """A stack that never becomes ready: its processes are still launching."""
    manager = Managed(tmp_path, ready=False)
    yield manager
    manager.stop()


def wait_dead(pid: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


def test_a_crashed_process_is_restarted_with_backoff_while_the_rest_runs(
    managed: Managed,
) -> None:
    first = managed.pids
    os.kill(first["gateway.1"], signal.SIGKILL)
    second = managed.next_pids(lambda pids: pids["gateway.1"] != first["gateway.1"])
    assert pid_alive(second["gateway.1"])
    # Nothing else was touched: same PIDs, still running, the manager too.
    assert {n: p for n, p in second.items() if n != "gateway.1"} == {
        n: p for n, p in first.items() if n != "gateway.1"
    }
    assert all(pid_alive(pid) for pid in second.values())
    assert managed.process.poll() is None

    # A crash loop backs off: 1 s, then 2 s (the cap here), as Kubernetes would.
    os.kill(second["gateway.1"], signal.SIGKILL)
    third = managed.next_pids(lambda pids: pids["gateway.1"] != second["gateway.1"])
    assert pid_alive(third["gateway.1"])
    log = "".join(managed.output)
    assert "gateway.1 restarts in 1s" in log
    assert "gateway.1 restarts in 2s" in log


def test_every_kind_of_process_is_restarted_api_instances_too(managed: Managed) -> None:
    first = managed.pids
    os.kill(first["api.1"], signal.SIGKILL)
    os.kill(first["api.2"], signal.SIGKILL)
    back = managed.next_pids(
        lambda pids: pids["api.1"] != first["api.1"] and pids["api.2"] != first["api.2"]
    )
    assert pid_alive(back["api.1"])
    assert pid_alive(back["api.2"])
    assert managed.process.poll() is None


def test_a_process_exiting_before_the_stack_is_ready_stops_the_launch(
    launching: Managed,
) -> None:
    os.kill(launching.pids["gateway.1"], signal.SIGKILL)
    assert launching.process.wait(15) != 0
    assert all(wait_dead(pid) for pid in launching.pids.values())


def test_sigterm_stops_every_process(managed: Managed) -> None:
    managed.process.send_signal(signal.SIGTERM)
    managed.process.wait(15)
    assert all(wait_dead(pid) for pid in managed.pids.values())


def test_kill_9_of_the_manager_takes_every_child_with_it(managed: Managed) -> None:
    managed.process.kill()  # SIGKILL: no handler runs, only the kernel's PR_SET_PDEATHSIG
    managed.process.wait(15)
    survivors = [pid for pid in managed.pids.values() if not wait_dead(pid)]
    assert survivors == []


def test_the_launcher_refuses_a_busy_port_and_names_the_setting(tmp_path: Path) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        env = {
            "GATEWAY_PORT": str(port),
            # No /usr/sbin: varnishd is not found, so the edge notice shows too.
            "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        }
        result = run_cli("dev", tmp_path, env)
    assert result.returncode == 1
    assert f"{port} (GATEWAY_PORT)" in result.stderr
    if shutil.which("varnishd", path=env["PATH"]) is None:
        assert "varnishd not found" in result.stdout


def test_the_launcher_names_a_database_it_cannot_migrate_and_stops_what_it_started(
    tmp_path: Path,
) -> None:
    from sqlalchemy import make_url

    missing = make_url(os.environ["DATABASE_URL"]).set(database="no_such_db_for_dev")
    result = run_cli(
        "dev", tmp_path, {"DATABASE_URL": missing.render_as_string(hide_password=False)}
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    assert "Cannot start the stack: cannot migrate" in result.stderr
    assert 'database "no_such_db_for_dev" does not exist' in result.stderr
    assert not (tmp_path / "stack.json").exists()  # nothing left recorded as running
