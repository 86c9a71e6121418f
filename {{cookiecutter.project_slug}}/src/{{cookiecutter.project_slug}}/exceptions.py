"""The service's domain errors. Each carries its HTTP status; patterns.problem renders them."""

from __future__ import annotations

from typing import ClassVar

from {{ cookiecutter.project_slug }}.patterns.problem import ProblemError


class NotFound(ProblemError):
    status: ClassVar[int] = 404
    title: ClassVar[str] = "Not Found"


class Conflict(ProblemError):
    status: ClassVar[int] = 409
    title: ClassVar[str] = "Conflict"


class Unprocessable(ProblemError):
    status: ClassVar[int] = 422
    title: ClassVar[str] = "Unprocessable Content"


class NotAuthenticated(ProblemError):
    status: ClassVar[int] = 401
    title: ClassVar[str] = "Not Authenticated"

    def __init__(self, detail: str = "Missing or invalid bearer token.") -> None:
        # RFC 6750: a 401 tells the client which scheme to use.
        super().__init__(detail, headers={"WWW-Authenticate": "Bearer"})


class Forbidden(ProblemError):
    status: ClassVar[int] = 403
    title: ClassVar[str] = "Forbidden"


class ServiceUnavailable(ProblemError):
    status: ClassVar[int] = 503
    title: ClassVar[str] = "Service Unavailable"


class BadRequest(ProblemError):
    status: ClassVar[int] = 400
    title: ClassVar[str] = "Bad Request"
