"""Dependency aliases for route handlers (async: FastAPI runs a plain function dependency in its thread
pool, a hop that costs more than these lookups)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from core.settings import Settings
from search_api.services.search import SearchService


async def get_service(request: Request) -> SearchService:
    service: SearchService = request.app.state.services.get()
    return service


async def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


ServiceDep = Annotated[SearchService, Depends(get_service)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
