"""The throwaway-server path: what a machine with binaries but no configured URLs gets."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import asyncpg
import pytest
from redis.asyncio import Redis
from sqlalchemy import make_url

from devstack.servers import (
    ServerUnavailable,
    find_postgres_binary,
    provide_services,
)

HAVE_BINARIES = bool(find_postgres_binary("initdb") and shutil.which("redis-server"))


@pytest.mark.skipif(not HAVE_BINARIES, reason="no local PostgreSQL/Redis binaries on this machine")
async def test_throwaway_servers_start_answer_and_stop(tmp_path: Path) -> None:
    urls, started = provide_services(tmp_path, environ={})
    try:
        assert {server.name for server in started} == {"postgres", "redis"}
        pg_url = make_url(urls["DATABASE_URL"]).set(drivername="postgresql")
        assert pg_url.host == "127.0.0.1"
        connection = await asyncpg.connect(pg_url.render_as_string(hide_password=False))
        assert await connection.fetchval("SELECT 1") == 1
        await connection.close()
        redis: Redis = Redis.from_url(urls["REDIS_URL"])
        assert await redis.ping()
        await redis.aclose()
    finally:
        for server in started:
            server.stop()
    # Stopped means stopped: nothing listens on their ports any more.
    for url in (pg_url, make_url(urls["REDIS_URL"].replace("redis://", "postgresql://"))):
        assert url.host
        assert url.port
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((url.host, url.port), timeout=2).close()


def test_configured_urls_win_and_nothing_is_started(tmp_path: Path) -> None:
    environ = {"DATABASE_URL": "postgresql://db/x", "REDIS_URL": "redis://cache:6379/0"}
    urls, started = provide_services(tmp_path, environ)
    assert urls == environ
    assert started == []


def test_missing_binaries_name_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # no initdb, no redis-server, no docker
    monkeypatch.setattr("devstack.servers.find_postgres_binary", lambda name: None)
    with pytest.raises(ServerUnavailable, match="apt-get install postgresql"):
        provide_services(tmp_path, environ={"REDIS_URL": "redis://cache:6379/0"})
