"""Fuzzing: every operation of the app's own OpenAPI schema, against the running app.

schemathesis reads ``/openapi.json`` from the live server (uvicorn, real Postgres and Redis)
and sends generated requests, valid and not, to every operation, authenticated as a staff user
(so the staff-only writes are reached too). Two properties, for every response:

- no 5xx: bad input is a 4xx problem, never a crash;
- a response with a documented status matches its documented schema.

``FUZZ_EXAMPLES`` (default 100) sets the examples per operation. Select with ``-m fuzz``.
The live event streams (``/events/*``) are left out: a response never ends by design, so
neither check can run on it; their one input, ``Last-Event-ID``, is exercised by the resume
proof in tests/pubsub/test_sse.py.
"""

from __future__ import annotations

import os
from collections import Counter
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import checks
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from {{ cookiecutter.project_slug }}.models import User
from tests.conftest import LiveServer

pytestmark = [pytest.mark.fuzz, pytest.mark.load]

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "100"))
CHECKS = [
    checks.not_a_server_error,
    checks.response_schema_conformance,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_headers_conformance,
    checks.negative_data_rejection,
]


@pytest.fixture(scope="session")
def live_schema(live_server: LiveServer) -> Any:
    schema = schemathesis.openapi.from_url(f"{live_server.base_url}/openapi.json")
    return schema.exclude(path_regex="^/events/")


@pytest.fixture
async def staff_headers(live_server: LiveServer, committed_engine: AsyncEngine) -> dict[str, str]:
    email = f"fuzz-{os.urandom(4).hex()}@example.com"
    async with committed_engine.begin() as connection:
        user_id = (
            await connection.execute(
                insert(User)
                .values(email=email, password_hash="!", is_staff=True)
                .returning(User.id)
            )
        ).scalar_one()
    return live_server.auth(user_id)


def fuzz_operation(
    operation: Any, headers: dict[str, str], examples: int, statuses: Counter[int]
) -> int:
    """Run at least ``examples`` generated cases against one operation; return how many ran.
    A failing case raises (after hypothesis has shrunk it to the smallest one that fails).

    hypothesis stops early on an operation with few inputs (it has run out of distinct cases,
    e.g. a route with no parameters), so the run is repeated until the count is reached: each
    repeat draws afresh (no example database) and costs only the few cases still missing.
    """
    ran = 0

    @given(case=operation.as_strategy())
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        nonlocal ran
        ran += 1
        response = case.call_and_validate(headers=headers, checks=CHECKS)
        statuses[response.status_code] += 1

    while ran < examples:
        run()
    return ran


def test_every_operation_answers_without_5xx_and_within_its_schema(
    live_schema: Any, staff_headers: dict[str, str]
) -> None:
    # schemathesis' own pytest integration does not load on this pytest: one test walks every
    # operation instead, and reports all failures together.
    cases: dict[str, int] = {}
    failures: dict[str, str] = {}
    statuses: Counter[int] = Counter()
    for result in live_schema.get_all_operations():
        operation = result.ok()
        try:
            cases[operation.label] = fuzz_operation(operation, staff_headers, EXAMPLES, statuses)
        # schemathesis raises a BaseExceptionGroup when one operation fails in several ways.
        except (Exception, BaseExceptionGroup) as exc:
            failures[operation.label] = str(exc)[:2000]
    print(  # noqa: T201  # the figures docs/api-gateway.md quotes
        f"\nschemathesis: {len(cases) + len(failures)} operations, {sum(cases.values())} cases, "
        f"{len(failures)} failing; statuses {dict(sorted(statuses.items()))}"
    )
    assert failures == {}, "\n\n".join(f"{label}:\n{text}" for label, text in failures.items())
    assert len(cases) >= 20
    # The count CI promises, per operation, not only on average.
    assert {label: n for label, n in cases.items() if n < EXAMPLES} == {}
    # Authenticated and reaching the handlers: not a wall of 401s and 422s.
    assert sum(count for status, count in statuses.items() if 200 <= status < 300) > len(cases)
