"""Strict request types: what passes validation can be stored and compared without a 500.

Guarantees (each a 422 at validation instead of an error deep in the request):
- :data:`PgText` / :data:`PgJsonObject`: no NUL character (U+0000) in a string, nor in any key
  or string inside a JSON value: Postgres ``text`` and ``jsonb`` cannot hold one and raise;
- :data:`StrictInt`: a JSON integer only, never ``true``/``false`` or ``"12"``;
- :data:`IsoDatetime`: an ISO 8601 timestamp only (pydantic would read ``0.5`` as seconds
  since 1970), aware, and inside the range Postgres and Python can both compare in UTC.

Needs: pydantic. Use the aliases in request schemas and query parameters;
:func:`refuse_nul` for values parsed by hand (a JSON query parameter).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BeforeValidator, Field

T = TypeVar("T")
NUL = "\x00"
_ISO_DATE_PREFIX = re.compile(r"^\d{4}-\d{2}-\d{2}")


def contains_nul(value: Any) -> bool:
    if isinstance(value, str):
        return NUL in value
    if isinstance(value, dict):
        return any(contains_nul(key) or contains_nul(item) for key, item in value.items())
    if isinstance(value, list | tuple):
        return any(contains_nul(item) for item in value)
    return False


def refuse_nul(value: T) -> T:
    if contains_nul(value):
        raise ValueError("must not contain NUL (\\u0000) characters")
    return value


def _iso_only(value: Any) -> Any:
    if isinstance(value, str) and _ISO_DATE_PREFIX.match(value):
        return value
    if isinstance(value, datetime):
        return value
    raise ValueError("expected an ISO 8601 timestamp")


def _in_utc_range(value: datetime) -> datetime:
    if value.tzinfo is None:
        raise ValueError("timestamp needs a time zone")
    try:
        # 9999-12-31T23:59:59-14:00 is a valid timestamp that no longer fits once in UTC.
        return value.astimezone(UTC)
    except OverflowError as exc:
        raise ValueError("timestamp out of range") from exc


PgText = Annotated[str, AfterValidator(refuse_nul)]
PgJsonObject = Annotated[dict[str, Any], AfterValidator(refuse_nul)]
StrictInt = Annotated[int, Field(strict=True)]
IsoDatetime = Annotated[datetime, BeforeValidator(_iso_only), AfterValidator(_in_utc_range)]
