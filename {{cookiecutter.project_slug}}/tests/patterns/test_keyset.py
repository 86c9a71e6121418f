from __future__ import annotations

import base64
from datetime import UTC, datetime
from uuid import UUID

import orjson
import pytest
from sqlalchemy import ClauseElement, select
from sqlalchemy.dialects.postgresql.base import PGDialect

from {{ cookiecutter.project_slug }}.models import Order
from {{ cookiecutter.project_slug }}.patterns.keyset import InvalidCursor, Keyset

NEWEST = Keyset((Order.created_at, Order.id))
OLDEST = Keyset((Order.created_at, Order.id), descending=False)
KEY = (datetime(2026, 11, 21, 12, 30, tzinfo=UTC), UUID("0194f1c2-0000-7000-8000-000000000001"))


def sql(statement: ClauseElement) -> str:
    return str(statement.compile(dialect=PGDialect()))  # type: ignore[no-untyped-call]


def raw_cursor(values: object) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(values)).rstrip(b"=").decode()


def test_a_cursor_round_trips_to_the_same_typed_key() -> None:
    assert NEWEST.decode(NEWEST.encode(KEY)) == KEY


def test_a_cursor_is_opaque_url_safe_text() -> None:
    cursor = NEWEST.encode(KEY)
    assert cursor.replace("-", "").replace("_", "").isalnum()


@pytest.mark.parametrize(
    "cursor",
    [
        "%%%",
        "bm90IGpzb24",  # base64 of "not json"
        raw_cursor({"created_at": "x"}),  # not a list
        raw_cursor(["2026-11-21T12:30:00+00:00"]),  # too short
        raw_cursor(["2026-11-21T12:30:00", str(KEY[1])]),  # naive timestamp
        raw_cursor([1, str(KEY[1])]),  # wrong type
        raw_cursor(["2026-11-21T12:30:00+00:00", "not-a-uuid"]),
        "A" * 600,
    ],
)
def test_forged_cursors_are_refused(cursor: str) -> None:
    with pytest.raises(InvalidCursor):
        NEWEST.decode(cursor)


def test_the_next_page_is_one_row_comparison_in_the_sort_direction() -> None:
    newest = sql(NEWEST.paginate(select(Order.id), KEY, limit=50))
    oldest = sql(OLDEST.paginate(select(Order.id), KEY, limit=50))
    assert "(orders.created_at, orders.id) < (" in newest
    assert "ORDER BY orders.created_at DESC, orders.id DESC" in newest
    assert "(orders.created_at, orders.id) > (" in oldest
    assert "ORDER BY orders.created_at ASC, orders.id ASC" in oldest
    assert "OFFSET" not in newest


def test_the_first_page_has_no_seek_and_fetches_one_extra_row() -> None:
    statement = NEWEST.paginate(select(Order.id), None, limit=50)
    assert "WHERE" not in sql(statement)
    assert statement._limit == 51


def test_a_page_has_a_next_cursor_only_when_a_row_is_left() -> None:
    keys = [(KEY[0], UUID(int=n)) for n in range(5, 0, -1)]
    items, cursor = NEWEST.page(keys, 3, lambda key: key)
    assert items == keys[:3]
    assert cursor is not None
    assert NEWEST.decode(cursor) == keys[2]
    assert NEWEST.page(keys[:3], 3, lambda key: key) == (keys[:3], None)
    assert NEWEST.page([], 3, lambda key: key) == ([], None)
