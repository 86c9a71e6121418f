from __future__ import annotations

from uuid import UUID

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.models import User


class UserRepository:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get_by_id(self, user_id: UUID) -> User | None:
        return await self.session.get(User, user_id)

    async def get_by_email(self, email: str) -> User | None:
        result = await self.session.execute(select(User).where(User.email == email))
        return result.scalar_one_or_none()

    async def set_password_hash(self, user_id: UUID, password_hash: str) -> None:
        await self.session.execute(
            update(User).where(User.id == user_id).values(password_hash=password_hash)
        )

    async def insert_if_absent(self, email: str, password_hash: str) -> User | None:
        """Insert a user; ``None`` when the email is taken.

        ON CONFLICT lets the unique constraint decide, so two concurrent registrations of
        one email cannot both pass a read-then-write check, and the transaction stays usable.
        """
        statement = (
            insert(User)
            .values(email=email, password_hash=password_hash)
            .on_conflict_do_nothing(index_elements=[User.email])
            .returning(User)
        )
        result = await self.session.execute(statement)
        return result.scalar_one_or_none()
