"""Two ``{{ cookiecutter.project_slug }} worker`` processes on one broker both stay up.

Celery names a worker ``celery@<host>`` unless told otherwise, and on RabbitMQ that node's
control queue is exclusive: the second worker on a machine (a second `make dev`, a test stack
next to a dev stack) died at start with RESOURCE_LOCKED, and honcho took the whole stack down
with it. Each worker now names itself after its PID.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.worker_harness import broker_url, require_broker

pytestmark = pytest.mark.load

READY = b"ready."


@pytest.mark.parametrize("kind", ["rabbitmq"])
def test_two_workers_on_one_broker_both_start_and_stay_up(
    kind: str, tmp_path: Path, jobs_database_url: str, redis_url: str
) -> None:
    url = broker_url(kind)
    require_broker(kind, url)
    env = {
        **os.environ,
        "DATABASE_URL": jobs_database_url,
        "REDIS_URL": redis_url,
        "CELERY_BROKER_URL": url,
        "CELERY_QUEUE": f"names-{os.getpid()}",
        "WORKER_CONCURRENCY": "1",
        "WORKER_METRICS_PORT": "0",
    }
    command = [sys.executable, "-m", "{{ cookiecutter.project_slug }}", "worker"]
    logs = [tmp_path / f"worker{n}.log" for n in (1, 2)]
    processes = []
    for log in logs:
        with log.open("wb") as out:
            # Heartbeat files live in the temp dir: keep these off any other worker's.
            (tmp_path / log.stem).mkdir()
            env["TMPDIR"] = str(tmp_path / log.stem)
            processes.append(
                subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
            )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if any(process.poll() is not None for process in processes):
                break
            if all(READY in log.read_bytes() for log in logs):
                break
            time.sleep(0.2)
        output = "\n".join(log.read_text(errors="replace")[-1500:] for log in logs)
        assert [process.poll() for process in processes] == [None, None], output
        assert all(READY in log.read_bytes() for log in logs), output
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
