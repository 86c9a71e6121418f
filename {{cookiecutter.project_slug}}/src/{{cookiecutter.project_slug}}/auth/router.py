from __future__ import annotations

from fastapi import APIRouter, status

from {{ cookiecutter.project_slug }}.auth import service
from {{ cookiecutter.project_slug }}.auth.dependencies import CurrentUser
from {{ cookiecutter.project_slug }}.auth.schemas import AccessToken, Login, Registration, UserRead
from {{ cookiecutter.project_slug }}.auth.security import create_access_token
from {{ cookiecutter.project_slug }}.dependencies import SettingsDep
from {{ cookiecutter.project_slug }}.postgres import DbSession

router = APIRouter(tags=["auth"])


@router.post("/auth/register", status_code=status.HTTP_201_CREATED)
async def register(body: Registration, session: DbSession) -> UserRead:
    user = await service.register(session, body.email, body.password)
    return UserRead.model_validate(user)


@router.post("/auth/login")
async def login(body: Login, session: DbSession, settings: SettingsDep) -> AccessToken:
    user = await service.authenticate(session, body.email, body.password)
    token, expires_in = create_access_token(user.id, settings)
    return AccessToken(access_token=token, expires_in=expires_in)


@router.get("/users/me")
async def me(user: CurrentUser) -> UserRead:
    return UserRead.model_validate(user)
