from __future__ import annotations

from uuid import UUID, uuid4

import structlog
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.auth.repository import UserRepository
from {{ cookiecutter.project_slug }}.auth.security import hash_password, verify_and_update_password
from {{ cookiecutter.project_slug }}.exceptions import NotAuthenticated
from {{ cookiecutter.project_slug }}.models import User
from {{ cookiecutter.project_slug }}.notifications.notifier import Message, Notifier

log = structlog.get_logger(__name__)


async def register(
    session: AsyncSession, notifier: Notifier, email: str, password: str
) -> User | None:
    """Create the account, or tell the owner of an existing one; the caller cannot tell which.

    Both paths hash the password, write one row and queue one email to ``email``: a welcome
    for a new account, "someone tried to sign up with your address" for a taken one. Only the
    mailbox's owner learns the address has an account. Returns the new user, or ``None``.
    """
    password_hash = await hash_password(password)
    user = await UserRepository(session).insert_if_absent(email, password_hash)
    if user is None:
        existing = await UserRepository(session).get_by_email(email)
        await notifier.send(
            session,
            Message(
                recipient=email,
                subject="Someone tried to create an account with your email",
                body=(
                    "An account with this email already exists. If this was you, sign in, or "
                    "reset your password if you forgot it. If not, you can ignore this email: "
                    "nothing changed."
                ),
                # One per attempt; the per-account register limit bounds how many.
                idempotency_key=f"account-exists:{existing.id if existing else email}:"
                f"{uuid4().hex}",
            ),
        )
        log.info("user.register_existing")
        return None
    await notifier.send(
        session,
        Message(
            recipient=email,
            subject="Welcome",
            body="Your account is ready: sign in with this email and your password.",
            idempotency_key=f"welcome:{user.id}",
        ),
    )
    log.info("user.registered", user_id=str(user.id))
    return user


async def find_login(session: AsyncSession, email: str) -> User | None:
    """The account a login names (read only: the caller ends the session before hashing)."""
    return await UserRepository(session).get_by_email(email)


async def check_password(user: User | None, password: str) -> tuple[User, str | None]:
    """Verify a login against the account read before (no database connection held: Argon2
    runs for tens of ms). Returns the user, and a new hash to store when the stored one used
    older Argon2 parameters; raises :class:`NotAuthenticated` when the login fails."""
    valid, rehashed = await verify_and_update_password(
        password, user.password_hash if user else None
    )
    if user is None or not valid or not user.is_active:
        log.info("user.login_failed")
        raise NotAuthenticated("Incorrect email or password.")
    log.info("user.logged_in", user_id=str(user.id))
    return user, rehashed


async def store_rehash(session: AsyncSession, user_id: UUID, password_hash: str) -> None:
    """Upgrade a hash made with older Argon2 parameters (the only time the password is
    known). Flushed here; the caller commits its own short transaction."""
    await UserRepository(session).set_password_hash(user_id, password_hash)
    log.info("user.password_rehashed", user_id=str(user_id))
