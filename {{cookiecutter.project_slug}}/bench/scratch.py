"""What every benchmark needs around its scratch database and its processes: the database's
URL on the server ``DATABASE_URL`` names, admin statements (CREATE/DROP DATABASE cannot run
in a transaction, so on a plain asyncpg connection), and a process's CPU time."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import asyncpg
from sqlalchemy import make_url


def database_url(name: str, driver: str = "postgresql+asyncpg") -> str:
    """``name`` on the server of ``DATABASE_URL``, for SQLAlchemy (or asyncpg: ``postgresql``)."""
    base = make_url(os.environ["DATABASE_URL"])
    return base.set(drivername=driver, database=name).render_as_string(hide_password=False)


async def admin(*statements: str) -> list[Any]:
    """Run ``statements`` on the server's ``postgres`` database; the last one's rows."""
    connection = await asyncpg.connect(database_url("postgres", "postgresql"))
    try:
        rows: list[Any] = []
        for statement in statements:
            rows = await connection.fetch(statement)
        return rows
    finally:
        await connection.close()


async def database_exists(name: str) -> bool:
    connection = await asyncpg.connect(database_url("postgres", "postgresql"))
    try:
        found = await connection.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
    finally:
        await connection.close()
    return found is not None


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc); 0 for one that is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
