"""RFC 9457 problem details: every error leaves the API as ``application/problem+json``.

Guarantees:
- an error raised as a :class:`ProblemError` (or subclass) is rendered with its own status,
  title and detail, plus any extra members it carries;
- request validation errors become 422 with an ``errors`` list naming each bad field;
- Starlette's HTTP errors (unknown route, wrong method) get the same shape, and a 405's
  ``Allow`` names every method the path serves (Starlette's names one route's);
- anything unexpected becomes a 500 whose body holds the request id and nothing else from the
  server: the traceback goes to the log, never to the client;
- ``/openapi.json`` says so: every 4xx/5xx response of every operation is documented as
  ``application/problem+json`` with one ``Problem`` schema: the ones a route lists with
  :func:`problems`, and on every operation behind a security dependency the ``secured`` ones;
- an unexpected error never costs the connection it arrived on (:class:`UnhandledErrorMiddleware`):
  Starlette re-raises after answering the 500, and uvicorn then closes the keep-alive connection
  under the gateway, which may already be sending another user's request on it (a 502).

Needs: fastapi, orjson, asgi-correlation-id (for the request id). Wire it with
``install_problem_handlers(app)``; it also wraps the whole app (outside Starlette's
ServerErrorMiddleware) in :class:`UnhandledErrorMiddleware`.
"""

from __future__ import annotations

from collections.abc import Mapping
from http import HTTPStatus
from typing import Any, ClassVar

import orjson
import structlog
from asgi_correlation_id import correlation_id
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

PROBLEM_JSON = "application/problem+json"

log = structlog.get_logger(__name__)


class ProblemError(Exception):
    """An error that knows how it looks over HTTP. Subclass it per domain error."""

    status: ClassVar[int] = 500
    title: ClassVar[str] = "Internal Server Error"
    # A URI naming the problem type; "about:blank" means "see the status code".
    type: ClassVar[str] = "about:blank"

    def __init__(
        self,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.headers = dict(headers or {})
        self.extensions = extensions


def problem_response(
    status: int,
    *,
    title: str | None = None,
    detail: str | None = None,
    type_: str = "about:blank",
    instance: str | None = None,
    headers: Mapping[str, str] | None = None,
    **extensions: Any,
) -> Response:
    body: dict[str, Any] = {
        "type": type_,
        "title": title or HTTPStatus(status).phrase,
        "status": status,
    }
    if detail:
        body["detail"] = detail
    if instance:
        body["instance"] = instance
    request_id = correlation_id.get()
    if request_id:
        body["request_id"] = request_id
    body.update(extensions)
    return Response(
        content=orjson.dumps(body, default=str),
        status_code=status,
        media_type=PROBLEM_JSON,
        headers=headers,
    )


async def _problem_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ProblemError)
    return problem_response(
        exc.status,
        title=exc.title,
        detail=exc.detail,
        type_=exc.type,
        instance=request.url.path,
        headers=exc.headers,
        **exc.extensions,
    )


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    errors = [
        {
            # ("body", "email") -> "body.email": the field a client must fix.
            "field": ".".join(str(part) for part in error.get("loc", ())),
            "message": error.get("msg", ""),
            "type": error.get("type", ""),
        }
        for error in exc.errors()
    ]
    return problem_response(
        422,
        title="Validation Error",
        detail=f"{len(errors)} field(s) failed validation",
        instance=request.url.path,
        errors=errors,
    )


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def allowed_methods(request: Request) -> list[str]:
    """Every method some route serves at this request's path. Starlette's 405 names only the
    first route that matched the path, and ``GET /orders`` and ``POST /orders`` are two."""
    routes = request.app.router.routes
    return [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes
        )
    ]


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    detail: str | None = exc.detail if isinstance(exc.detail, str) else None
    if detail == HTTPStatus(exc.status_code).phrase:
        detail = None
    headers = dict(exc.headers or {})
    if exc.status_code == 405 and (allowed := allowed_methods(request)):
        headers["Allow"] = ", ".join(allowed)
    return problem_response(
        exc.status_code, detail=detail, instance=request.url.path, headers=headers
    )


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    log.error("http.unhandled_error", path=request.url.path, exc_info=exc)
    request_id = correlation_id.get()
    return problem_response(
        500,
        detail="An unexpected error occurred. Quote the request id when reporting it.",
        instance=request.url.path,
        # A 500 is rendered outside the request-id middleware, so echo the id here.
        headers={"X-Request-ID": request_id} if request_id else None,
    )


def install_unavailable_handler(app: FastAPI, *errors: type[Exception]) -> None:
    """Render ``errors`` (a dependency that cannot be reached) as 503 problems with
    ``Retry-After``: the client, and the edge that may serve stale, learn it is temporary."""

    async def _unavailable(request: Request, exc: Exception) -> Response:
        log.warning(
            "http.dependency_unavailable", path=request.url.path, error_type=type(exc).__name__
        )
        return problem_response(
            503,
            detail="A service this request needs is unavailable; try again shortly.",
            instance=request.url.path,
            headers={"Retry-After": "1"},
        )

    for error in errors:
        app.add_exception_handler(error, _unavailable)


class UnhandledErrorMiddleware:
    """The outermost layer: an exception that escapes the app never reaches the server.

    - the response was sent in full (Starlette's error handler answered the 500 and re-raised,
      or a background task failed afterwards): the exception stops here and the connection
      stays open for the next request;
    - nothing was sent yet (an error outside Starlette's handler): a problem+json 500;
    - half a response went out: re-raised, because closing the connection is the only honest
      way to tell the client (and the gateway) that the body is truncated.

    Hand-written because it must sit outside ServerErrorMiddleware, where no library hooks in.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = complete = False

        async def tracking_send(message: Message) -> None:
            nonlocal started, complete
            if message["type"] == "http.response.start":
                started = True
            elif message["type"] == "http.response.body" and not message.get("more_body"):
                complete = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception as exc:
            if complete:
                return  # answered and logged by _unexpected_error
            if started:
                log.error("http.unhandled_error_midstream", path=scope.get("path"), exc_info=exc)
                raise
            log.error("http.unhandled_error", path=scope.get("path"), exc_info=exc)
            response = problem_response(
                500, detail="An unexpected error occurred.", instance=scope.get("path")
            )
            await response(scope, receive, send)


Problems = dict[int | str, dict[str, Any]]
PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "RFC 9457 problem details; a 422 adds `errors`, one per bad field.",
    "type": "object",
    "required": ["type", "title", "status"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "request_id": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["field", "message", "type"],
                "properties": {
                    "field": {"type": "string"},
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                },
            },
        },
    },
}


def problems(*errors: type[ProblemError]) -> Problems:
    """``responses=`` for a route: the problems it may answer, by status (titles joined)."""
    documented: Problems = {}
    for error in errors:
        entry = documented.setdefault(error.status, {"description": error.title})
        if error.title not in entry["description"].split("; "):
            entry["description"] += f"; {error.title}"
    return documented


def _document_problems(schema: dict[str, Any], secured: Problems, restricted: Problems) -> None:
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            responses = operation.setdefault("responses", {})
            # FastAPI marks every operation behind a security dependency (the bearer token),
            # with the scopes or role names its dependencies ask for.
            requirements = operation.get("security", [])
            needs_role = any(
                roles for requirement in requirements for roles in requirement.values()
            )
            for status, entry in (secured if requirements else {}).items():
                responses.setdefault(str(status), dict(entry))
            for status, entry in (restricted if needs_role else {}).items():
                responses.setdefault(str(status), dict(entry))
            if "requestBody" in operation:
                # FastAPI's answer to a body it cannot read at all (bytes that are not UTF-8);
                # one that reads but is not JSON is a 422 like any other bad field.
                responses.setdefault("400", {"description": "Bad Request (unreadable body)"})
            for status, response in responses.items():
                if status[0] in "45":
                    response["content"] = {
                        PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}
                    }
    schemas = schema.setdefault("components", {}).setdefault("schemas", {})
    # FastAPI's own 422 body, which this API never sends.
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    schemas["Problem"] = PROBLEM_SCHEMA


def install_problem_handlers(
    app: FastAPI, *, secured: Problems | None = None, restricted: Problems | None = None
) -> None:
    """Render every error as a problem, and document it so; ``secured`` are the problems every
    operation behind a security dependency may answer (a missing or bad token...), and
    ``restricted`` those of every operation whose requirement names a scope or role (403)."""
    app.add_exception_handler(ProblemError, _problem_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected_error)
    # Starlette always puts ServerErrorMiddleware outermost; wrap what it builds.
    build_stack = app.build_middleware_stack
    setattr(app, "build_middleware_stack", lambda: UnhandledErrorMiddleware(build_stack()))  # noqa: B010
    build_schema = app.openapi

    def openapi() -> dict[str, Any]:
        # FastAPI caches the schema (and rebuilds it after a route is added): document once.
        schema = build_schema()
        if "Problem" not in schema.get("components", {}).get("schemas", {}):
            _document_problems(schema, secured or {}, restricted or {})
        return schema

    setattr(app, "openapi", openapi)  # noqa: B010
