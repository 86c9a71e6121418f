"""Apply migrations from code (CLI, dev launcher, tests) without an alembic.ini on disk."""

from __future__ import annotations

from alembic import command
from alembic.config import Config

SCRIPT_LOCATION = "{{ cookiecutter.project_slug }}:migrations"


def alembic_config(database_url: str | None = None) -> Config:
    config = Config()
    config.set_main_option("script_location", SCRIPT_LOCATION)
    config.set_main_option("path_separator", "os")
    config.set_main_option("file_template", "%%(year)d%%(month).2d%%(day).2d_%%(rev)s_%%(slug)s")
    if database_url:
        config.set_main_option("sqlalchemy.url", database_url)
    return config


def upgrade_to_head(database_url: str | None = None) -> None:
    command.upgrade(alembic_config(database_url), "head")
