"""Throughput of one API instance on /healthz: uvloop + httptools vs asyncio + h11.

Starts each server configuration as its own process on a free port, drives it with the same
load and writes ``bench/results/http_core.json``. /healthz does no I/O, so this measures the
server and framework overhead every request pays.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

from .loadgen import LoadResult, client_name, run_load

RESULTS = Path(__file__).parent / "results" / "http_core.json"
SERVER = """
import uvicorn
uvicorn.run("{{ cookiecutter.project_slug }}.app:create_app", factory=True, host="127.0.0.1",
            port={port}, loop="{loop}", http="{http}", access_log=False, log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_until_listening(port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not start")


def measure(loop: str, http: str, duration: float) -> LoadResult:
    port = _free_port()
    env = {
        "DATABASE_URL": "postgresql+asyncpg://bench@127.0.0.1:1/bench",  # /healthz does no I/O
        "REDIS_URL": "redis://127.0.0.1:1/0",
        "LOG_LEVEL": "WARNING",
        **os.environ,
    }
    code = SERVER.format(port=port, loop=loop, http=http)
    server = subprocess.Popen([sys.executable, "-c", code], env=env)  # noqa: S603
    try:
        _wait_until_listening(port)
        asyncio.run(run_load("127.0.0.1", port, "/healthz", duration=1.0))  # warm-up
        return asyncio.run(run_load("127.0.0.1", port, "/healthz", duration=duration))
    finally:
        server.terminate()
        server.wait(timeout=30)


def main(duration: float = 5.0) -> dict[str, object]:
    fast = measure("uvloop", "httptools", duration)
    plain = measure("asyncio", "h11", duration)
    results: dict[str, object] = {
        "uvloop_httptools_rps": round(fast.rps, 1),
        "uvloop_httptools_p99_ms": fast.p99_ms,
        "asyncio_h11_rps": round(plain.rps, 1),
        "asyncio_h11_p99_ms": plain.p99_ms,
        "speedup": round(fast.rps / plain.rps, 2) if plain.rps else 0.0,
        "errors": fast.errors + plain.errors,
        "duration_s": duration,
        "client": client_name(),
    }
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")
    print(f"{'server':<22}{'req/s':>10}{'p99 ms':>10}")
    print(f"{'uvloop + httptools':<22}{fast.rps:>10.0f}{fast.p99_ms:>10.2f}")
    print(f"{'asyncio + h11':<22}{plain.rps:>10.0f}{plain.p99_ms:>10.2f}")
    print(f"speedup x{results['speedup']} (client: {client_name()})  ->  {RESULTS}")
    return results


if __name__ == "__main__":
    main()
