"""Settings: one environment variable per setting, validated once at start-up.

Every field below is read from the variable of the same name in upper case (``DATABASE_URL``,
``SECRET_KEY``, ...). The same names drive the local stack, compose and Kubernetes, and
``.env.example`` lists them all (a test keeps the two in step). Outside development and test,
secrets that still hold a placeholder are refused, so a forgotten variable fails the deploy
instead of signing tokens with a published key.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


DEV_SECRET = "dev-only-secret-change-me-before-any-deploy"  # noqa: S105  # refused in production
PLACEHOLDER_SECRETS = frozenset({"", "change-me", "changeme", "secret", DEV_SECRET})
MIN_SECRET_LENGTH = 32


class DatabaseSettings(BaseSettings):
    """The part of the settings that migrations need: they run before anything else exists."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", frozen=True)

    database_url: str = Field(
        description="SQLAlchemy URL, e.g. postgresql+asyncpg://user:pass@host:5432/db",
    )
    db_pool_size: int = Field(default=10, ge=1)
    db_max_overflow: int = Field(default=5, ge=0)
    # Seconds a request waits for a pooled connection before failing fast with 503.
    db_pool_timeout: float = Field(default=5.0, gt=0)
    # A runaway query is cancelled by Postgres itself, not left holding a connection.
    db_statement_timeout_ms: int = Field(default=15_000, ge=0)

    @field_validator("database_url")
    @classmethod
    def _async_driver(cls, value: str) -> str:
        # Plain postgres:// URLs (as most hosts hand them out) get the async driver.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+asyncpg://" + value.removeprefix(prefix)
        if not value.startswith("postgresql+asyncpg://"):
            raise ValueError("DATABASE_URL must be a postgresql:// URL")
        return value


class Settings(DatabaseSettings):
    environment: Environment = Environment.development
    log_level: str = "INFO"
    # JSON lines everywhere but an interactive development terminal.
    log_json: bool = True

    redis_url: str = Field(description="redis://host:6379/0")
    redis_socket_timeout: float = Field(default=0.5, gt=0)

    # Each dependency check in /readyz gets this long before it counts as down.
    readiness_timeout: float = Field(default=1.0, gt=0)

    # Graceful shutdown behind a load balancer (patterns/graceful.py). After SIGTERM readiness
    # fails at once and the instance keeps serving for DRAIN_SECONDS, longer than the gateway's
    # health-check interval plus timeout (2 s in deploy/traefik), so the load balancer takes
    # it out of rotation before it stops listening.
    drain_seconds: float = Field(default=5.0, ge=0)
    # Then the server stops accepting and gives in-flight requests this long to finish.
    graceful_timeout: float = Field(default=10.0, gt=0)
    # Peers allowed to set X-Forwarded-For / X-Forwarded-Proto: the gateway only (comma-separated
    # IPs or CIDRs). Anyone else's forwarded headers are ignored, so the client address and
    # scheme the app sees cannot be spoofed.
    forwarded_allow_ips: str = "127.0.0.1"
    # Longer than the gateway's idle timeout for upstream connections (30 s in deploy/traefik):
    # the gateway closes an idle keep-alive connection, never the app while the gateway reuses it.
    keep_alive_timeout: int = Field(default=65, ge=1)

    secret_key: SecretStr = SecretStr(DEV_SECRET)
    access_token_ttl_seconds: int = Field(default=3600, ge=60)
    jwt_issuer: str = "{{ cookiecutter.project_slug }}"

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("REDIS_URL must be a redis://, rediss:// or unix:// URL")
        return value

    @model_validator(mode="after")
    def _secrets_are_real_outside_development(self) -> Self:
        if self.environment in (Environment.development, Environment.test):
            return self
        secret = self.secret_key.get_secret_value()
        if secret in PLACEHOLDER_SECRETS or len(secret) < MIN_SECRET_LENGTH:
            raise ValueError(
                f"SECRET_KEY must be a random value of at least {MIN_SECRET_LENGTH} characters "
                f"when ENVIRONMENT={self.environment.value}; generate one with "
                "`python -c 'import secrets; print(secrets.token_urlsafe(48))'`"
            )
        return self

    @property
    def is_development(self) -> bool:
        return self.environment is Environment.development
