from __future__ import annotations

from uuid import uuid4

import jwt
import pytest
from pydantic import SecretStr

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


def test_tokens_for_another_audience_are_rejected() -> None:
    other = SETTINGS.model_copy(update={"jwt_audience": "another-service"})
    token, _ = create_access_token(uuid4(), other)
    with pytest.raises(NotAuthenticated):
        decode_access_token(token, SETTINGS)


def test_tokens_without_an_audience_are_rejected() -> None:
    token, _ = create_access_token(uuid4(), SETTINGS)
    claims = jwt.decode(token, options={"verify_signature": False})
    claims.pop("aud")
    header = jwt.get_unverified_header(token)
    unaudienced = jwt.encode(
        claims, SETTINGS.secret_key.get_secret_value(), algorithm="HS256", headers=header
    )
    with pytest.raises(NotAuthenticated):
        decode_access_token(unaudienced, SETTINGS)


def test_during_a_rotation_both_keys_verify_and_then_only_the_new_one() -> None:
    old_key, new_key = (
        "the-old-key-that-is-long-enough-1234567",
        "the-new-key-that-is-long-enough-7654321",
    )
    before = SETTINGS.model_copy(update={"secret_key": SecretStr(old_key)})
    during = SETTINGS.model_copy(
        update={"secret_key": SecretStr(new_key), "secret_key_previous": SecretStr(old_key)}
    )
    after = SETTINGS.model_copy(update={"secret_key": SecretStr(new_key)})
    user_id = uuid4()
    old_token, _ = create_access_token(user_id, before)
    new_token, _ = create_access_token(user_id, during)
    # Each token names its key, and the key is never in the token.
    assert (
        jwt.get_unverified_header(old_token)["kid"] != jwt.get_unverified_header(new_token)["kid"]
    )
    assert old_key not in jwt.get_unverified_header(old_token)["kid"]
    assert decode_access_token(old_token, during) == user_id
    assert decode_access_token(new_token, during) == user_id
    assert decode_access_token(new_token, after) == user_id
    with pytest.raises(NotAuthenticated):
        decode_access_token(old_token, after)


def test_a_token_naming_no_known_key_is_rejected() -> None:
    token, _ = create_access_token(uuid4(), SETTINGS)
    claims = jwt.decode(token, options={"verify_signature": False})
    for header in ({}, {"kid": "0123456789abcdef"}):
        forged = jwt.encode(
            claims, SETTINGS.secret_key.get_secret_value(), algorithm="HS256", headers=header
        )
        with pytest.raises(NotAuthenticated):
            decode_access_token(forged, SETTINGS)
