from __future__ import annotations

import json

import pytest
from httpx import AsyncClient


def http_request_lines(output: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in output.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "http.request"]


async def test_an_incoming_request_id_is_echoed_and_logged(
    app_client: AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    response = await app_client.get("/users/me", headers={"X-Request-ID": "abc-123"})
    assert response.headers["x-request-id"] == "abc-123"
    [line] = http_request_lines(capsys.readouterr().out)
    assert line["request_id"] == "abc-123"
    assert line["method"] == "GET"
    assert line["route"] == "/users/me"
    assert line["status"] == 401
    assert isinstance(line["duration_ms"], float)


async def test_a_request_id_is_made_when_none_is_sent(app_client: AsyncClient) -> None:
    first = await app_client.get("/healthz")
    second = await app_client.get("/healthz")
    assert first.headers["x-request-id"]
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


@pytest.mark.parametrize("hostile", ["a" * 500, "abc\r\nX-Injected: 1", "<script>"])
async def test_hostile_request_ids_are_replaced(app_client: AsyncClient, hostile: str) -> None:
    response = await app_client.get("/healthz", headers={"X-Request-ID": hostile})
    assert response.headers["x-request-id"] != hostile


async def test_log_lines_logged_during_a_request_carry_its_id(
    app_client: AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    await app_client.post(
        "/auth/login",
        json={"email": "nobody@example.com", "password": "wrong-password"},
        headers={"X-Request-ID": "login-42"},
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line[:1] == "{"]
    failed = [line for line in lines if line["event"] == "user.login_failed"]
    assert failed
    assert failed[0]["request_id"] == "login-42"


async def test_unmatched_paths_share_one_route_label(
    app_client: AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    await app_client.get("/wp-admin/setup.php")
    [line] = http_request_lines(capsys.readouterr().out)
    assert line["route"] == "<unmatched>"
    assert line["path"] == "/wp-admin/setup.php"
