"""Fuzzing: ``schemathesis run --checks all`` over the app's own OpenAPI schema, against the
running app.

The CLI reads ``/openapi.json`` from the live server (uvicorn, real Postgres and Redis) and runs
every phase (the schema's examples, boundary coverage, generated fuzzing, and stateful chains
that feed one response's ids into the next request) with every check it has: no 5xx, each
response within its documented status, content type, headers and schema, invalid input refused,
valid input accepted, auth not ignored, a deleted resource gone, a method the path does not
serve refused with a right ``Allow``. It is authenticated as a staff user, so the staff-only
writes are reached too. ``tests/schemathesis.toml`` holds the configuration and says, per
operation, which schema-valid requests are refused and why.

``FUZZ_EXAMPLES`` (default 100) sets the examples per operation and phase. Select with
``-m fuzz``. The live event streams (``/events/*``) are left out: a response never ends by
design, so no check can run on it; their one input, ``Last-Event-ID``, is exercised by the
resume proof in tests/pubsub/test_sse.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.project_slug }}.auth.security import create_access_token
from {{ cookiecutter.project_slug }}.models import User
from tests.conftest import LiveServer

pytestmark = [pytest.mark.fuzz, pytest.mark.load]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
CONFIG = Path(__file__).with_name("schemathesis.toml")
# A deadline for the whole run, not a wait: it took 35 s on a two-core machine.
RUN_DEADLINE_SECONDS = 900


@pytest.fixture
async def staff_token(live_server: LiveServer, committed_engine: AsyncEngine) -> str:
    email = f"fuzz-{os.urandom(4).hex()}@example.com"
    async with committed_engine.begin() as connection:
        user_id = (
            await connection.execute(
                insert(User)
                .values(email=email, password_hash="!", is_staff=True)
                .returning(User.id)
            )
        ).scalar_one()
    token: str = create_access_token(user_id, live_server.settings)[0]
    return token


def run_schemathesis(base_url: str, token: str, report: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run"]
    command += [f"{base_url}/openapi.json", "--checks", "all", "--exclude-path-regex", "^/events/"]
    command += ["--max-examples", str(EXAMPLES), "--no-color", "--report", "json"]
    command += ["--report-json-path", str(report), "--seed", os.environ.get("FUZZ_SEED", "1")]
    env = {**os.environ, "FUZZ_TOKEN": token}
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=RUN_DEADLINE_SECONDS
    )


def test_every_operation_passes_every_check(
    live_server: LiveServer, staff_token: str, tmp_path: Path
) -> None:
    report_path = tmp_path / "schemathesis.json"
    result = run_schemathesis(live_server.base_url, staff_token, report_path)
    print(result.stdout[-3000:])  # noqa: T201  # the figures docs/api-gateway.md quotes
    assert result.returncode == 0, f"{result.stdout[-20000:]}\n{result.stderr[-5000:]}"
    report = json.loads(report_path.read_text())
    assert report["complete"]
    assert (report["failures"], report["errors"]) == ([], [])
    operations = report["operations"]
    # Every operation of the schema but the streams was tested; none errored or was skipped.
    assert operations["tested"] == operations["selected"] >= 20
    assert (operations["errored"], operations["skipped"]) == (0, 0)
    assert report["test_cases"]["generated"] >= EXAMPLES * operations["tested"]
    # Coverage, fuzzing and the stateful chains ran and passed; the examples phase has
    # nothing to run (the schema carries no examples), which schemathesis reports as a skip.
    assert {name: phase["status"] for name, phase in report["phases"].items()} == {
        "examples": "skip",
        "coverage": "success",
        "fuzzing": "success",
        "stateful": "success",
    }
