"""Tasks that exist only for the proofs: a slow side effect to kill mid-way, a poison job, a
job that fails until its cause is fixed. Workers started by the tests load this module with
``--include``; the production tasks they exercise are the real ones."""

from __future__ import annotations

import asyncio
import os
import time
from uuid import UUID

from {{ cookiecutter.project_slug }}.models import IdempotencyKey, Notification
from {{ cookiecutter.project_slug }}.patterns.idempotency import claim
from {{ cookiecutter.project_slug }}.patterns.reliable_tasks import job
from {{ cookiecutter.project_slug }}.products.tasks import write_product_image
from {{ cookiecutter.project_slug }}.worker.context import WorkerContext


def deliveries_key(key: str) -> str:
    return f"proof:{key}:deliveries"


async def _record_delivery(ctx: WorkerContext, key: str) -> None:
    # Outside any transaction on purpose: every delivery is counted, even one that dies.
    await ctx.redis.rpush(deliveries_key(key), f"{os.getpid()}:{os.getppid()}")


@job("proof.side_effect")
async def side_effect(
    ctx: WorkerContext, *, key: str, hold_before_s: float = 0.0, hold_after_s: float = 0.0
) -> str:
    """Claim ``key`` and write one notification row; sleeps where the test wants to kill."""
    await _record_delivery(ctx, key)
    await asyncio.sleep(hold_before_s)
    async with ctx.transaction() as session:
        if not await claim(session, IdempotencyKey, key, task_name="proof.side_effect"):
            return "duplicate"
        session.add(
            Notification(
                channel="proof", recipient="proof", subject=key, body="", idempotency_key=key
            )
        )
    await asyncio.sleep(hold_after_s)  # committed, not yet acknowledged
    return "done"


@job("proof.poison")
async def poison(ctx: WorkerContext, *, key: str) -> None:
    """Always fails with a transient error: retried with backoff, then dead-lettered."""
    await ctx.redis.rpush(f"proof:{key}:attempts", repr(time.time()))
    raise ConnectionError(f"the upstream for {key} is down")


@job("proof.bad_input")
async def bad_input(ctx: WorkerContext, *, key: str) -> None:
    """Fails with a non-transient error: no retry, straight to the dead letters."""
    await ctx.redis.rpush(f"proof:{key}:attempts", "1")
    raise ValueError(f"{key} is not a valid report range")


@job("proof.needs_fix")
async def needs_fix(ctx: WorkerContext, *, key: str) -> str:
    """Fails until the test sets ``proof:{key}:fixed``, then does its side effect once."""
    await _record_delivery(ctx, key)
    if not await ctx.redis.exists(f"proof:{key}:fixed"):
        raise LookupError(f"the data {key} needs is missing")
    async with ctx.transaction() as session:
        if not await claim(session, IdempotencyKey, key, task_name="proof.needs_fix"):
            return "duplicate"
        session.add(
            Notification(
                channel="proof", recipient="proof", subject=key, body="", idempotency_key=key
            )
        )
    return "done"


@job("proof.overrun")
async def overrun(ctx: WorkerContext, *, key: str, seconds: float, blocking: bool) -> None:
    """Runs past the time limits: awaiting (the soft limit cancels it) or blocking the event
    loop (only the hard limit, a kill from the parent process, can stop it)."""
    await ctx.redis.rpush(f"proof:{key}:attempts", "1")
    if blocking:
        time.sleep(seconds)  # noqa: ASYNC251  # blocking on purpose: only the hard limit stops it
    else:
        await asyncio.sleep(seconds)


@job("proof.render_image_held")
async def render_image_held(
    ctx: WorkerContext, *, key: str, product_id: str, upload_id: str, etag: str, hold_s: float
) -> str:
    """The real thumbnail job (products/tasks.py), held on its first delivery where a kill -9
    hurts most: its renditions written to S3, nothing recorded yet."""
    await _record_delivery(ctx, key)
    first = int(await ctx.redis.llen(deliveries_key(key))) == 1

    async def hold() -> None:
        await ctx.redis.rpush(f"proof:{key}:held", "1")
        await asyncio.sleep(hold_s)

    return await write_product_image(
        ctx, UUID(product_id), UUID(upload_id), etag, before_record=hold if first else None
    )
