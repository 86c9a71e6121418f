from __future__ import annotations

from uuid import uuid4

import pytest

from {{ cookiecutter.project_slug }}.auth.security import (
    create_access_token,
    decode_access_token,
    hash_password,
    verify_password,
)
from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.exceptions import NotAuthenticated

SETTINGS = Settings(
    _env_file=None,
    database_url="postgresql://u@h/db",
    redis_url="redis://h:6379/0",
    secret_key="unit-test-secret-that-is-long-enough-123",
)


async def test_passwords_verify_only_against_their_own_hash() -> None:
    hashed = await hash_password("correct horse battery")
    assert await verify_password("correct horse battery", hashed)
    assert not await verify_password("Correct horse battery", hashed)


async def test_verifying_without_a_user_is_always_false() -> None:
    assert not await verify_password("anything at all", None)


def test_access_tokens_round_trip_to_the_user_id() -> None:
    user_id = uuid4()
    token, expires_in = create_access_token(user_id, SETTINGS)
    assert expires_in == SETTINGS.access_token_ttl_seconds
    assert decode_access_token(token, SETTINGS) == user_id


def test_tokens_from_another_issuer_are_rejected() -> None:
    other = SETTINGS.model_copy(update={"jwt_issuer": "someone-else"})
    token, _ = create_access_token(uuid4(), other)
    with pytest.raises(NotAuthenticated):
        decode_access_token(token, SETTINGS)
