"""Keyset ("seek") pagination with opaque cursors.

Guarantees: a page costs the same at page 1 and page 10,000 (the query seeks to the cursor in
an index instead of reading and discarding ``OFFSET`` rows); rows inserted or deleted while a
client pages through never make it skip or repeat a row; ties in the sort column are broken by
the next column, so the key must be unique as a whole (end it with the primary key).

How: the sort key is a tuple of columns sorted in one direction, e.g. ``(created_at, id)``
newest first. The next page is ``WHERE (created_at, id) < (:last_created_at, :last_id)``, a
row comparison Postgres answers from a B-tree on those columns (behind any equality columns,
as in ``(user_id, created_at, id)``). The cursor is the last row's key, JSON-encoded and
base64url'd: opaque to clients, so the sort key can change without breaking the API contract.
It is not signed: a forged cursor only moves the caller within rows the query already allows.

Needs: SQLAlchemy 2 and pydantic. Declare a :class:`Keyset` next to the query, call
:meth:`Keyset.paginate` on the ``select()`` and :meth:`Keyset.page` on the rows it returns. A
cursor that does not decode raises :class:`InvalidCursor` (map it to a 4xx in the router).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar
from uuid import UUID

import orjson
from pydantic import BaseModel, Field
from sqlalchemy import ColumnElement, Select, UnaryExpression, literal, tuple_
from sqlalchemy.orm import InstrumentedAttribute

Row = TypeVar("Row")
Item = TypeVar("Item")
# Any select(), whatever its columns.
Statement = TypeVar("Statement", bound="Select[*tuple[Any, ...]]")

MAX_CURSOR_LENGTH = 512


class InvalidCursor(ValueError):
    """The cursor was not produced by this keyset (tampered, truncated, or from elsewhere)."""


class Page(BaseModel, Generic[Item]):
    """One page of results; pass ``next_cursor`` back as ``?cursor=`` for the next one."""

    items: list[Item]
    next_cursor: str | None = Field(
        description="Opaque cursor for the next page; null on the last page."
    )


@dataclass(frozen=True)
class Keyset:
    """A unique sort key: columns sorted in one direction (newest first by default)."""

    columns: tuple[InstrumentedAttribute[Any], ...]
    descending: bool = True

    def order_by(self) -> list[UnaryExpression[Any]]:
        return [column.desc() if self.descending else column.asc() for column in self.columns]

    def after(self, key: Sequence[Any]) -> ColumnElement[bool]:
        """Rows that sort strictly after ``key``: one row comparison, answered by the index."""
        bound = tuple_(
            *(literal(value, column.type) for column, value in zip(self.columns, key, strict=True))
        )
        row = tuple_(*self.columns)
        return row < bound if self.descending else row > bound

    def paginate(self, statement: Statement, after: Sequence[Any] | None, limit: int) -> Statement:
        """Order ``statement`` by the key, seek past ``after`` and fetch one extra row (which
        tells :meth:`page` whether there is a next page without a COUNT)."""
        if after is not None:
            statement = statement.where(self.after(after))
        return statement.order_by(*self.order_by()).limit(limit + 1)

    def page(
        self, rows: Sequence[Row], limit: int, key: Callable[[Row], Sequence[Any]]
    ) -> tuple[list[Row], str | None]:
        """Split the rows of :meth:`paginate` into this page and the cursor for the next."""
        items = list(rows[:limit])
        has_more = len(rows) > limit
        return items, self.encode(key(items[-1])) if has_more and items else None

    def encode(self, key: Sequence[Any]) -> str:
        values = [_to_json(value) for value in key]
        return base64.urlsafe_b64encode(orjson.dumps(values)).rstrip(b"=").decode()

    def decode(self, cursor: str) -> tuple[Any, ...]:
        if len(cursor) > MAX_CURSOR_LENGTH:
            raise InvalidCursor("cursor is too long")
        try:
            raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
            values = orjson.loads(raw)
        except (binascii.Error, ValueError) as exc:
            raise InvalidCursor("cursor is not valid") from exc
        if not isinstance(values, list) or len(values) != len(self.columns):
            raise InvalidCursor("cursor does not match this listing")
        try:
            return tuple(
                _from_json(value, column.type.python_type)
                for column, value in zip(self.columns, values, strict=True)
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise InvalidCursor("cursor does not match this listing") from exc


def _to_json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, UUID):
        return str(value)
    return value


def _from_json(value: Any, python_type: type[Any]) -> Any:
    if python_type is datetime:
        if not isinstance(value, str):
            raise TypeError("expected an ISO timestamp")
        parsed = datetime.fromisoformat(value)
        if parsed.tzinfo is None:
            # A naive timestamp would compare against timestamptz in the session's time zone.
            raise ValueError("timestamp without a time zone")
        # Raises OverflowError for a key no row can have (9999-12-31T23:59:59-14:00), here
        # rather than in the driver, which would make it a 500.
        return parsed.astimezone(UTC)
    if python_type is UUID:
        if not isinstance(value, str):
            raise TypeError("expected a UUID")
        return UUID(value)
    if python_type in (int, str) and type(value) is python_type:
        return value
    raise TypeError(f"unsupported cursor value for {python_type.__name__}")
