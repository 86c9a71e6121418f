"""Settings: one environment variable per setting, validated once at start-up.

Every field below is read from the variable of the same name in upper case (``DATABASE_URL``,
``SECRET_KEY``, ...). The same names drive the local stack, compose and Kubernetes, and
``.env.example`` lists them all (a test keeps the two in step). Outside development and test,
secrets that still hold a placeholder are refused, so a forgotten variable fails the deploy
instead of signing tokens with a published key.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal, Self

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Environment(StrEnum):
    development = "development"
    test = "test"
    production = "production"


# The broker chosen when the project was generated; CELERY_BROKER_URL overrides it, and an
# empty value means "the Redis at REDIS_URL".
DEFAULT_BROKER_URL = "{% if cookiecutter.broker == 'rabbitmq' %}amqp://guest:guest@127.0.0.1:5672//{% endif %}"

DEV_SECRET = "dev-only-secret-change-me-before-any-deploy"  # noqa: S105  # refused in production
PLACEHOLDER_SECRETS = frozenset({"", "change-me", "changeme", "secret", DEV_SECRET})
MIN_SECRET_LENGTH = 32
DEV_WEBHOOK_SECRET = "dev-only-webhook-secret"  # noqa: S105  # refused in production
PLACEHOLDER_WEBHOOK_SECRETS = frozenset({"", "change-me", "changeme", "secret", DEV_WEBHOOK_SECRET})


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
    # A pooled connection older than this is replaced at checkout (no per-checkout ping):
    # below any idle timeout of the server or of a proxy in between (PgBouncer, a cloud LB).
    db_pool_recycle_seconds: int = Field(default=1800, ge=1)

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
    # Traces (patterns/tracing.py, docs/observability.md): OTLP over HTTP to this endpoint
    # (a collector, Tempo, Jaeger: http://host:4318); empty = no tracing at all.
    otel_exporter_otlp_endpoint: str = ""
    # Each process reports as "<this>-<role>": -api, -worker, -beat, -relay, -consumers.
    otel_service_name: str = "{{ cookiecutter.project_slug }}"

    redis_url: str = Field(description="redis://host:6379/0")
    redis_socket_timeout: float = Field(default=0.5, gt=0)

    # Application cache (patterns/cache.py). Empty CACHE_REDIS_URL: the cache uses REDIS_URL.
    # A separate Redis in production lets the cache evict (allkeys-lru) while the broker's
    # Redis never does (noeviction).
    cache_redis_url: str = ""
    # The kill switch: false serves every read from the database (and the benchmark's baseline).
    cache_enabled: bool = True
    # Bump the version to drop every cached value at once (a change of meaning, not of shape:
    # shape changes get new keys by themselves).
    cache_key_prefix: str = "{{ cookiecutter.project_slug }}:v1"
    # Per Redis call, waiting for a pooled connection included; past it the request is served
    # from the database and the breaker counts a failure. An asyncio timeout also measures
    # event-loop lag, so keep it above the p99 lag of a busy instance.
    cache_timeout: float = Field(default=0.25, gt=0)
    # Connections per process to the cache Redis; a burst queues for one. Few is faster than
    # many: Redis answers in microseconds, and every new connection costs a handshake.
    cache_max_connections: int = Field(default=20, ge=1)
    # How long a loader may hold a key's lease; waiters on other instances poll for its value
    # for at most CACHE_WAIT_TIMEOUT, then load themselves.
    cache_lease_ttl: float = Field(default=5.0, gt=0)
    cache_wait_timeout: float = Field(default=2.0, gt=0)
    # TTLs are shortened by up to this fraction, at random, so keys filled together do not
    # all expire together.
    cache_ttl_jitter: float = Field(default=0.1, ge=0, lt=1)
    # Consecutive Redis failures that open the circuit, and how long it stays open.
    cache_breaker_failures: int = Field(default=5, ge=1)
    cache_breaker_reset_seconds: float = Field(default=5.0, gt=0)

    # CDN purges (patterns/cdn_purge.py): comma-separated edge URLs that accept PURGE
    # (Varnish nodes). Empty: no edge to purge.
    cdn_purge_urls: str = ""
    cdn_purge_timeout: float = Field(default=2.0, gt=0)

    # Each dependency check in /readyz gets this long before it counts as down.
    readiness_timeout: float = Field(default=1.0, gt=0)

    # Graceful shutdown behind a load balancer (patterns/graceful.py). After SIGTERM readiness
    # fails at once and the instance keeps serving for DRAIN_SECONDS, longer than the gateway's
    # health-check interval plus timeout (4 s in deploy/traefik), so the load balancer takes
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
    # Rotation: the old SECRET_KEY, still accepted (never used to sign) until its tokens expire.
    secret_key_previous: SecretStr = SecretStr("")
    access_token_ttl_seconds: int = Field(default=3600, ge=60)
    jwt_issuer: str = "{{ cookiecutter.project_slug }}"
    # The `aud` every token is issued for and checked against: a token minted for another
    # service sharing the key is refused here.
    jwt_audience: str = "{{ cookiecutter.project_slug }}-api"
    # The caller without a database lookup per request (auth/user_cache.py): a user changed
    # through this process is forgotten at its commit; one deactivated elsewhere (another
    # instance, a worker, SQL) is locked out within this many seconds. 0: a lookup per request.
    user_cache_ttl_seconds: float = Field(default=10.0, ge=0)
    user_cache_max_entries: int = Field(default=10_000, ge=1)

    # --- Background jobs (Celery) and the scheduler (beat + RedBeat); see docs/queue.md ---
    celery_broker_url: str = DEFAULT_BROKER_URL
    # One queue per deployment; several apps (or test runs) on one broker use different names.
    celery_queue: str = "{{ cookiecutter.project_slug }}"
    # Redis broker only: a prefix for every key Kombu writes, to share one Redis safely.
    celery_broker_key_prefix: str = ""
    # Inside the task: past this the job is cancelled and dead-lettered (seconds).
    job_soft_time_limit: float = Field(default=300.0, gt=0)
    # The worker kills a child still busy this long after the soft limit (blocking code).
    job_hard_time_limit: float = Field(default=360.0, gt=0)
    # Redis broker: an unacknowledged message returns to the queue after this long, which is
    # how a job survives a worker that died. Must exceed the longest task and retry delay.
    celery_visibility_timeout: int = Field(default=3600, ge=2)
    # Transient errors only (connection drops, timeouts): retries, then the dead-letter table.
    job_max_retries: int = Field(default=5, ge=0)
    job_retry_backoff_seconds: float = Field(default=2.0, gt=0)
    job_retry_backoff_max_seconds: float = Field(default=300.0, gt=0)
    # Prefork processes per worker (each runs one job at a time); `--concurrency` overrides.
    worker_concurrency: int = Field(default=2, ge=1)
    # Prometheus endpoint of each worker process tree; 0 turns it off.
    worker_metrics_port: int = Field(default=9101, ge=0, le=65535)
    # 0.0.0.0 in a container, so Prometheus can reach it; loopback on a laptop.
    worker_metrics_host: str = "127.0.0.1"
    # Prometheus endpoints of beat, the relay and the consumers (0 = off), on the same host:
    # process CPU and memory, and what each one counts (docs/observability.md).
    beat_metrics_port: int = Field(default=0, ge=0, le=65535)
    relay_metrics_port: int = Field(default=0, ge=0, le=65535)
    consumers_metrics_port: int = Field(default=0, ge=0, le=65535)
    # How the app tells people things: "outbox" rows (default) or log lines.
    notifier: Literal["outbox", "log"] = "outbox"

    # Beat: RedBeat keeps the schedule and a lock in Redis, so a second beat only stands by.
    beat_key_prefix: str = "{{ cookiecutter.project_slug }}:beat"
    # A standby beat takes over this long after the active one stopped renewing its lock.
    beat_lock_timeout: int = Field(default=30, ge=2)
    beat_max_interval: float = Field(default=5.0, gt=0)
    # Every schedule in seconds between runs; 0 switches it off.
    schedule_expire_unpaid_orders_seconds: float = Field(default=60.0, ge=0)
    schedule_revenue_rollup_seconds: float = Field(default=900.0, ge=0)
    schedule_cleanup_seconds: float = Field(default=3600.0, ge=0)
    # Unpaid orders older than this are expired and their stock released.
    order_payment_timeout_minutes: float = Field(default=30.0, gt=0)
    expire_unpaid_batch_size: int = Field(default=500, ge=1)
    # Finished jobs, delivered notifications and used idempotency keys older than this go.
    stale_data_retention_days: float = Field(default=30.0, gt=0)
    # A job row still "queued" this long after it was requested lost its message (the API
    # died between commit and publish): the cleanup job sends it again.
    job_requeue_after_minutes: float = Field(default=15.0, gt=0)
    # Days the revenue roll-up recomputes on each run (today, yesterday, ...).
    revenue_rollup_lookback_days: int = Field(default=2, ge=1)
    # A sales report reads this many days per transaction (progress and the job's lease are
    # renewed after each read), pausing between reads: spreads a big report on the primary.
    report_days_per_read: int = Field(default=31, ge=1)
    report_read_pause_seconds: float = Field(default=0.0, ge=0)

    # --- payments and job leases (issue 12) ---
    # "local": a signer inside the app that POSTs real signed webhooks (dev and tests). A real
    # provider implements payments.provider.PaymentProvider.
    payments_provider: Literal["local"] = "local"
    # The HMAC key webhooks are signed with (the provider's "signing secret").
    payments_webhook_secret: SecretStr = SecretStr(DEV_WEBHOOK_SECRET)
    # A webhook whose signed timestamp is further than this from now is refused (replay).
    payments_webhook_tolerance_seconds: int = Field(default=300, ge=1)
    # Where the local signer POSTs; empty: into this app in-process (same routes, same checks).
    payments_webhook_url: str = ""
    # A running job's lease: renewed every third of this while it runs; a copy that finds it
    # held backs off, and a lease this old (its worker died) is taken over.
    job_lease_seconds: float = Field(default=60.0, gt=0)
    # --- pub-sub: outbox, relay, stream consumers (issue 10) ---
    # Stream names are this prefix + the aggregate type (events:order, events:product).
    events_stream_prefix: str = "events:"
    # XADD MAXLEN ~: how many entries each stream keeps (the Last-Event-ID resume window).
    events_stream_maxlen: int = Field(default=100_000, ge=100)
    outbox_poll_interval: float = Field(default=0.1, gt=0)
    outbox_batch_size: int = Field(default=500, ge=1)
    # Published outbox rows older than this are purged by the scheduled cleanup.
    outbox_retention_hours: float = Field(default=24.0, gt=0)
    # A consumer's pending message idle this long is claimed by another (XAUTOCLAIM).
    consumer_claim_idle_ms: int = Field(default=10_000, ge=100)
    # Deliveries before an event goes to the dead letters.
    consumer_max_deliveries: int = Field(default=5, ge=1)
    # SSE: events queued per client before it is dropped as too slow; heartbeat comment period;
    # a write to a client blocked this long drops it too.
    sse_queue_size: int = Field(default=256, ge=1)
    sse_heartbeat_seconds: int = Field(default=15, ge=1)
    sse_send_timeout_seconds: float = Field(default=30.0, gt=0)
    # --- object storage (issue 9) --- patterns/storage.py, docs/object-storage.md
    # Any S3 API: SeaweedFS locally, AWS S3 / R2 / MinIO in production, no code change.
    # Empty endpoint: AWS's own endpoint for S3_REGION.
    s3_endpoint_url: str = ""
    s3_bucket: str = "{{ cookiecutter.project_slug | replace('_', '-') }}"
    s3_region: str = "us-east-1"
    s3_access_key_id: str = ""
    s3_secret_access_key: SecretStr = SecretStr("")
    # Path-style (http://host/bucket/key): SeaweedFS and MinIO need it; AWS accepts both.
    s3_force_path_style: bool = True
    # Blocking S3 calls (HEAD, complete, delete, put) run in threads, at most this many at once
    # per process, so a slow S3 queues calls instead of taking every thread.
    s3_max_concurrency: int = Field(default=16, ge=1)
    # Product images: the renditions the thumbnail job makes (longer side in pixels; JSON,
    # THUMBNAIL_SIZES='[256,1024]'), and the largest source it decodes (a decompression bomb
    # is refused from its header).
    thumbnail_sizes: list[Annotated[int, Field(ge=16, le=4096)]] = Field(
        default=[256, 1024], min_length=1, max_length=8
    )
    image_max_pixels: int = Field(default=40_000_000, ge=1)
    # Presigned upload URLs expire after this many seconds.
    upload_url_ttl: int = Field(default=600, ge=1, le=604_800)
    # Presigned downloads of private files (reports, user uploads): short.
    download_url_ttl: int = Field(default=300, ge=1, le=604_800)
    # Above this declared size a purpose that allows it gets a multipart upload.
    multipart_threshold: int = Field(default=64 * 1024 * 1024, ge=5 * 1024 * 1024)
    multipart_part_size: int = Field(default=16 * 1024 * 1024, ge=5 * 1024 * 1024)
    # Pending uploads older than this are abandoned: the sweeper deletes row and object.
    upload_abandon_after_minutes: float = Field(default=60.0, gt=0)
    schedule_upload_sweep_seconds: float = Field(default=600.0, ge=0)
    upload_sweep_batch_size: int = Field(default=500, ge=1)
    # Browser origins allowed to upload straight to the bucket (CORS, set by storage-init).
    s3_cors_origins: str = "*"
    # Lifecycle rule storage-init sets: S3 aborts multipart uploads left open this many days.
    s3_abort_incomplete_after_days: int = Field(default=1, ge=1)
    # --- API gateway hardening: the inner ring of rate limits (issue 11) ---
    # patterns/rate_limit.py, docs/api-gateway.md. Every quota of the app is here, as a
    # `limits` string ("20/minute", "5/second", "100/hour"), counted in one moving window per
    # key that every instance shares through Redis. The client address behind the proxies is
    # the one FORWARDED_ALLOW_IPS lets the server believe; nothing else is trusted.
    rate_limit_enabled: bool = True
    # Empty: the Redis at REDIS_URL.
    rate_limit_redis_url: str = ""
    rate_limit_key_prefix: str = "{{ cookiecutter.project_slug }}:ratelimit"
    # Per check; past it (or with Redis down) the policy's fallback decides: authenticated
    # routes fail open, login and register fall back to a per-instance count.
    rate_limit_timeout: float = Field(default=0.25, gt=0)
    # Every authenticated request, per user.
    rate_limit_user: str = "600/minute"
    # Login and register, per client address and per account (the email): one address trying
    # many accounts, and many addresses trying one account, are both stopped.
    rate_limit_login_ip: str = "20/minute"
    rate_limit_login_account: str = "10/minute"
    rate_limit_register_ip: str = "10/minute"
    rate_limit_register_account: str = "5/minute"
    # Writes that cost the most, per user.
    rate_limit_orders: str = "30/minute"
    rate_limit_uploads: str = "30/minute"
    # --- fail-closed defaults (issue 11) ---
    # /openapi.json and /docs: on outside production; in production only if this is true.
    openapi_public: bool = False
    # Browser origins allowed to call the API (CORS), comma-separated, e.g.
    # "https://shop.example.com". Empty: no cross-origin browser access at all. "*" is refused
    # outside development and test.
    cors_allow_origins: str = ""
    # --- fault injection (ENVIRONMENT=test only; faults/injection.py) ---
    # The bad canary of the canary proofs: this fraction of requests fails with a 500, and
    # every request waits this long first. Refused in any other environment.
    fault_error_rate: float = Field(default=0.0, ge=0, le=1)
    fault_delay_seconds: float = Field(default=0.0, ge=0, le=10)

    @field_validator(
        "rate_limit_user",
        "rate_limit_login_ip",
        "rate_limit_login_account",
        "rate_limit_register_ip",
        "rate_limit_register_account",
        "rate_limit_orders",
        "rate_limit_uploads",
    )
    @classmethod
    def _rate_limit_syntax(cls, value: str, info: ValidationInfo) -> str:
        from limits import parse

        try:
            parse(value)
        except ValueError:
            name = (info.field_name or "rate_limit").upper()
            raise ValueError(
                f"{name} must be a rate such as '20/minute' or '5 per second', not {value!r}"
            ) from None
        return value

    @property
    def s3_cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.s3_cors_origins.split(",") if origin.strip()]

    @field_validator("redis_url", "cache_redis_url", "rate_limit_redis_url")
    @classmethod
    def _redis_scheme(cls, value: str, info: ValidationInfo) -> str:
        if info.field_name in ("cache_redis_url", "rate_limit_redis_url") and not value:
            return value
        if not value.startswith(("redis://", "rediss://", "unix://")):
            name = (info.field_name or "redis_url").upper()
            raise ValueError(f"{name} must be a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("celery_broker_url")
    @classmethod
    def _broker_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "amqp://", "amqps://")):
            raise ValueError("CELERY_BROKER_URL must be a redis://, rediss:// or amqp(s):// URL")
        return value

    @model_validator(mode="after")
    def _time_limits_fit_the_redelivery_window(self) -> Self:
        if self.job_hard_time_limit <= self.job_soft_time_limit:
            raise ValueError("JOB_HARD_TIME_LIMIT must be greater than JOB_SOFT_TIME_LIMIT")
        # A message still running (or waiting for its retry) when the visibility timeout
        # passes is handed to a second worker: the job would run twice at once.
        longest = max(self.job_hard_time_limit, self.job_retry_backoff_max_seconds)
        if self.celery_visibility_timeout <= longest:
            raise ValueError(
                "CELERY_VISIBILITY_TIMEOUT must exceed JOB_HARD_TIME_LIMIT and "
                "JOB_RETRY_BACKOFF_MAX_SECONDS, or running jobs are delivered twice"
            )
        return self

    @model_validator(mode="after")
    def _faults_only_in_test(self) -> Self:
        if self.environment is not Environment.test and (
            self.fault_error_rate or self.fault_delay_seconds
        ):
            raise ValueError(
                "FAULT_ERROR_RATE and FAULT_DELAY_SECONDS inject failures on purpose and are "
                f"refused when ENVIRONMENT={self.environment.value}; set them to 0"
            )
        return self

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
        previous = self.secret_key_previous.get_secret_value()
        if previous and (previous in PLACEHOLDER_SECRETS or len(previous) < MIN_SECRET_LENGTH):
            raise ValueError(
                f"SECRET_KEY_PREVIOUS must be empty or a real key of at least "
                f"{MIN_SECRET_LENGTH} characters when ENVIRONMENT={self.environment.value}"
            )
        if "*" in self.cors_origin_list:
            raise ValueError(
                f"CORS_ALLOW_ORIGINS may not be '*' when ENVIRONMENT={self.environment.value}; "
                "list the browser origins that may call the API"
            )
        if "guest:guest@" in self.broker_url:
            raise ValueError(
                f"CELERY_BROKER_URL uses RabbitMQ's default guest account when "
                f"ENVIRONMENT={self.environment.value}; create a user of its own for the service"
            )
        if self.payments_webhook_secret.get_secret_value() in PLACEHOLDER_WEBHOOK_SECRETS:
            raise ValueError(
                "PAYMENTS_WEBHOOK_SECRET still holds the published development value when "
                f"ENVIRONMENT={self.environment.value}; set the provider's signing secret"
            )
        return self

    def tracing_for(self, role: str) -> tuple[str, str]:
        """The OTLP endpoint and the service name a process of ``role`` reports traces under."""
        return self.otel_exporter_otlp_endpoint, f"{self.otel_service_name}-{role}"

    @property
    def broker_url(self) -> str:
        return self.celery_broker_url or self.redis_url

    @property
    def broker_is_redis(self) -> bool:
        return self.broker_url.startswith(("redis://", "rediss://", "unix://"))

    @property
    def is_development(self) -> bool:
        return self.environment is Environment.development

    @property
    def rate_limit_redis(self) -> str:
        return self.rate_limit_redis_url or self.redis_url

    @property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_allow_origins.split(",") if origin.strip()]

    @property
    def openapi_enabled(self) -> bool:
        return self.environment is not Environment.production or self.openapi_public

    @property
    def cache_redis(self) -> str:
        return self.cache_redis_url or self.redis_url

    @property
    def cdn_purge_endpoints(self) -> list[str]:
        return [url.strip() for url in self.cdn_purge_urls.split(",") if url.strip()]
