"""The guard's rules on hand-written plans (no database); tests/test_query_plans.py runs it
against real plans of a production-sized database."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select

from {{ cookiecutter.project_slug }}.models import Order
from {{ cookiecutter.project_slug }}.patterns import plan_guard
from {{ cookiecutter.project_slug }}.patterns.plan_guard import find_problems

LARGE = frozenset({"orders"})


def node(kind: str, *children: dict[str, Any], rows: int = 1, **fields: Any) -> dict[str, Any]:
    return {"Node Type": kind, "Plan Rows": rows, "Plans": list(children), **fields}


def scan(kind: str = "Index Scan", rows: int = 1, table: str = "orders") -> dict[str, Any]:
    return {"Node Type": kind, "Plan Rows": rows, "Relation Name": table}


def test_a_seq_scan_of_a_large_table_is_a_problem_however_deep() -> None:
    plan = node("Limit", node("Gather", scan("Seq Scan")))
    assert find_problems(plan, large=LARGE, forbid_sort=False) == ["Seq Scan on large table orders"]


def test_a_seq_scan_of_a_small_table_is_fine() -> None:
    plan = node("Hash Join", scan("Seq Scan", table="order_status_names"))
    assert find_problems(plan, large=LARGE, forbid_sort=True) == []


@pytest.mark.parametrize("kind", ["Sort", "Incremental Sort"])
def test_sorts_are_problems_only_where_forbidden(kind: str) -> None:
    plan = node("Limit", node(kind, scan(rows=5000), rows=5000, **{"Sort Key": ["total"]}))
    assert find_problems(plan, large=LARGE, forbid_sort=True) == [
        f"{kind} on (total) that no index avoids"
    ]
    assert find_problems(plan, large=LARGE, forbid_sort=False) == []


def test_an_index_scan_is_fine() -> None:
    plan = node("Limit", scan(rows=5000), rows=50)
    assert find_problems(plan, large=LARGE, forbid_sort=True) == []


def test_a_name_registers_one_builder_only() -> None:
    def build() -> Any:
        return select(Order.id)

    def other() -> Any:
        return select(Order.id)

    plan_guard.hot_query("tests.only_once")(build)
    try:
        plan_guard.hot_query("tests.only_once")(build)  # re-registering the same one is fine
        with pytest.raises(ValueError, match="registered twice"):
            plan_guard.hot_query("tests.only_once")(other)
    finally:
        plan_guard._REGISTRY.pop("tests.only_once")
