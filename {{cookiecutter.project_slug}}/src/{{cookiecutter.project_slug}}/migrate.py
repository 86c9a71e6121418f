"""Apply migrations from code (CLI, dev launcher, tests) without an alembic.ini on disk."""

from __future__ import annotations

import asyncpg
from alembic import command
from alembic.config import Config
from sqlalchemy import make_url

SCRIPT_LOCATION = "{{ cookiecutter.project_slug }}:migrations"


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url)
    return config


# What the server (or the network) says before any migration runs; a migration that fails
# afterwards is a bug in the migration and keeps its traceback.
UNREACHABLE = (
    OSError,
    asyncpg.InvalidCatalogNameError,
    asyncpg.InvalidAuthorizationSpecificationError,
    asyncpg.CannotConnectNowError,
)


class DatabaseUnreachable(Exception):
    """The database to migrate cannot be reached or does not exist; the message says which."""


def upgrade_to_head(database_url: str | None = None) -> None:
    """Apply every migration; :class:`DatabaseUnreachable` (a plain sentence) when there is
    no server, no such database or no such role."""
    try:
        command.upgrade(alembic_config(database_url), "head")
    except Exception as error:
        cause = innermost(error)
        if not isinstance(cause, UNREACHABLE):
            raise
        where = make_url(database_url).render_as_string() if database_url else "the database"
        raise DatabaseUnreachable(f"cannot migrate {where}: {cause}") from error


def innermost(error: BaseException) -> BaseException:
    """SQLAlchemy wraps the adapter's error, which wraps asyncpg's: the server's own words
    ('database "shop" does not exist') are at the bottom of the chain."""
    while error.__cause__ is not None:
        error = error.__cause__
    return error
