"""Do a job's side effect once, however many times the job is delivered.

The failure it prevents: a queue with late acknowledgement delivers *at least* once. A worker
killed after the side effect but before the ack, a retry after a timeout that had in fact
succeeded, or a job enqueued twice would each repeat the effect (two emails, two refunds).

Guarantees: :func:`claim` inserts the key with ``INSERT ... ON CONFLICT DO NOTHING`` in the
caller's transaction and says whether this caller won it. Do the side effect in the *same*
transaction and commit both together: if the job dies before the commit, the claim rolls back
with the effect and the redelivery does it; if it committed, every later delivery finds the
key and skips. Two deliveries running at once serialise on the unique index (the second
waits for the first's commit or rollback), so there is no read-then-write race.

Needs: SQLAlchemy on PostgreSQL, and a model with a unique (or primary key) ``key`` column;
extra columns are filled from ``values``. Side effects outside the database (an HTTP call)
cannot share the transaction: make them idempotent at the receiver (pass the key along), or
write them to an outbox table here and let a relay send them.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession


async def claim(session: AsyncSession, model: type[Any], key: str, **values: Any) -> bool:
    """Claim ``key`` in ``model``'s table inside the current transaction.

    Returns False when the key was already claimed (by a committed transaction, or by a
    concurrent one that then commits: the insert waits for it).
    """
    statement = (
        insert(model)
        .values(key=key, **values)
        .on_conflict_do_nothing(index_elements=["key"])
        .returning(model.key)
    )
    result = await session.execute(statement)
    return result.scalar_one_or_none() is not None
