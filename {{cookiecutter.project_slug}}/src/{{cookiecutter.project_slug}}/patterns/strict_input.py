"""Strict request types: what passes validation can be stored and compared without a 500.

Guarantees (each a 422 at validation instead of an error deep in the request):
- :data:`PgText` / :data:`PgJsonObject`: no NUL character (U+0000) in a string, nor in any key
  or string inside a JSON value: Postgres ``text`` and ``jsonb`` cannot hold one and raise;
- :data:`JsonInteger`, in ``Annotated[int, Field(ge=0, strict=True), JsonInteger]``: a JSON
  integer as JSON Schema means one (``12``, also ``12.0``), never ``true``/``false``, ``"12"``
  or ``12.5``. Bounds go in that ``Field``, before it: pydantic cannot carry a bound placed
  after a before-validator into the schema (it writes ``ge``, not ``minimum``);
- :data:`IsoDatetime`: an ISO 8601 timestamp only (pydantic would read ``0.5`` as seconds
  since 1970), aware, and inside the range Postgres and Python can both compare in UTC.

Needs: pydantic. Use the aliases in request schemas and query parameters;
:func:`refuse_nul` for values parsed by hand (a JSON query parameter).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BeforeValidator

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


def _json_integer(value: Any) -> Any:
    # JSON Schema's "integer" is any number with a zero fraction, so 2046.0 is one; pydantic's
    # strict int refuses it, and its lax int would also take "12" and true.
    if isinstance(value, float) and value.is_integer():
        return int(value)
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
JsonInteger = BeforeValidator(_json_integer)
IsoDatetime = Annotated[datetime, BeforeValidator(_iso_only), AfterValidator(_in_utc_range)]
