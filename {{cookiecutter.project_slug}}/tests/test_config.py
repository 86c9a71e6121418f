from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from {{ cookiecutter.project_slug }}.config import DEV_SECRET, Settings

REQUIRED = {
    "database_url": "postgresql://u@h/db",
    "redis_url": "redis://h:6379/0",
    "celery_broker_url": "",  # the Redis above, whichever broker the project was baked with
}


def make(**overrides: object) -> Settings:
    # model_validate reads no environment: each test sees only the values it names.
    return Settings.model_validate({**REQUIRED, **overrides})


def test_placeholder_secret_is_accepted_in_development() -> None:
    assert make(environment="development").secret_key.get_secret_value()


@pytest.mark.parametrize("secret", ["change-me", DEV_SECRET, "too-short-to-be-real"])
def test_production_refuses_placeholder_or_short_secrets(secret: str) -> None:
    with pytest.raises(ValidationError, match="SECRET_KEY must be a random value"):
        make(environment="production", secret_key=secret)


def test_production_accepts_a_real_secret() -> None:
    settings = make(environment="production", secret_key="x" * 48, payments_webhook_secret="y" * 40)
    assert settings.environment == "production"


def test_plain_postgres_urls_get_the_async_driver() -> None:
    assert make(database_url="postgres://u:p@db:5432/shop").database_url == (
        "postgresql+asyncpg://u:p@db:5432/shop"
    )


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("database_url", "mysql://u@h/db", "DATABASE_URL must be a postgresql:// URL"),
        ("redis_url", "http://h:6379", "REDIS_URL must be a redis://"),
        ("db_pool_size", 0, "greater than or equal to 1"),
    ],
)
def test_bad_values_fail_with_a_message_naming_the_setting(
    field: str, value: object, message: str
) -> None:
    with pytest.raises(ValidationError, match=re.escape(message)):
        make(**{field: value})


def test_missing_database_url_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(ValidationError, match="database_url"):
        Settings(_env_file=None, redis_url="redis://h:6379/0")


def test_settings_come_from_environment_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://env-host/db")
    monkeypatch.setenv("REDIS_URL", "redis://env-host:6379/2")
    monkeypatch.setenv("DB_POOL_SIZE", "7")
    settings = Settings(_env_file=None)
    assert settings.database_url == "postgresql+asyncpg://env-host/db"
    assert settings.db_pool_size == 7


def test_env_example_lists_exactly_the_settings() -> None:
    example = Path(__file__).parents[1] / ".env.example"
    names = {
        line.split("=", 1)[0].lstrip("# ").strip()
        for line in example.read_text().splitlines()
        if re.match(r"^#? ?[A-Z][A-Z0-9_]*=", line)
    }
    assert {field.upper() for field in Settings.model_fields} <= names


def test_production_refuses_rabbitmqs_guest_account() -> None:
    with pytest.raises(ValidationError, match="guest account"):
        make(
            environment="production",
            secret_key="x" * 48,
            celery_broker_url="amqp://guest:guest@rabbitmq:5672//",
        )


def test_time_limits_must_fit_inside_the_visibility_timeout() -> None:
    with pytest.raises(ValidationError, match="CELERY_VISIBILITY_TIMEOUT must exceed"):
        make(job_hard_time_limit=600, celery_visibility_timeout=300)
    with pytest.raises(ValidationError, match="JOB_HARD_TIME_LIMIT must be greater"):
        make(job_soft_time_limit=60, job_hard_time_limit=30)


def test_an_empty_broker_url_means_the_redis_at_redis_url() -> None:
    settings = make(celery_broker_url="")
    assert settings.broker_url == "redis://h:6379/0"
    assert settings.broker_is_redis


def test_production_refuses_the_published_webhook_secret() -> None:
    with pytest.raises(ValidationError, match="PAYMENTS_WEBHOOK_SECRET"):
        make(environment="production", secret_key="x" * 48)
    settings = make(environment="production", secret_key="x" * 48, payments_webhook_secret="y" * 40)
    assert settings.environment == "production"


def test_a_rate_that_limits_cannot_read_fails_naming_the_setting() -> None:
    with pytest.raises(ValidationError, match="RATE_LIMIT_LOGIN_IP must be a rate"):
        make(rate_limit_login_ip="twenty a minute")


@pytest.mark.parametrize(
    ("environment", "public", "served"),
    [
        ("development", False, True),
        ("test", False, True),
        ("production", False, False),
        ("production", True, True),
    ],
)
async def test_the_openapi_schema_is_off_in_production_unless_a_setting_says_so(
    environment: str, public: bool, served: bool
) -> None:
    from httpx import ASGITransport, AsyncClient

    from {{ cookiecutter.project_slug }}.app import create_app

    extra = {"secret_key": "x" * 48, "payments_webhook_secret": "y" * 40}
    app = create_app(make(environment=environment, openapi_public=public, **extra))
    # No lifespan: the routes alone.
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://api") as client:
        codes = {(await client.get(path)).status_code for path in ("/openapi.json", "/docs")}
    assert codes == ({200} if served else {404})


def test_cors_allows_only_the_listed_origins_and_never_a_wildcard_in_production() -> None:
    settings = make(cors_allow_origins="https://shop.example.com, https://admin.example.com")
    assert settings.cors_origin_list == ["https://shop.example.com", "https://admin.example.com"]
    extra = {"secret_key": "x" * 48, "payments_webhook_secret": "y" * 40}
    with pytest.raises(ValidationError, match="CORS_ALLOW_ORIGINS may not be"):
        make(environment="production", cors_allow_origins="*", **extra)


async def test_a_preflight_from_a_listed_origin_is_allowed_and_from_another_is_not() -> None:
    from httpx import ASGITransport, AsyncClient

    from {{ cookiecutter.project_slug }}.app import create_app

    app = create_app(make(cors_allow_origins="https://shop.example.com"))
    preflight = {"Access-Control-Request-Method": "POST"}
    async with AsyncClient(transport=ASGITransport(app=app), base_url="http://api") as client:
        allowed = await client.options(
            "/orders", headers={**preflight, "Origin": "https://shop.example.com"}
        )
        refused = await client.options(
            "/orders", headers={**preflight, "Origin": "https://evil.example.net"}
        )
    assert allowed.headers["access-control-allow-origin"] == "https://shop.example.com"
    assert "access-control-allow-credentials" not in allowed.headers
    assert "access-control-allow-origin" not in refused.headers


def test_fault_injection_is_refused_outside_test() -> None:
    with pytest.raises(ValidationError, match="FAULT_ERROR_RATE and FAULT_DELAY_SECONDS"):
        make(fault_error_rate=0.2)
    with pytest.raises(ValidationError, match="refused when ENVIRONMENT=production"):
        make(environment="production", secret_key="x" * 48, fault_delay_seconds=1)
    assert make(environment="test", fault_error_rate=0.2).fault_error_rate == 0.2
