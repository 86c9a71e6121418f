from __future__ import annotations

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.auth.repository import UserRepository
from {{ cookiecutter.project_slug }}.auth.security import hash_password, verify_and_update_password
from {{ cookiecutter.project_slug }}.exceptions import Conflict, NotAuthenticated
from {{ cookiecutter.project_slug }}.models import User

log = structlog.get_logger(__name__)


async def register(session: AsyncSession, email: str, password: str) -> User:
    password_hash = await hash_password(password)
    user = await UserRepository(session).insert_if_absent(email, password_hash)
    if user is None:
        raise Conflict("An account with this email already exists.")
    log.info("user.registered", user_id=str(user.id))
    return user


async def authenticate(session: AsyncSession, email: str, password: str) -> User:
    user = await UserRepository(session).get_by_email(email)
    valid, rehashed = await verify_and_update_password(
        password, user.password_hash if user else None
    )
    if user is None or not valid or not user.is_active:
        log.info("user.login_failed")
        raise NotAuthenticated("Incorrect email or password.")
    if rehashed is not None:
        # Hashed with older Argon2 parameters: upgraded now, the only time the password is
        # known. Flushed here, committed by the request.
        user.password_hash = rehashed
        await session.flush()
        log.info("user.password_rehashed", user_id=str(user.id))
    log.info("user.logged_in", user_id=str(user.id))
    return user
