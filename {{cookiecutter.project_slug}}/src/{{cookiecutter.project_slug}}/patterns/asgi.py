"""Small ASGI helpers shared by the observability patterns."""

from __future__ import annotations

from starlette.types import Scope

UNMATCHED_ROUTE = "<unmatched>"


def route_template(scope: Scope) -> str:
    """The matched route's template (``/orders/{order_id}``), never the raw path.

    Labelling by raw path would create one metric series per id and let any client blow up
    the metrics store; unmatched paths (scanners, typos) share one label.
    """
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED_ROUTE
