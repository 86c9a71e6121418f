"""HTTP caching done right: a cache policy per route, strong ETags, 304s and surrogate keys.

The failures it prevents: a CDN that stores one user's response and serves it to the next
(the classic leak: a user-specific route without ``private``); a catalog the CDN cannot cache
(no ``s-maxage``) so every request reaches the origin; clients re-downloading bodies they
already hold (no validators); and content that stays stale at the edge after an update (no
surrogate keys to purge by).

Guarantees:
- **Deny by default**: a response whose route declared no policy, every non-200 response
  (errors, redirects, 401s) and every response to a method other than GET/HEAD leaves with
  ``Cache-Control: private, no-store`` unless the endpoint set ``Cache-Control`` itself.
  Only a route that declares a public policy with ``dependencies=[cache_policy(...)]`` can
  be stored by a shared cache.
- A declared policy sets ``Cache-Control`` and ``Vary`` on the route's 200 and 304 responses:
  public ones carry ``max-age``, ``s-maxage`` (the edge's TTL) and ``stale-while-revalidate``;
  private ones vary on ``Authorization`` and ``Cookie`` as a second line of defence.
- Every GET answered under a policy with ``etag=True`` carries a strong ``ETag``: the one the
  endpoint gave through :func:`conditional` (computed from version columns, cheap), else a
  hash of the body. ``If-None-Match`` that matches (weak comparison, ``*``, lists) turns the
  response into a ``304`` with the same caching headers and no body; without
  ``If-None-Match``, ``If-Modified-Since`` is compared with ``Last-Modified``.
- :func:`conditional` raises before the body is rendered when the validators match, so a
  route that knows its version answers a revalidation without serialising anything.
- Surrogate keys given with :func:`add_surrogate_keys` leave as ``xkey`` (Varnish's xkey
  vmod) and ``Surrogate-Key`` (Fastly) on shareable responses only; the edge purges by them
  (see :mod:`.cdn_purge`). A private response never carries them.

Needs: starlette/fastapi; nothing else. Wire it with ``install_http_cache(app)`` (middleware +
the 304 handler) and declare policies on routes. The middleware must sit inside any
middleware that compresses bodies (hash what the app produced).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import format_datetime, parsedate_to_datetime
from typing import Any, Final

from fastapi import Depends, FastAPI, Request
from starlette.datastructures import Headers, MutableHeaders
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_POLICY: Final = "http_cache_policy"
_ETAG: Final = "http_cache_etag"
_LAST_MODIFIED: Final = "http_cache_last_modified"
_SURROGATE_KEYS: Final = "http_cache_surrogate_keys"

# Headers a 304 must repeat from the 200 it stands for (RFC 9110 section 15.4.5), plus the
# edge's surrogate keys so a revalidated object keeps its purge keys.
_KEPT_ON_304: Final = frozenset(
    {b"cache-control", b"etag", b"last-modified", b"vary", b"expires", b"date"}
    | {b"content-location", b"xkey", b"surrogate-key", b"x-request-id"}
)


@dataclass(frozen=True, slots=True)
class CachePolicy:
    """How a route's successful responses may be cached, and by whom."""

    cache_control: str
    vary: tuple[str, ...] = ()
    # Strong ETag and conditional requests (304). Off for no-store: nothing keeps the body.
    etag: bool = True

    @property
    def shareable(self) -> bool:
        return "public" in self.cache_control or "s-maxage" in self.cache_control

    @classmethod
    def public(
        cls,
        *,
        max_age: int,
        s_maxage: int | None = None,
        stale_while_revalidate: int | None = None,
        stale_if_error: int | None = None,
        immutable: bool = False,
        vary: Sequence[str] = ("Accept-Encoding",),
    ) -> CachePolicy:
        """Shared caches may store it: browsers for ``max_age``, the edge for ``s_maxage``
        (longer: the edge is purged on update, browsers are not), then serve it stale for
        ``stale_while_revalidate`` while they refetch in the background. ``immutable``: the
        bytes at this URL never change (a content-addressed key), so browsers do not even
        revalidate on reload."""
        parts = ["public", f"max-age={max_age}"]
        if s_maxage is not None:
            parts.append(f"s-maxage={s_maxage}")
        if stale_while_revalidate is not None:
            parts.append(f"stale-while-revalidate={stale_while_revalidate}")
        if stale_if_error is not None:
            parts.append(f"stale-if-error={stale_if_error}")
        if immutable:
            parts.append("immutable")
        return cls(", ".join(parts), tuple(vary))

    @classmethod
    def private(cls, *, max_age: int = 0) -> CachePolicy:
        """Only the user's own browser may keep it, revalidating with the ETag after
        ``max_age``."""
        return cls(f"private, max-age={max_age}, must-revalidate", ("Authorization", "Cookie"))


# User-specific or sensitive: no cache anywhere may keep it. The default for every response.
PRIVATE_NO_STORE: Final = CachePolicy("private, no-store", ("Authorization", "Cookie"), etag=False)


class NotModified(Exception):
    """Raised by :func:`conditional`; rendered as a bodiless 304 by the installed handler."""


def cache_policy(policy: CachePolicy) -> Any:
    """Declare ``policy`` next to a route: ``@router.get(..., dependencies=[cache_policy(P)])``."""

    # async: a plain def dependency would cost every request a hop through the thread pool.
    async def declare(request: Request) -> None:
        setattr(request.state, _POLICY, policy)

    return Depends(declare)


def add_surrogate_keys(request: Request, *keys: str) -> None:
    """Tag this response for purging (``product-<id>``); keys are plain tokens, no spaces."""
    existing: list[str] = getattr(request.state, _SURROGATE_KEYS, [])
    setattr(request.state, _SURROGATE_KEYS, [*existing, *keys])


def make_etag(*parts: object) -> str:
    """A strong ETag from what versions the representation: ids, version columns, and the
    schema's own version (a new field changes the bytes without changing the row)."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=12).digest()
    return '"' + base64.urlsafe_b64encode(digest).decode().rstrip("=") + '"'


def conditional(
    request: Request, *, etag: str | None = None, last_modified: datetime | None = None
) -> None:
    """Give the response its validators and answer 304 now if the client's copy is current.

    Call it before rendering the body; ``etag`` from :func:`make_etag` over version columns.
    """
    if etag is not None:
        setattr(request.state, _ETAG, etag)
    if last_modified is not None:
        setattr(request.state, _LAST_MODIFIED, last_modified)
    if _is_not_modified(request.headers, etag, last_modified):
        raise NotModified()


def _etag_matches(if_none_match: str, etag: str) -> bool:
    if if_none_match.strip() == "*":
        return True
    # Weak comparison (RFC 9110 section 13.1.2): W/"x" matches "x". An edge that gzips
    # turns our strong ETag weak, and the client sends back what it got.
    wanted = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == wanted for tag in if_none_match.split(","))


def _is_not_modified(headers: Headers, etag: str | None, last_modified: datetime | None) -> bool:
    if_none_match = headers.get("if-none-match")
    if if_none_match is not None:
        # If-None-Match wins; If-Modified-Since is ignored when it is present.
        return etag is not None and _etag_matches(if_none_match, etag)
    if_modified_since = headers.get("if-modified-since")
    if if_modified_since and last_modified is not None:
        try:
            since = parsedate_to_datetime(if_modified_since)
        except (TypeError, ValueError):
            return False
        if since.tzinfo is None:
            since = since.replace(tzinfo=UTC)
        # HTTP dates have whole seconds.
        return last_modified.replace(microsecond=0) <= since
    return False


def http_date(moment: datetime) -> str:
    return format_datetime(moment.astimezone(UTC), usegmt=True)


def _merge_vary(headers: MutableHeaders, vary: Iterable[str]) -> None:
    present = [v.strip() for v in headers.get("vary", "").split(",") if v.strip()]
    lowered = {v.lower() for v in present}
    merged = present + [v for v in vary if v.lower() not in lowered]
    if merged:
        headers["vary"] = ", ".join(merged)


class HttpCacheMiddleware:
    """Applies the route's policy (or the deny-by-default one), ETags and 304s."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        default: CachePolicy = PRIVATE_NO_STORE,
        surrogate_key_headers: Sequence[str] = ("xkey", "Surrogate-Key"),
    ) -> None:
        self.app = app
        self.default = default
        self.surrogate_key_headers = tuple(surrogate_key_headers)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        scope.setdefault("state", {})
        request_headers = Headers(scope=scope)
        start: Message | None = None
        chunks: list[bytes] = []

        async def send_with_caching(message: Message) -> None:
            nonlocal start
            if message["type"] == "http.response.start":
                if not self._apply(scope, message):
                    await send(message)
                    return
                start = message  # hold it until the whole body is hashed
                return
            if start is None or message["type"] != "http.response.body":
                await send(message)
                return
            chunks.append(message.get("body", b""))
            if message.get("more_body", False):
                return
            body = b"".join(chunks)
            await self._finish(request_headers, start, body, send)

        await self.app(scope, receive, send_with_caching)

    def _apply(self, scope: Scope, message: Message) -> bool:
        """Set the caching headers; return whether the body must be buffered for an ETag."""
        state: dict[str, Any] = scope["state"]
        status: int = message["status"]
        headers = MutableHeaders(scope=message)
        declared: CachePolicy | None = state.get(_POLICY)
        readable = scope["method"] in ("GET", "HEAD") and status in (200, 304)
        policy = declared if declared is not None and readable else self.default
        if "cache-control" not in headers:
            headers["cache-control"] = policy.cache_control
            _merge_vary(headers, policy.vary)
        if policy is self.default or status not in (200, 304):
            return False
        keys: list[str] | None = state.get(_SURROGATE_KEYS)
        if keys and policy.shareable:
            value = " ".join(dict.fromkeys(keys))
            for name in self.surrogate_key_headers:
                headers[name] = value
        etag: str | None = state.get(_ETAG)
        last_modified: datetime | None = state.get(_LAST_MODIFIED)
        if etag is not None and "etag" not in headers:
            headers["etag"] = etag
        if last_modified is not None and "last-modified" not in headers:
            headers["last-modified"] = http_date(last_modified)
        # Buffered even when the endpoint gave its ETag: the comparison happens in one place.
        return status == 200 and policy.etag and scope["method"] == "GET"

    async def _finish(self, request: Headers, start: Message, body: bytes, send: Send) -> None:
        headers = MutableHeaders(scope=start)
        if "etag" not in headers:
            digest = hashlib.blake2b(body, digest_size=16).digest()
            headers["etag"] = '"' + base64.urlsafe_b64encode(digest).decode().rstrip("=") + '"'
        last_modified = headers.get("last-modified")
        modified = parsedate_to_datetime(last_modified) if last_modified else None
        if _is_not_modified(request, headers["etag"], modified):
            kept = [(k, v) for k, v in start["headers"] if k.lower() in _KEPT_ON_304]
            await send({"type": "http.response.start", "status": 304, "headers": kept})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
            return
        await send(start)
        await send({"type": "http.response.body", "body": body, "more_body": False})


async def _not_modified(request: Request, exc: Exception) -> Response:
    return Response(status_code=304)


def install_http_cache(app: FastAPI, **options: Any) -> None:
    """Add the middleware (call before outer middleware) and the 304 handler."""
    app.add_exception_handler(NotModified, _not_modified)
    app.add_middleware(HttpCacheMiddleware, **options)
