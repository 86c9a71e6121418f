"""Migrations are the schema: they apply from empty, round-trip, and match the models.

Runs pytest-alembic's checks against a database of its own per worker, since they upgrade and
downgrade from an empty schema.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from pytest_alembic import Config as AlembicTestConfig
from pytest_alembic.tests import (
    test_model_definitions_match_ddl,
    test_single_head_revision,
    test_up_down_consistency,
    test_upgrade,
)
from sqlalchemy import NullPool
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from {{ cookiecutter.project_slug }}.migrate import SCRIPT_LOCATION
from tests.conftest import drop_database, recreate_database, run_database_name

__all__ = [
    "test_model_definitions_match_ddl",
    "test_single_head_revision",
    "test_up_down_consistency",
    "test_upgrade",
]


@pytest.fixture(scope="module")
def alembic_config() -> AlembicTestConfig:
    return AlembicTestConfig(
        config_options={"script_location": SCRIPT_LOCATION, "path_separator": "os"}
    )


@pytest.fixture(scope="module")
async def migrations_database_url(worker_id: str) -> AsyncIterator[str]:
    name = run_database_name("migrations", worker_id)
    yield await recreate_database(name)
    await drop_database(name)


@pytest.fixture
def alembic_engine(migrations_database_url: str) -> AsyncEngine:
    # pytest-alembic runs each step in a fresh event loop, so pooled connections could not be
    # reused across steps: NullPool opens one per step.
    return create_async_engine(migrations_database_url, poolclass=NullPool)
