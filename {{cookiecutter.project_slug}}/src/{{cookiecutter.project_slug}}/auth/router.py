from __future__ import annotations

from fastapi import APIRouter, Request, status

from {{ cookiecutter.project_slug }}.auth import service
from {{ cookiecutter.project_slug }}.auth.dependencies import CurrentUser
from {{ cookiecutter.project_slug }}.auth.schemas import (
    AccessToken,
    Login,
    Registration,
    RegistrationAccepted,
    UserRead,
)
from {{ cookiecutter.project_slug }}.auth.security import create_access_token
from {{ cookiecutter.project_slug }}.dependencies import SettingsDep
from {{ cookiecutter.project_slug }}.exceptions import NotAuthenticated
from {{ cookiecutter.project_slug }}.notifications.notifier import create_notifier
from {{ cookiecutter.project_slug }}.patterns.problem import problems
from {{ cookiecutter.project_slug }}.patterns.rate_limit import RateLimited, enforce
from {{ cookiecutter.project_slug }}.postgres import DbSession, Sessions
from {{ cookiecutter.project_slug }}.rate_limits import account_key, client_address, policies

router = APIRouter(tags=["auth"])


@router.post(
    "/auth/register", status_code=status.HTTP_202_ACCEPTED, responses=problems(RateLimited)
)
async def register(
    body: Registration, request: Request, session: DbSession, settings: SettingsDep
) -> RegistrationAccepted:
    """The same 202 and body whether or not the email already has an account (no account
    enumeration): the mailbox's owner is told by email which it was."""
    # Per address first (one client creating accounts), then per account (many addresses
    # hammering one email); both before the Argon2 hash.
    await enforce(request, policies(request).register_ip, client_address(request))
    await enforce(request, policies(request).register_account, account_key(body.email))
    await service.register(session, create_notifier(settings.notifier), body.email, body.password)
    return RegistrationAccepted(email=body.email)


@router.post("/auth/login", responses=problems(NotAuthenticated, RateLimited))
async def login(
    body: Login, request: Request, sessions: Sessions, settings: SettingsDep
) -> AccessToken:
    # One address against many accounts, and many addresses against one account: both are
    # stopped before the password hash runs.
    await enforce(request, policies(request).login_ip, client_address(request))
    await enforce(request, policies(request).login_account, account_key(body.email))
    # Read the account, and give the connection back before Argon2 runs (tens of ms in a
    # thread): a login burst larger than the pool queues for CPU, not for connections.
    async with sessions() as session:
        found = await service.find_login(session, body.email)
    user, rehashed = await service.check_password(found, body.password)
    if rehashed is not None:
        # Its own short transaction, after the hash: committed here, by the request.
        async with sessions.begin() as session:
            await service.store_rehash(session, user.id, rehashed)
    token, expires_in = create_access_token(user.id, settings)
    return AccessToken(access_token=token, expires_in=expires_in)


@router.get("/users/me")
async def me(user: CurrentUser) -> UserRead:
    return UserRead.model_validate(user)
