"""The queue under load, on real brokers with real worker processes (two, prefork).

Every proof runs once per broker (Redis and RabbitMQ, see tests/worker_harness.py) and counts
side effects in Postgres: what happened, how often, never how fast.
"""

from __future__ import annotations

import itertools
import secrets
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from httpx import AsyncClient
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.worker.helpers import eventually, finished, rows, scalar
from tests.worker.proof_tasks import deliveries_key
from tests.worker_harness import CeleryProcess, JobStack, metric_value

pytestmark = pytest.mark.load

RETRIES = 3  # JOB_MAX_RETRIES in the proof environment
BACKOFF_BASE = 0.25  # JOB_RETRY_BACKOFF_SECONDS


@pytest.fixture(scope="module")
def workers(job_stack: JobStack) -> list[CeleryProcess]:
    return job_stack.start_workers(2)


def deliveries(workers: list[CeleryProcess], task: str) -> dict[str, float]:
    texts = [worker.metrics() for worker in workers]
    return {
        outcome: sum(
            metric_value(t, "celery_tasks_total", task=task, outcome=outcome) for t in texts
        )
        for outcome in ("succeeded", "duplicate", "retried", "failed")
    }


async def test_a_thousand_concurrent_jobs_each_take_effect_exactly_once(
    job_stack: JobStack, workers: list[CeleryProcess], jobs_engine: AsyncEngine
) -> None:
    tag = secrets.token_hex(4)
    keys = [f"bulk-{tag}-{i}" for i in range(1000)]
    # Every fifth job is sent twice, as a retried publish or a double click would.
    messages = keys + keys[::5]
    before = deliveries(workers, "notifications.send")

    def send(key: str) -> None:
        job_stack.send(
            "notifications.send", key=key, recipient="bulk@example.com", subject=key, body="."
        )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(send, messages))

    def processed() -> dict[str, float]:
        after = deliveries(workers, "notifications.send")
        return {outcome: after[outcome] - before[outcome] for outcome in after}

    async def all_processed() -> bool:
        done = processed()
        return done["succeeded"] + done["duplicate"] >= len(messages)

    seconds = await eventually(all_processed, within=120, what="1,200 deliveries")
    effects = await scalar(
        jobs_engine,
        "SELECT count(*) FROM notifications WHERE idempotency_key LIKE :prefix",
        prefix=f"bulk-{tag}-%",
    )
    doubled = await rows(
        jobs_engine,
        "SELECT idempotency_key FROM notifications WHERE idempotency_key LIKE :prefix "
        "GROUP BY idempotency_key HAVING count(*) > 1",
        prefix=f"bulk-{tag}-%",
    )
    done = processed()
    per_worker = [
        metric_value(w.metrics(), "celery_tasks_total", task="notifications.send") for w in workers
    ]
    print(  # noqa: T201  # the figure the docs quote (pytest -s)
        f"\n[{job_stack.broker}] {len(messages)} messages / {len(keys)} keys in {seconds:.1f}s: "
        f"{effects} effects, {len(doubled)} doubled, {done['duplicate']:.0f} duplicates "
        f"skipped, per worker {per_worker}"
    )
    assert effects == len(keys)
    assert doubled == []
    assert done["succeeded"] == len(keys)
    assert done["duplicate"] == len(messages) - len(keys)
    assert done["failed"] == 0
    # Both worker processes took their share.
    assert all(count > 0 for count in per_worker)


@pytest.mark.parametrize("moment", ["before_commit", "after_commit"])
async def test_a_worker_killed_mid_task_is_redelivered_to_the_other_and_takes_effect_once(
    job_stack: JobStack, workers: list[CeleryProcess], jobs_engine: AsyncEngine, moment: str
) -> None:
    key = f"kill-{moment}-{secrets.token_hex(4)}"
    hold = {"hold_before_s": 2.0} if moment == "before_commit" else {"hold_after_s": 2.0}
    task_id = job_stack.send("proof.side_effect", key=key, **hold)
    redis = job_stack.redis()

    async def delivered(times: int) -> bool:
        return int(redis.llen(deliveries_key(key))) >= times

    async def effect_committed() -> bool:
        count = await scalar(
            jobs_engine, "SELECT count(*) FROM idempotency_keys WHERE key = :key", key=key
        )
        return int(count) == 1

    await eventually(lambda: delivered(1), within=30, what="the first delivery")
    if moment == "after_commit":
        await eventually(effect_committed, within=30, what="the first delivery's commit")
    first_parent = int(str(redis.lindex(deliveries_key(key), 0)).split(":")[1])
    victim = next(w for w in workers if w.pid == first_parent)
    survivor = next(w for w in workers if w is not victim)

    victim.kill_hard()  # kill -9, parent and child, mid-task
    redelivered_in = await eventually(
        lambda: delivered(2), within=60, what="the redelivery of the killed task"
    )
    survivor.wait_for(
        lambda e: e.get("event") == "task.finished" and e.get("task_id") == task_id, timeout=30
    )

    second_parent = int(str(redis.lindex(deliveries_key(key), 1)).split(":")[1])
    effects = await scalar(
        jobs_engine, "SELECT count(*) FROM notifications WHERE idempotency_key = :key", key=key
    )
    outcome = next(
        e["outcome"]
        for e in survivor.events()
        if e.get("event") == "task.finished" and e.get("task_id") == task_id
    )
    print(  # noqa: T201
        f"\n[{job_stack.broker}] killed {moment}: redelivered after {redelivered_in:.1f}s, "
        f"deliveries={redis.llen(deliveries_key(key))}, effects={effects}, outcome={outcome}"
    )
    assert second_parent == survivor.pid
    assert redis.llen(deliveries_key(key)) == 2
    assert effects == 1
    # Killed before its commit, the redelivery does the work; after it, the claim says done.
    assert outcome == ("succeeded" if moment == "before_commit" else "duplicate")

    # Put a worker back for the proofs that follow.
    replacement = job_stack.start_worker(f"{victim.name}r")
    replacement.wait_for(lambda e: str(e.get("event", "")).endswith(" ready."), timeout=60)
    workers[workers.index(victim)] = replacement


async def test_a_poison_job_is_retried_with_backoff_then_dead_lettered_while_others_flow(
    job_stack: JobStack, workers: list[CeleryProcess], jobs_engine: AsyncEngine
) -> None:
    tag = secrets.token_hex(4)
    key = f"poison-{tag}"
    poison_id = job_stack.send("proof.poison", key=key)
    flow = [f"flow-{tag}-{i}" for i in range(100)]
    for flow_key in flow:
        job_stack.send(
            "notifications.send", key=flow_key, recipient="x@example.com", subject="s", body="."
        )

    async def dead_lettered() -> bool:
        found = await scalar(
            jobs_engine, "SELECT count(*) FROM dead_letters WHERE task_id = :id", id=poison_id
        )
        return int(found) == 1

    await eventually(dead_lettered, within=60, what="the poison job's dead letter")
    dead = (
        await rows(
            jobs_engine,
            "SELECT task_name, kwargs, attempts, error_type, error FROM dead_letters "
            "WHERE task_id = :id",
            id=poison_id,
        )
    )[0]
    attempts = [float(t) for t in job_stack.redis().lrange(f"proof:{key}:attempts", 0, -1)]
    gaps = [later - earlier for earlier, later in itertools.pairwise(attempts)]
    print(f"\n[{job_stack.broker}] poison attempts={len(attempts)} gaps={gaps}")  # noqa: T201

    assert dead.task_name == "proof.poison"
    assert dead.kwargs == {"key": key}
    assert dead.attempts == RETRIES + 1 == len(attempts)
    assert dead.error_type == "ConnectionError"
    # Equal jitter: retry n is scheduled between half and all of base * 2**n, so the delays
    # grow; and each attempt really waited that long (longer when the queue was busy: a
    # retry queues behind the jobs sent meanwhile).
    retried = sorted(
        (
            event
            for worker in workers
            for event in worker.events()
            if event.get("event") == "task.retrying" and event.get("task_id") == poison_id
        ),
        key=lambda event: str(event["timestamp"]),
    )
    countdowns = [float(event["countdown_s"]) for event in retried]
    assert len(countdowns) == RETRIES
    for n, countdown in enumerate(countdowns):
        nominal = BACKOFF_BASE * 2**n
        assert nominal / 2 <= countdown <= nominal, (n, countdown)
    for gap, countdown in zip(gaps, countdowns, strict=True):
        assert gap >= countdown - 0.05, (gap, countdown)

    # Meanwhile the other jobs flowed: all done, some of them between the poison's attempts.
    async def flowed() -> bool:
        count = await scalar(
            jobs_engine,
            "SELECT count(*) FROM notifications WHERE idempotency_key LIKE :p",
            p=f"flow-{tag}-%",
        )
        return int(count) == len(flow)

    await eventually(flowed, within=60, what="the other jobs")
    between = await scalar(
        jobs_engine,
        "SELECT count(*) FROM notifications WHERE idempotency_key LIKE :p "
        "AND created_at > to_timestamp(:first) AND created_at < to_timestamp(:last)",
        p=f"flow-{tag}-%",
        first=attempts[0],
        last=attempts[-1],
    )
    assert between > 0


async def test_bad_input_is_dead_lettered_at_once_without_retries(
    job_stack: JobStack, workers: list[CeleryProcess], jobs_engine: AsyncEngine
) -> None:
    key = f"bad-{secrets.token_hex(4)}"
    task_id = job_stack.send("proof.bad_input", key=key)

    async def dead_lettered() -> bool:
        found = await scalar(
            jobs_engine, "SELECT count(*) FROM dead_letters WHERE task_id = :id", id=task_id
        )
        return int(found) == 1

    await eventually(dead_lettered, within=30, what="the dead letter")
    attempts = await scalar(
        jobs_engine, "SELECT attempts FROM dead_letters WHERE task_id = :id", id=task_id
    )
    assert attempts == 1
    assert job_stack.redis().llen(f"proof:{key}:attempts") == 1


@pytest.mark.parametrize(
    ("blocking", "error_type"),
    [(False, "SoftTimeLimitExceeded"), (True, "TimeLimitExceeded")],
)
async def test_a_job_over_its_time_limit_is_stopped_and_dead_lettered(
    job_stack: JobStack,
    workers: list[CeleryProcess],
    jobs_engine: AsyncEngine,
    blocking: bool,
    error_type: str,
) -> None:
    key = f"overrun-{secrets.token_hex(4)}"
    # 10 s against limits of 4 s (soft, inside the job) and 5 s (hard, the parent kills it).
    task_id = job_stack.send("proof.overrun", key=key, seconds=10.0, blocking=blocking)

    async def dead_lettered() -> bool:
        found = await scalar(
            jobs_engine, "SELECT count(*) FROM dead_letters WHERE task_id = :id", id=task_id
        )
        return int(found) == 1

    took = await eventually(dead_lettered, within=30, what="the overrun's dead letter")
    found = await scalar(
        jobs_engine, "SELECT error_type FROM dead_letters WHERE task_id = :id", id=task_id
    )
    print(f"\n[{job_stack.broker}] {error_type} dead-lettered after {took:.1f}s")  # noqa: T201
    # The limit's own error: it was stopped by its limit, not by finishing its 10 s.
    assert found == error_type
    # The workers carry on: a job sent after it runs to the end. Then: not retried and not
    # redelivered, one attempt (a count at a point the queue has moved past, not a sleep).
    marker = job_stack.send(
        "notifications.send",
        key=f"after-{key}",
        recipient="m@x.io",
        subject="s",
        body=".",
    )

    async def marker_done() -> bool:
        return any(e.get("task_id") == marker for e in finished(workers, "notifications.send"))

    await eventually(marker_done, within=30, what="a job sent after the overrun")
    assert job_stack.redis().llen(f"proof:{key}:attempts") == 1


async def staff_token(client: AsyncClient, engine: AsyncEngine) -> str:
    email = f"admin-{secrets.token_hex(4)}@example.com"
    password = "correct horse battery staple"
    response = await client.post("/auth/register", json={"email": email, "password": password})
    assert response.status_code == 202, response.text
    async with engine.begin() as connection:
        await connection.execute(
            text("UPDATE users SET is_staff = true WHERE email = :email"), {"email": email}
        )
    response = await client.post("/auth/login", json={"email": email, "password": password})
    token: str = response.json()["access_token"]
    return token


async def test_an_admin_requeues_a_fixed_dead_letter_once_and_the_request_id_follows_it(
    job_stack: JobStack,
    workers: list[CeleryProcess],
    jobs_engine: AsyncEngine,
    live_client: AsyncClient,
) -> None:
    key = f"fixme-{secrets.token_hex(4)}"
    failed_id = job_stack.send("proof.needs_fix", key=key)

    async def dead_lettered() -> bool:
        found = await scalar(
            jobs_engine, "SELECT count(*) FROM dead_letters WHERE task_id = :id", id=failed_id
        )
        return int(found) == 1

    await eventually(dead_lettered, within=30, what="the dead letter")
    headers = {"Authorization": f"Bearer {await staff_token(live_client, jobs_engine)}"}
    listed = (await live_client.get("/admin/dead-letters", headers=headers)).json()
    dead = next(item for item in listed if item["task_id"] == failed_id)
    assert dead["error_type"] == "LookupError"
    assert dead["arguments"] == {"key": key}

    job_stack.redis().set(f"proof:{key}:fixed", "1")  # the operator fixed the cause
    request_id = f"req-{secrets.token_hex(6)}"
    requeue = f"/admin/dead-letters/{dead['id']}/requeue"
    response = await live_client.post(requeue, headers={**headers, "X-Request-ID": request_id})
    assert response.status_code == 202, response.text
    new_task_id = response.json()["task_id"]
    # A second click does nothing: the dead letter is already re-enqueued.
    again = await live_client.post(requeue, headers=headers)
    assert again.status_code == 409

    async def took_effect() -> bool:
        count = await scalar(
            jobs_engine, "SELECT count(*) FROM notifications WHERE idempotency_key = :k", k=key
        )
        return int(count) == 1

    await eventually(took_effect, within=30, what="the requeued job's effect")

    def lines_of_new_task() -> list[dict[str, Any]]:
        return [
            event
            for worker in workers
            for event in worker.events()
            if event.get("task_id") == new_task_id
        ]

    async def logged_finish() -> bool:
        return any(line.get("event") == "task.finished" for line in lines_of_new_task())

    await eventually(logged_finish, within=30, what="the requeued job's task.finished line")
    lines = lines_of_new_task()
    # Every line the job logged carries the id of the request that enqueued it.
    assert {line.get("request_id") for line in lines} == {request_id}
    pending = (await live_client.get("/admin/dead-letters", headers=headers)).json()
    assert failed_id not in {item["task_id"] for item in pending}


async def test_worker_metrics_expose_outcomes_durations_and_queue_depth(
    job_stack: JobStack, workers: list[CeleryProcess]
) -> None:
    job_stack.send(
        "notifications.send",
        key=f"m-{secrets.token_hex(4)}",
        recipient="m@x.io",
        subject="s",
        body=".",
    )

    def scraped() -> str:
        return "\n".join(worker.metrics() for worker in workers)

    async def counted() -> bool:
        return (
            metric_value(
                scraped(), "celery_task_queue_wait_seconds_count", task="notifications.send"
            )
            >= 1
        )

    # Polled with a deadline: the sample lands when the job finishes, whenever that is.
    await eventually(counted, within=30, what="the job's samples on /metrics")
    text_ = scraped()
    assert metric_value(text_, "celery_tasks_total", task="notifications.send") >= 1
    assert metric_value(text_, "celery_task_duration_seconds_count", task="notifications.send") >= 1
    # The bill: the CPU the runs burnt, not only the time they took.
    assert metric_value(text_, "celery_task_cpu_seconds_total", task="notifications.send") > 0
    assert (
        metric_value(text_, "celery_task_queue_wait_seconds_count", task="notifications.send") >= 1
    )
    assert "celery_queue_depth" + '{queue="' + job_stack.queue + '"}' in text_
