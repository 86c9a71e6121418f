"""Live events: ``GET /events/catalog`` (public) and ``GET /events/orders`` (the caller's own).

Streamed, never cached: ``Cache-Control: no-store`` and ``X-Accel-Buffering: no`` on the
response; the edge passes ``/events/`` through unbuffered (deploy/varnish/default.vcl).
"""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Header, Request
from sse_starlette import EventSourceResponse

from {{ cookiecutter.project_slug }}.auth.dependencies import CurrentUser
from {{ cookiecutter.project_slug }}.patterns.sse import Fanout
from {{ cookiecutter.project_slug }}.pubsub.events import ORDER, PRODUCT

router = APIRouter(prefix="/events", tags=["events"])

LastEventId = Annotated[str | None, Header(alias="Last-Event-ID", pattern=r"^\d+-\d+$")]


def decode_entry(fields: dict[Any, Any]) -> dict[str, Any]:
    raw = fields.get(b"event", fields.get("event")) or b"{}"
    event: dict[str, Any] = orjson.loads(raw)
    return event


def _response(request: Request, stream: Any) -> EventSourceResponse:
    settings = request.app.state.settings
    return EventSourceResponse(
        stream,
        ping=settings.sse_heartbeat_seconds,
        send_timeout=settings.sse_send_timeout_seconds,
        headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
    )


@router.get("/catalog", summary="Price and stock changes, live (text/event-stream)")
async def catalog_events(request: Request, last_event_id: LastEventId = None) -> Any:
    fanout: Fanout = request.app.state.fanout
    stream = f"{request.app.state.settings.events_stream_prefix}{PRODUCT}"
    return _response(
        request, fanout.events(stream, lambda event: True, last_event_id=last_event_id)
    )


@router.get("/orders", summary="The caller's own order events, live (text/event-stream)")
async def order_events(
    request: Request, user: CurrentUser, last_event_id: LastEventId = None
) -> Any:
    fanout: Fanout = request.app.state.fanout
    stream = f"{request.app.state.settings.events_stream_prefix}{ORDER}"
    user_id = str(user.id)
    return _response(
        request,
        fanout.events(
            stream,
            lambda event: event.get("payload", {}).get("user_id") == user_id,
            last_event_id=last_event_id,
        ),
    )
