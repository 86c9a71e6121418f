"""The rate limits of this service: every policy, built from settings in one place.

The pattern (patterns/rate_limit.py) knows nothing of settings or users; this module names the
policies, says which fallback each one gets when Redis is down, and derives the keys:

- ``user``: every authenticated request, keyed by the token's user id. Fails open: a Redis
  blip must not turn every read into an error, and the outer ring (the gateway's per-address
  limit) still holds;
- ``login-ip`` / ``login-account`` and ``register-ip`` / ``register-account``: keyed by the
  client address and by the account (a hash of the normalised email, so no address is stored).
  These guard an Argon2 hash per request and the accounts themselves, so they fall back to a
  per-instance count instead of failing open: login keeps working during a Redis outage, and
  a brute force is still bounded (by the number of instances times the limit);
- ``orders`` / ``uploads``: the costly writes, per user. Fail open, as ``user``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from fastapi import Request
from prometheus_client import CollectorRegistry

from {{ cookiecutter.project_slug }}.config import Settings
from {{ cookiecutter.project_slug }}.patterns.rate_limit import Policy, RateLimiter


@dataclass(frozen=True)
class Policies:
    user: Policy
    login_ip: Policy
    login_account: Policy
    register_ip: Policy
    register_account: Policy
    orders: Policy
    uploads: Policy


def build_policies(settings: Settings) -> Policies:
    return Policies(
        user=Policy("user", settings.rate_limit_user),
        login_ip=Policy("login-ip", settings.rate_limit_login_ip, fallback="local"),
        login_account=Policy("login-account", settings.rate_limit_login_account, fallback="local"),
        register_ip=Policy("register-ip", settings.rate_limit_register_ip, fallback="local"),
        register_account=Policy(
            "register-account", settings.rate_limit_register_account, fallback="local"
        ),
        orders=Policy("orders", settings.rate_limit_orders),
        uploads=Policy("uploads", settings.rate_limit_uploads),
    )


def create_rate_limiter(settings: Settings, registry: CollectorRegistry) -> RateLimiter | None:
    if not settings.rate_limit_enabled:
        return None
    return RateLimiter(
        settings.rate_limit_redis,
        key_prefix=settings.rate_limit_key_prefix,
        timeout=settings.rate_limit_timeout,
        registry=registry,
    )


def policies(request: Request) -> Policies:
    built: Policies = request.app.state.rate_limit_policies
    return built


def client_address(request: Request) -> str:
    """The client as the server established it: uvicorn replaces the peer with the
    X-Forwarded-For entry only when the peer is in FORWARDED_ALLOW_IPS (the gateway), taking the
    rightmost address that is not a trusted proxy, so a client cannot pick its own bucket."""
    return request.client.host if request.client else "unknown"


def account_key(email: str) -> str:
    return hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]
