"""Password hashing (Argon2id) and access tokens (JWT, HS256).

Tokens are self-contained, so any API instance can verify any token without shared session
state: this is what makes the API horizontally scalable behind a load balancer.

Each token names its signing key in the ``kid`` header (a fingerprint, never the key) and is
issued for one audience (``aud``, JWT_AUDIENCE). Rotation: set SECRET_KEY to the new key and
SECRET_KEY_PREVIOUS to the old one; tokens signed with either verify until the old ones
expire (ACCESS_TOKEN_TTL_SECONDS), then drop SECRET_KEY_PREVIOUS.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar
from uuid import UUID

import jwt
from anyio import CapacityLimiter, to_thread
from pwdlib import PasswordHash
from pwdlib.exceptions import UnknownHashError
from pwdlib.hashers.argon2 import Argon2Hasher

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.exceptions import NotAuthenticated

T = TypeVar("T")

ALGORITHM = "HS256"
TOKEN_TYPE = "access"  # noqa: S105  # a claim value, not a secret


@functools.cache
def _hasher() -> PasswordHash:
    return PasswordHash((Argon2Hasher(),))


@functools.cache
def _dummy_hash() -> str:
    return _hasher().hash("a password nobody has")


# Argon2 is deliberately slow (tens of ms of CPU); run it in a worker thread so one login
# does not stall every other request on this event loop, and at most one hash per core at a
# time: a burst of logins queues here instead of starving the event loop's own thread of CPU
# (24 hashing threads on 2 cores leave the loop a 13th of a core, and every request waiting
# on it, a pool checkout included, times out).
_limiters: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, CapacityLimiter] = (
    weakref.WeakKeyDictionary()
)


def _hash_limiter() -> CapacityLimiter:
    loop = asyncio.get_running_loop()
    limiter = _limiters.get(loop)
    if limiter is None:
        limiter = _limiters[loop] = CapacityLimiter(os.cpu_count() or 1)
    return limiter


async def _in_thread(function: Callable[..., T], *args: object) -> T:
    return await to_thread.run_sync(function, *args, limiter=_hash_limiter())


async def hash_password(password: str) -> str:
    return await _in_thread(_hasher().hash, password)


async def verify_and_update_password(
    password: str, password_hash: str | None
) -> tuple[bool, str | None]:
    """Verify, and when the hash was made with other Argon2 parameters than today's, return a
    new hash of the same password to store (it can only be made now, with the password)."""
    if password_hash is None:
        await verify_password(password, None)
        return False, None
    valid, updated = await _in_thread(_verify_and_update, password, password_hash)
    return valid, updated if valid else None


def _verify_and_update(password: str, password_hash: str) -> tuple[bool, str | None]:
    try:
        return _hasher().verify_and_update(password, password_hash)
    except UnknownHashError:
        # Not a hash of ours: "!" (as in /etc/shadow: an account with no usable password,
        # e.g. one made by an import or an SSO), or a corrupt value. It matches no password,
        # after the same hashing time as a real check, so it fails like any wrong password.
        _hasher().verify(password, _dummy_hash())
        return False, None


async def verify_password(password: str, password_hash: str | None) -> bool:
    # With no user, still spend the same time on a dummy hash: the response time must not
    # reveal which emails are registered.
    if password_hash is None:
        await _in_thread(_hasher().verify, password, _dummy_hash())
        return False
    matches, _ = await _in_thread(_verify_and_update, password, password_hash)
    return matches


def key_id(secret: str) -> str:
    """The public name of a signing key: a truncated SHA-256 of it (a key of 32+ random
    characters cannot be recovered from it)."""
    return hashlib.sha256(b"ninefold-kid:" + secret.encode()).hexdigest()[:16]


def verification_keys(settings: Settings) -> dict[str, str]:
    """Every key a token may be signed with, by ``kid``: the current one, and the previous one
    during a rotation."""
    keys = [settings.secret_key.get_secret_value()]
    previous = settings.secret_key_previous.get_secret_value()
    if previous:
        keys.append(previous)
    return {key_id(key): key for key in keys}


def create_access_token(user_id: UUID, settings: Settings) -> tuple[str, int]:
    now = datetime.now(UTC)
    ttl = settings.access_token_ttl_seconds
    claims = {
        "sub": str(user_id),
        "iss": settings.jwt_issuer,
        "aud": settings.jwt_audience,
        "typ": TOKEN_TYPE,
        "iat": now,
        "exp": now + timedelta(seconds=ttl),
    }
    key = settings.secret_key.get_secret_value()
    token = jwt.encode(claims, key, algorithm=ALGORITHM, headers={"kid": key_id(key)})
    return token, ttl


def decode_access_token(token: str, settings: Settings) -> UUID:
    try:
        # The header only names the key; the signature check below is what trusts it.
        kid = jwt.get_unverified_header(token).get("kid")
        key = verification_keys(settings).get(kid) if isinstance(kid, str) else None
        if key is None:
            raise jwt.InvalidTokenError("unknown key id")
        claims = jwt.decode(
            token,
            key,
            # Pin the algorithm: never let the token pick it ("alg": "none" attacks).
            algorithms=[ALGORITHM],
            issuer=settings.jwt_issuer,
            audience=settings.jwt_audience,
            options={"require": ["exp", "iat", "sub", "iss", "aud"]},
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
