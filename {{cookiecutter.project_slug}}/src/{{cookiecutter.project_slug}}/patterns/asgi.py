"""Small ASGI helpers shared by the observability patterns."""

from __future__ import annotations

from starlette.types import Message, Scope, Send

UNMATCHED_ROUTE = "<unmatched>"


def route_template(scope: Scope) -> str:
    """The matched route's template (``/orders/{order_id}``), never the raw path.

    Labelling by raw path would create one metric series per id and let any client blow up
    the metrics store; unmatched paths (scanners, typos) share one label.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE


class StatusRecordingSend:
    """Wraps an ASGI ``send`` and remembers the response status.

    ``code`` stays 500 until a response starts: if the app raises before responding, 500 is
    what the client gets from the server-error handler.
    """

    def __init__(self, send: Send) -> None:
        self.code = 500
        self._send = send

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.code = message["status"]
        await self._send(message)
