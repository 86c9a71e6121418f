from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import uuid4

import jwt
import pytest
from httpx import AsyncClient, Response
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from {{ cookiecutter.project_slug }}.auth.security import key_id
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.models import Notification, User

PASSWORD = "correct horse battery"


async def register(client: AsyncClient, email: str = "ada@example.com") -> dict[str, object]:
    """Register, then the account as /users/me shows it (the 202 does not say: see below)."""
    response = await client.post("/auth/register", json={"email": email, "password": PASSWORD})
    assert response.status_code == 202, response.text
    me = await client.get("/users/me", headers=bearer(await login(client, email.lower())))
    body: dict[str, object] = me.json()
    return body


async def login(client: AsyncClient, email: str = "ada@example.com") -> str:
    response = await client.post("/auth/login", json={"email": email, "password": PASSWORD})
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_register_login_and_me(app_client: AsyncClient, session: AsyncSession) -> None:
    accepted = await app_client.post(
        "/auth/register", json={"email": "Ada@Example.com", "password": PASSWORD}
    )
    assert accepted.json()["email"] == "ada@example.com"  # normalised
    assert "password" not in accepted.text
    token = await login(app_client, "ada@example.com")
    response = await app_client.get("/users/me", headers=bearer(token))
    assert response.status_code == 200
    assert response.json()["email"] == "ada@example.com"
    [welcome] = (await session.execute(select(Notification.subject))).scalars().all()
    assert welcome == "Welcome"


async def test_password_is_stored_as_an_argon2_hash(
    app_client: AsyncClient, session: AsyncSession
) -> None:
    await register(app_client)
    user = (await session.execute(User.__table__.select())).one()
    assert user.password_hash.startswith("$argon2id$")
    assert PASSWORD not in user.password_hash


async def test_registering_a_taken_email_looks_the_same_and_tells_its_owner(
    app_client: AsyncClient, session: AsyncSession
) -> None:
    """No account enumeration: a taken email gets the new one's status, headers and body;
    the owner gets an email, the password and the account are unchanged."""
    first = await app_client.post(
        "/auth/register", json={"email": "ada@example.com", "password": PASSWORD}
    )
    again = await app_client.post(
        "/auth/register", json={"email": "ADA@example.com", "password": "another password!!"}
    )
    fresh = await app_client.post(
        "/auth/register", json={"email": "bob@example.com", "password": PASSWORD}
    )
    assert first.status_code == again.status_code == fresh.status_code == 202
    assert again.content == first.content
    assert fresh.json() == {**again.json(), "email": "bob@example.com"}
    ignored = {"date", "x-request-id", "content-length", "ratelimit", "ratelimit-policy"}

    def shape(response: Response) -> set[str]:
        return {name for name in response.headers if name not in ignored}

    assert shape(again) == shape(fresh)
    users = (await session.execute(select(User.email))).scalars().all()
    assert sorted(users) == ["ada@example.com", "bob@example.com"]
    await login(app_client, "ada@example.com")  # the first password still works
    sent = (
        await session.execute(
            select(Notification.recipient, Notification.subject).order_by(
                Notification.created_at, Notification.id
            )
        )
    ).all()
    assert [recipient for recipient, _ in sent] == [
        "ada@example.com",
        "ada@example.com",
        "bob@example.com",
    ]
    assert sent[1].subject == "Someone tried to create an account with your email"


async def test_short_passwords_are_rejected(app_client: AsyncClient) -> None:
    response = await app_client.post(
        "/auth/register", json={"email": "bob@example.com", "password": "short"}
    )
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "body.password"


@pytest.mark.parametrize(
    ("email", "password"),
    [("ada@example.com", "wrong password!!"), ("nobody@example.com", PASSWORD)],
)
async def test_bad_credentials_get_the_same_401(
    app_client: AsyncClient, email: str, password: str
) -> None:
    await register(app_client)
    response = await app_client.post("/auth/login", json={"email": email, "password": password})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    # Same message either way: the API does not tell which emails exist.
    assert response.json()["detail"] == "Incorrect email or password."


async def test_me_without_a_token_is_401(app_client: AsyncClient) -> None:
    response = await app_client.get("/users/me")
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


def forge(settings: Settings, key: str, **overrides: object) -> str:
    now = datetime.now(UTC)
    claims: dict[str, object] = {
        "sub": str(uuid4()),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "typ": "access",
        "iat": now,
        "exp": now + timedelta(minutes=5),
        **overrides,
    }
    # The kid of the server's own key: only the signature can tell the forgery apart.
    kid = key_id(settings.secret_key.get_secret_value())
    return jwt.encode(claims, key, algorithm="HS256", headers={"kid": kid})


async def test_expired_tokens_are_rejected(app_client: AsyncClient, settings: Settings) -> None:
    user = await register(app_client)
    past = datetime.now(UTC) - timedelta(hours=2)
    token = forge(
        settings,
        settings.secret_key.get_secret_value(),
        sub=user["id"],
        iat=past,
        exp=past + timedelta(hours=1),
    )
    response = await app_client.get("/users/me", headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["detail"] == "The access token has expired; log in again."


async def test_tokens_signed_with_another_key_are_rejected(
    app_client: AsyncClient, settings: Settings
) -> None:
    user = await register(app_client)
    token = forge(settings, "an attacker's key that is long enough!!", sub=user["id"])
    response = await app_client.get("/users/me", headers=bearer(token))
    assert response.status_code == 401
    assert response.json()["detail"] == "The access token is invalid."


async def test_unsigned_alg_none_tokens_are_rejected(app_client: AsyncClient) -> None:
    user = await register(app_client)
    token = jwt.encode({"sub": user["id"]}, key="", algorithm="none")
    response = await app_client.get("/users/me", headers=bearer(token))
    assert response.status_code == 401


async def test_a_hash_made_with_older_argon2_parameters_is_upgraded_at_login(
    app_client: AsyncClient, session: AsyncSession
) -> None:
    from pwdlib import PasswordHash
    from pwdlib.hashers.argon2 import Argon2Hasher

    from {{ cookiecutter.project_slug }}.auth.security import _hasher

    await register(app_client, "old@example.com")
    weaker = PasswordHash((Argon2Hasher(time_cost=1, memory_cost=8192),)).hash(PASSWORD)
    await session.execute(
        update(User).where(User.email == "old@example.com").values(password_hash=weaker)
    )
    await login(app_client, "old@example.com")
    stored = (
        await session.execute(User.__table__.select().where(User.email == "old@example.com"))
    ).one()
    assert stored.password_hash != weaker
    assert not _hasher().current_hasher.check_needs_rehash(stored.password_hash)
    await login(app_client, "old@example.com")  # and the new hash verifies


@pytest.mark.parametrize("stored", ["!", "", "$argon2id$v=19$corrupt", "plain text"])
async def test_an_account_without_a_usable_hash_fails_login_like_a_wrong_password(
    app_client: AsyncClient, session: AsyncSession, stored: str
) -> None:
    await register(app_client, "nohash@example.com")
    await session.execute(
        update(User).where(User.email == "nohash@example.com").values(password_hash=stored)
    )

    response = await app_client.post(
        "/auth/login", json={"email": "nohash@example.com", "password": PASSWORD}
    )

    assert response.status_code == 401, response.text
    assert response.json()["detail"] == "Incorrect email or password."
