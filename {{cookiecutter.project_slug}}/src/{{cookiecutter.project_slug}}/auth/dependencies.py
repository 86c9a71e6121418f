"""Typed dependencies for the authenticated caller."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Annotated

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from {{ cookiecutter.project_slug }}.auth.repository import UserRepository
from {{ cookiecutter.project_slug }}.auth.security import decode_access_token
from {{ cookiecutter.project_slug }}.auth.user_cache import UserCache
from {{ cookiecutter.project_slug }}.dependencies import SettingsDep
from {{ cookiecutter.project_slug }}.exceptions import Forbidden, NotAuthenticated
from {{ cookiecutter.project_slug }}.models import User
from {{ cookiecutter.project_slug }}.patterns.rate_limit import Policy, enforce
from {{ cookiecutter.project_slug }}.postgres import DbSession
from {{ cookiecutter.project_slug }}.rate_limits import Policies, policies

# auto_error=False: a missing header becomes our 401 problem, not FastAPI's bare 403.
MAX_TOKEN_LENGTH = 4096
bearer = HTTPBearer(auto_error=False, description="Access token from POST /auth/login")


async def get_current_user(
    request: Request,
    session: DbSession,
    settings: SettingsDep,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> User:
    if credentials is None:
        raise NotAuthenticated()
    if len(credentials.credentials) > MAX_TOKEN_LENGTH:
        # Refused before any decoding: ours are a few hundred characters.
        raise NotAuthenticated("The access token is invalid.")
    user_id = decode_access_token(credentials.credentials, settings)
    # Per user, before the database is asked anything: a flood of valid tokens costs Redis
    # round trips, not connections.
    await enforce(request, policies(request).user, str(user_id))
    # The active user from this process's short-lived cache, else one primary-key lookup: a
    # deactivated user is locked out within USER_CACHE_TTL_SECONDS (at once when it happened
    # through this process), not when the token expires (auth/user_cache.py).
    cache: UserCache = request.app.state.user_cache
    user = cache.get(user_id)
    if user is not None:
        return user
    user = await UserRepository(session).get_by_id(user_id)
    if user is None or not user.is_active:
        raise NotAuthenticated("The account behind this token no longer exists.")
    cache.put(user)
    return user


# The role a staff route's security requirement names (OpenAPI 3.1 allows role names for any
# scheme): the schema documents a 403 wherever it appears, so no route lists one by hand.
STAFF_ROLE = "staff"


async def get_staff_user(
    user: Annotated[User, Depends(get_current_user)],
    # Only marks the schema. The role goes on the bearer scheme, not on get_current_user: FastAPI
    # caches a dependency per (call, scopes), so that would resolve and rate-limit the caller twice.
    _role: Annotated[HTTPAuthorizationCredentials | None, Security(bearer, scopes=[STAFF_ROLE])],
) -> User:
    if not user.is_staff:
        raise Forbidden("This action needs a staff account.")
    return user


CurrentUser = Annotated[User, Depends(get_current_user)]
StaffUser = Annotated[User, Depends(get_staff_user)]


def user_rate_limit(pick: Callable[[Policies], Policy]) -> Callable[..., Awaitable[None]]:
    """A route dependency counting one hit per request of the caller against a policy of its
    own (``dependencies=[Depends(user_rate_limit(lambda p: p.orders))]``)."""

    async def limit(request: Request, user: CurrentUser) -> None:
        await enforce(request, pick(policies(request)), str(user.id))

    return limit
