from __future__ import annotations

import json

import pytest
from httpx import AsyncClient


async def test_an_unhandled_error_is_logged_with_its_frames_and_never_their_locals(
    app_client: AsyncClient, capsys: pytest.CaptureFixture[str]
) -> None:
    response = await app_client.get("/_faults/unhandled", headers={"X-Request-ID": "boom-1"})
    assert response.status_code == 500
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line[:1] == "{"]
    [error] = [line for line in lines if line["event"] == "http.unhandled_error"]
    assert error["request_id"] == "boom-1"
    [exception] = error["exception"]
    assert exception["exc_type"] == "InjectedFaultError"
    assert exception["frames"][-1]["name"] == "unhandled"
    # Locals would carry passwords, tokens and bodies into the logs (and cost 25x the CPU).
    assert all("locals" not in frame for frame in exception["frames"])
