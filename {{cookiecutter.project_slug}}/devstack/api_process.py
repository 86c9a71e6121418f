"""The API as its own uvicorn process on 127.0.0.1, for proofs and benchmarks.

A separate process gives what an in-process app cannot: real TCP connections, a PID to
SIGKILL, and CPU time that belongs to the server alone. Every proof and benchmark that starts
one builds the command and waits for it here, so they all run the server the same way.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import httpx

APP = "{{ cookiecutter.project_slug }}.app:create_app"


def uvicorn_command(
    port: int,
    *,
    app: str = APP,
    backlog: int = 2048,
    keep_alive_seconds: int | None = None,
) -> list[str]:
    """The command line of one API process: uvloop and httptools as in production, no access
    log (the benchmarks measure the server, not its logging), warnings only."""
    command = [sys.executable, "-m", "uvicorn", app, "--factory", "--host", "127.0.0.1"]
    command += ["--port", str(port), "--loop", "uvloop", "--http", "httptools"]
    command += ["--no-access-log", "--log-level", "warning", "--backlog", str(backlog)]
    if keep_alive_seconds is not None:
        command += ["--timeout-keep-alive", str(keep_alive_seconds)]
    return command


# A deadline, not a wait: a healthy server returns at once. It is long because on a loaded
# two-core CI machine an API that imports OpenTelemetry took 7.6 s to start, and its health
# check can answer 503 for a while if Redis is slow to answer there too.
STARTUP_DEADLINE_SECONDS = 120.0


def wait_until_healthy(
    process: subprocess.Popen[bytes],
    base_url: str,
    *,
    health_path: str = "/healthz",
    log_path: Path | None = None,
    timeout: float = STARTUP_DEADLINE_SECONDS,
) -> None:
    """Return once ``health_path`` answers 200; raise, with the last answer and the log's tail
    when there is one, if the process exits or the deadline passes first."""
    deadline = time.monotonic() + timeout
    last_answer = "no answer yet"
    while time.monotonic() < deadline and process.poll() is None:
        try:
            response = httpx.get(f"{base_url}{health_path}", timeout=2.0)
        except httpx.TransportError as error:
            last_answer = f"{type(error).__name__}: {error}"
        else:
            if response.status_code == 200:
                return
            last_answer = f"{response.status_code} {response.text[:500]}"
        # Paused after every failed probe, a 503 included, so polling does not steal the CPU
        # the starting server needs.
        time.sleep(0.1)
    state = "exited" if process.poll() is not None else f"not healthy after {timeout:.0f} s"
    tail = f"; its log:\n{log_path.read_text()[-4000:]}" if log_path is not None else ""
    raise RuntimeError(f"the API at {base_url} {state} (last answer: {last_answer}){tail}")
