"""Every ORM model, in one package: one MetaData for Alembic, no import cycles between domains."""

from {{ cookiecutter.project_slug }}.models.base import Base
from {{ cookiecutter.project_slug }}.models.user import User

__all__ = ["Base", "User"]
