"""``make dev``: the local stack in one command, no Docker needed.

Finds or starts Postgres and Redis (see :func:`servers.provide_services`), applies migrations
once before any API process starts, seeds sample data, prints what runs where, then hands the
processes in ``Procfile`` to honcho. Ctrl-C or SIGTERM stops honcho's processes and then every
server this launcher started, so a second ``make dev`` starts cleanly.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.devstack.servers import RunningServer, provide_services
from {{ cookiecutter.project_slug }}.logging import configure_logging
from {{ cookiecutter.project_slug }}.migrate import upgrade_to_head
from {{ cookiecutter.project_slug }}.seed import seed_sample_data

STATE_DIR = Path(".devstack")


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


def _banner(env: dict[str, str], started: list[RunningServer]) -> str:
    api = f"http://127.0.0.1:{env['API_PORT']}"
    throwaway = {server.name for server in started}
    rows = [
        ("API", api),
        ("API docs", f"{api}/docs"),
        ("Readiness", f"{api}/readyz"),
        ("Metrics", f"{api}/metrics"),
        ("Postgres", env["DATABASE_URL"] + ("  (throwaway)" if "postgres" in throwaway else "")),
        ("Redis", env["REDIS_URL"] + ("  (throwaway)" if "redis" in throwaway else "")),
        ("Sample login", "demo@example.com / demo-password-123"),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"  {name.ljust(width)}  {value}" for name, value in rows]
    return "\n".join(["", "Local stack is up:", *lines, "", "Ctrl-C stops everything.", ""])


def run_dev(api_port: int) -> int:
    environ = {**_load_dotenv(Path(".env")), **os.environ}
    STATE_DIR.mkdir(exist_ok=True)
    urls, started = provide_services(STATE_DIR.resolve(), environ)
    try:
        env = {**environ, **urls, "API_PORT": str(api_port)}
        env.setdefault("ENVIRONMENT", "development")
        os.environ.update(env)
        configure_logging(Settings())
        upgrade_to_head(env["DATABASE_URL"])
        asyncio.run(seed_sample_data(env["DATABASE_URL"]))
        print(_banner(env, started), flush=True)
        return _run_procfile(env)
    finally:
        for server in reversed(started):
            server.stop()


def _run_procfile(env: dict[str, str]) -> int:
    process = subprocess.Popen(
        [sys.executable, "-m", "honcho", "start", "-f", "Procfile", "-p", env["API_PORT"]],
        env=env,
    )

    def forward(signum: int, _frame: object) -> None:
        process.send_signal(signum)

    # honcho stops its children on SIGINT/SIGTERM; we wait for it, then stop our servers.
    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    return process.wait()
