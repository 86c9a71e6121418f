"""Password hashing (Argon2id) and access tokens (JWT, HS256).

Tokens are self-contained, so any API instance can verify any token without shared session
state: this is what makes the API horizontally scalable behind a load balancer.
"""

from __future__ import annotations

import functools
from datetime import UTC, datetime, timedelta
from uuid import UUID

import jwt
from anyio import to_thread
from pwdlib import PasswordHash
from pwdlib.hashers.argon2 import Argon2Hasher

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.exceptions import NotAuthenticated

ALGORITHM = "HS256"
TOKEN_TYPE = "access"  # noqa: S105  # a claim value, not a secret


@functools.cache
def _hasher() -> PasswordHash:
    return PasswordHash((Argon2Hasher(),))


@functools.cache
def _dummy_hash() -> str:
    return _hasher().hash("a password nobody has")


# Argon2 is deliberately slow (tens of ms of CPU); run it in a worker thread so one login
# does not stall every other request on this event loop.
async def hash_password(password: str) -> str:
    return await to_thread.run_sync(_hasher().hash, password)


async def verify_password(password: str, password_hash: str | None) -> bool:
    # With no user, still spend the same time on a dummy hash: the response time must not
    # reveal which emails are registered.
    target = password_hash if password_hash is not None else _dummy_hash()
    matches = await to_thread.run_sync(_hasher().verify, password, target)
    return matches and password_hash is not None


def create_access_token(user_id: UUID, settings: Settings) -> tuple[str, int]:
    now = datetime.now(UTC)
    ttl = settings.access_token_ttl_seconds
    claims = {
        "sub": str(user_id),
        "iss": settings.jwt_issuer,
        "typ": TOKEN_TYPE,
        "iat": now,
        "exp": now + timedelta(seconds=ttl),
    }
    token = jwt.encode(claims, settings.secret_key.get_secret_value(), algorithm=ALGORITHM)
    return token, ttl


def decode_access_token(token: str, settings: Settings) -> UUID:
    try:
        claims = jwt.decode(
            token,
            settings.secret_key.get_secret_value(),
            # Pin the algorithm: never let the token pick it ("alg": "none" attacks).
            algorithms=[ALGORITHM],
            issuer=settings.jwt_issuer,
            options={"require": ["exp", "iat", "sub", "iss"]},
        )
    except jwt.ExpiredSignatureError as exc:
        raise NotAuthenticated("The access token has expired; log in again.") from exc
    except jwt.InvalidTokenError as exc:
        raise NotAuthenticated("The access token is invalid.") from exc
    if claims.get("typ") != TOKEN_TYPE:
        raise NotAuthenticated("The token is not an access token.")
    try:
        return UUID(claims["sub"])
    except ValueError as exc:
        raise NotAuthenticated("The access token is invalid.") from exc
