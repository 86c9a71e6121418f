"""The app's own request dependencies: what the app factory put on ``app.state``, typed for
endpoints. Domain dependencies (the caller, a staff user) live in their domain packages."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from {{ cookiecutter.project_slug }}.config import Settings


# async on purpose: FastAPI runs a sync dependency in the thread pool, a hop that costs more
# than the attribute read itself on every request that needs the settings.
async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_settings)]
