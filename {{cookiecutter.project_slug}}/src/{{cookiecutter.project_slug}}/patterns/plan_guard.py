"""Query-plan guard: fail a test when a hot query would scan a large table, or could only
return its page after sorting every matching row.

The failure it prevents: a query that is fast on a developer's 50-row database reads the whole
table in production (a missing or unusable index), or sorts every matching row before applying
``LIMIT`` (an index that filters but does not order). Both stay invisible until the table is
large, then turn into seconds per request.

Guarantees: :func:`check_plan` asks Postgres for two plans of a SQLAlchemy statement with
``EXPLAIN (FORMAT JSON)`` (nothing is executed, writes included): the *custom* plan for the
given parameter values, and the *generic* plan a prepared statement settles on after five runs
(asyncpg prepares and caches every statement, so production runs this one too; it cannot use a
partial index whose predicate depends on a parameter's value). It raises
:class:`QueryPlanError` when either plan

- has a ``Seq Scan`` over a table holding at least ``min_rows`` rows (``pg_class.reltuples``);
  scans of small tables pass, since there a sequential scan is the right plan;
- with ``forbid_sort=True`` (paginated queries), has a ``Sort`` or ``Incremental Sort`` that
  Postgres cannot avoid: the query is planned again with ``enable_sort = off``, and a sort that
  survives means no index delivers the rows in order. A sort the planner merely *prefers* (it
  collects a user's 40 remaining orders from the index and sorts them, rather than walk the
  index in order) passes: it is bounded by the index condition and an ordered path exists.

Register the statement builders of the hot paths with :func:`hot_query` where they are defined
(the repositories); a test then runs :func:`check_plan` on each :func:`registered` query against
a database seeded with enough rows, and ANALYZEd, for the planner to choose as it would in
production (a planner looking at a near-empty table rightly prefers a sequential scan, so the
guard means nothing on one).

What it does not catch: an index scan that reads most of an index, or a plan that only turns
bad under a different data distribution than the seed. It checks the plan's shape, not timings
(absolute timings belong to the benchmarks).

Needs: SQLAlchemy 2 (async) and Postgres.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from sqlalchemy import ClauseElement, Executable, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler

SORT_NODES = frozenset({"Sort", "Incremental Sort"})
DEFAULT_MIN_ROWS = 10_000

Builder = TypeVar("Builder", bound=Callable[..., Executable])
Connection = AsyncConnection | AsyncSession


@dataclass(frozen=True)
class HotQuery:
    """A statement builder on a hot path, and what its plan must not contain."""

    name: str
    build: Callable[..., Executable]
    # Paginated queries must be able to come out of an index already ordered: otherwise
    # every matching row is read and sorted before LIMIT applies.
    forbid_sort: bool


_REGISTRY: dict[str, HotQuery] = {}


def hot_query(name: str, *, forbid_sort: bool = False) -> Callable[[Builder], Builder]:
    """Register a statement builder so the plan-guard test checks it."""

    def register(build: Builder) -> Builder:
        if name in _REGISTRY and _REGISTRY[name].build is not build:
            raise ValueError(f"hot query {name!r} is registered twice")
        _REGISTRY[name] = HotQuery(name=name, build=build, forbid_sort=forbid_sort)
        return build

    return register


def registered() -> dict[str, HotQuery]:
    return dict(_REGISTRY)


class QueryPlanError(AssertionError):
    """The plan of a guarded query contains a node that will not scale."""

    def __init__(self, problems: list[str], plan: Mapping[str, Any]) -> None:
        self.problems = problems
        self.plan = plan
        outline = "\n".join(_outline(plan))
        super().__init__("; ".join(problems) + "\nplan:\n" + outline)


class _Explain(Executable, ClauseElement):
    """``EXPLAIN (FORMAT JSON) <statement>`` keeping the statement's bound parameters, so the
    planner sees real values (a literal-rendered copy would not survive UUIDs or JSONB)."""

    inherit_cache = False
    # Read by the compiler when the wrapped statement is an INSERT or UPDATE.
    _inline = False
    _return_defaults = False

    def __init__(self, statement: Executable, *, analyze: bool = False) -> None:
        self.statement = statement
        self.analyze = analyze


@compiles(_Explain, "postgresql")
def _compile_explain(element: _Explain, compiler: SQLCompiler, **kw: Any) -> str:
    options = "ANALYZE, BUFFERS, FORMAT JSON" if element.analyze else "FORMAT JSON"
    return f"EXPLAIN ({options}) " + compiler.process(element.statement, **kw)  # type: ignore[arg-type]


def _document(raw: Any) -> dict[str, Any]:
    parsed = orjson.loads(raw) if isinstance(raw, str | bytes) else raw
    document: dict[str, Any] = parsed[0]
    return document


async def _bind(connection: Connection) -> AsyncConnection:
    return await connection.connection() if isinstance(connection, AsyncSession) else connection


@asynccontextmanager
async def _setting(connection: Connection, name: str, value: str) -> AsyncIterator[None]:
    """Set a planner setting for the duration of the block, then restore the previous one."""
    bind = await _bind(connection)
    previous = (await bind.exec_driver_sql(f"SHOW {name}")).scalar_one()
    await bind.exec_driver_sql(f"SET {name} = {value}")
    try:
        yield
    finally:
        await bind.exec_driver_sql(f"SET {name} = {previous}")


async def explain(connection: Connection, statement: Executable) -> dict[str, Any]:
    """The root plan node of ``statement`` for its bound values (the custom plan)."""
    plan: dict[str, Any] = _document((await connection.execute(_Explain(statement))).scalar_one())[
        "Plan"
    ]
    return plan


async def explain_generic(connection: Connection, statement: Executable) -> dict[str, Any]:
    """The root plan node a prepared ``statement`` gets when planned without its values.

    Prepares the statement under a throwaway name, forces the generic plan for one EXPLAIN
    EXECUTE (the values passed are NULLs: a generic plan never looks at them), then restores
    the setting and deallocates.
    """
    bind = await _bind(connection)
    if not isinstance(statement, ClauseElement):
        raise TypeError(f"cannot compile {statement!r}")
    compiled = statement.compile(dialect=bind.dialect, compile_kwargs={"render_postcompile": True})
    assert isinstance(compiled, SQLCompiler)
    name = f"plan_guard_{secrets.token_hex(4)}"
    arguments = ", ".join(["NULL"] * len(compiled.positiontup or ()))
    execute = f"EXECUTE {name}({arguments})" if arguments else f"EXECUTE {name}"
    await bind.exec_driver_sql(f"PREPARE {name} AS {compiled}")
    try:
        async with _setting(bind, "plan_cache_mode", "force_generic_plan"):
            raw = (await bind.exec_driver_sql(f"EXPLAIN (FORMAT JSON) {execute}")).scalar_one()
    finally:
        await bind.exec_driver_sql(f"DEALLOCATE {name}")
    plan: dict[str, Any] = _document(raw)["Plan"]
    return plan


async def explain_analyze(connection: Connection, statement: Executable) -> dict[str, Any]:
    """``EXPLAIN (ANALYZE, BUFFERS)``: *runs* the statement and returns the whole document
    (``Plan`` with actual rows per node, ``Planning Time``, ``Execution Time`` in ms). For
    benchmarks and row-count assertions; roll back if the statement writes."""
    return _document((await connection.execute(_Explain(statement, analyze=True))).scalar_one())


async def large_tables(connection: Connection, min_rows: int = DEFAULT_MIN_ROWS) -> frozenset[str]:
    """Tables the planner believes hold at least ``min_rows`` rows (as of the last ANALYZE)."""
    result = await connection.execute(
        text(
            "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND reltuples >= :min_rows"
            " AND relnamespace = 'public'::regnamespace"
        ),
        {"min_rows": min_rows},
    )
    return frozenset(result.scalars())


def find_problems(
    plan: Mapping[str, Any], *, large: frozenset[str], forbid_sort: bool
) -> list[str]:
    """Every node of ``plan`` that breaks the rules, described in one line each: a Seq Scan of
    a table in ``large``; with ``forbid_sort``, any sort node."""
    problems = []
    for node in walk(plan):
        kind = node.get("Node Type")
        relation = node.get("Relation Name")
        if kind == "Seq Scan" and relation in large:
            problems.append(f"Seq Scan on large table {relation}")
        if forbid_sort and kind in SORT_NODES:
            keys = ", ".join(node.get("Sort Key", []))
            problems.append(f"{kind} on ({keys}) that no index avoids")
    return problems


async def check_plan(
    connection: Connection,
    statement: Executable,
    *,
    forbid_sort: bool = False,
    min_rows: int = DEFAULT_MIN_ROWS,
) -> dict[str, dict[str, Any]]:
    """Raise :class:`QueryPlanError` when the custom or the generic plan breaks the rules;
    return both plans (``{"custom": ..., "generic": ...}``) if neither does."""
    large = await large_tables(connection, min_rows)
    planners = {"custom": explain, "generic": explain_generic}
    plans = {}
    for kind, plan_of in planners.items():
        plan = await plan_of(connection, statement)
        problems = find_problems(plan, large=large, forbid_sort=False)
        if forbid_sort and any(node.get("Node Type") in SORT_NODES for node in walk(plan)):
            # The planner chose to sort. Fine if an index could deliver the order (it judged
            # sorting a few rows cheaper); a problem if even sort-averse planning must sort.
            async with _setting(connection, "enable_sort", "off"):
                ordered = await plan_of(connection, statement)
            unavoidable = find_problems(ordered, large=frozenset(), forbid_sort=True)
            if unavoidable:
                problems, plan = problems + unavoidable, ordered
        if problems:
            raise QueryPlanError([f"{kind} plan: {problem}" for problem in problems], plan)
        plans[kind] = plan
    return plans


def walk(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from walk(child)


def _outline(node: Mapping[str, Any], depth: int = 0) -> Iterator[str]:
    label = node.get("Node Type", "?")
    if node.get("Scan Direction") == "Backward":
        label += " Backward"
    if "Index Name" in node:
        label += f" using {node['Index Name']}"
    if "Relation Name" in node:
        label += f" on {node['Relation Name']}"
    yield "  " * depth + f"-> {label} (rows={node.get('Plan Rows')})"
    for child in node.get("Plans", []):
        yield from _outline(child, depth + 1)
