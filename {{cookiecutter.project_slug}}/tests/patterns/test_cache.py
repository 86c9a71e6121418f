"""The application cache against real Redis and a real Postgres table.

Every "load" below is a real ``SELECT`` on Postgres, counted by an engine event: the proofs
count database statements, not calls the cache says it made.
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from redis.asyncio import Connection, Redis
from sqlalchemy import event, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from devstack.servers import RunningServer, start_redis

from {{ cookiecutter.project_slug }}.patterns.cache import (
    Cache,
    CacheMetrics,
    CacheRegion,
    CircuitBreaker,
    cache_redis_client,
    etag_of,
)
from {{ cookiecutter.project_slug }}.patterns.on_commit import on_commit, run_after_commit
from tests.conftest import drop_database, recreate_database, run_database_name


class Item(BaseModel):
    id: int
    name: str
    version: int


ITEMS = CacheRegion("item", Item, ttl=60, stale_ttl=60, negative_ttl=0.5)


@dataclass
class ItemTable:
    """A real table in a database of its own, and a count of the SELECTs that read it."""

    engine: AsyncEngine
    loads: int = 0
    statements: list[str] = field(default_factory=list)

    async def load(self, item_id: int, *, delay: float = 0.0) -> Item | None:
        async with self.engine.connect() as connection:
            row = (
                await connection.execute(
                    text(
                        "SELECT id, name, version, pg_sleep(:delay) "
                        "FROM cache_proof_items WHERE id = :id"
                    ),
                    {"id": item_id, "delay": delay},
                )
            ).first()
        return Item(id=row.id, name=row.name, version=row.version) if row else None

    def loader(self, item_id: int, *, delay: float = 0.0) -> Callable[[], Awaitable[Item | None]]:
        return lambda: self.load(item_id, delay=delay)

    async def read(
        self,
        cache: Cache,
        item_id: int,
        *,
        region: CacheRegion[Item] = ITEMS,
        delay: float = 0.0,
    ) -> Item | None:
        """What an endpoint does: the item through the cache, loaded from this table."""
        return await cache.get_or_load(region, str(item_id), self.loader(item_id, delay=delay))

    async def put(self, item_id: int, name: str, version: int = 1) -> None:
        async with self.engine.begin() as connection:
            await connection.execute(
                text(
                    "INSERT INTO cache_proof_items (id, name, version) VALUES (:id, :name, :v) "
                    "ON CONFLICT (id) DO UPDATE SET name = :name, version = :v"
                ),
                {"id": item_id, "name": name, "v": version},
            )


@pytest.fixture(scope="module")
async def item_engine(worker_id: str) -> AsyncIterator[AsyncEngine]:
    name = run_database_name("cacheproof", worker_id)
    url = await recreate_database(name)
    engine = create_async_engine(url, pool_size=10, max_overflow=5)
    async with engine.begin() as connection:
        await connection.execute(
            text("CREATE TABLE cache_proof_items (id int PRIMARY KEY, name text, version int)")
        )
    yield engine
    await engine.dispose()
    await drop_database(name)


@pytest.fixture
async def items(item_engine: AsyncEngine) -> AsyncIterator[ItemTable]:
    table = ItemTable(item_engine)

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "FROM cache_proof_items" in statement:
            table.loads += 1

    event.listen(item_engine.sync_engine, "before_cursor_execute", count)
    async with item_engine.begin() as connection:
        await connection.execute(text("TRUNCATE cache_proof_items"))
    yield table
    event.remove(item_engine.sync_engine, "before_cursor_execute", count)


@dataclass
class Clock:
    """The cache's wall clock, moved by the test: a TTL passes without waiting for it."""

    now: float = field(default_factory=time.time)

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def expired(redis_url: str, key: str, within: float = 10.0) -> None:
    """Poll until Redis itself has expired ``key`` (its PX), failing after ``within`` s."""
    redis = Redis.from_url(redis_url)
    try:
        deadline = time.monotonic() + within
        while await redis.exists(key):
            assert time.monotonic() < deadline, f"{key} did not expire within {within}s"
            await asyncio.sleep(0.02)
    finally:
        await redis.aclose()


@dataclass
class Instances:
    """Cache objects as separate API instances would hold them: own client, own metrics."""

    url: str
    prefix: str = field(default_factory=lambda: f"test:{secrets.token_hex(4)}")
    made: list[Cache] = field(default_factory=list)

    def new(self, **options: Any) -> Cache:
        # Generous: these proofs count loads, and on two cores shared with xdist (and whatever
        # else runs) event-loop lag alone can pass a second. The fail-open proofs set their own.
        options.setdefault("timeout", 5.0)
        cache = Cache(
            cache_redis_client(self.url, timeout=options["timeout"]),
            prefix=self.prefix,
            metrics=CacheMetrics(CollectorRegistry()),
            **options,
        )
        self.made.append(cache)
        return cache


@pytest.fixture
async def instances(redis_url: str) -> AsyncIterator[Instances]:
    made = Instances(redis_url)
    yield made
    for cache in made.made:
        await cache.aclose()
    redis = Redis.from_url(redis_url)
    async for key in redis.scan_iter(match=f"{made.prefix}:*"):
        await redis.delete(key)
    await redis.aclose()


def outcomes(*caches: Cache, region: str = "item") -> dict[str, float]:
    totals: dict[str, float] = {}
    for cache in caches:
        for metric in cache.metrics.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total") and sample.labels["region"] == region:
                    outcome = sample.labels["outcome"]
                    totals[outcome] = totals.get(outcome, 0) + sample.value
    return totals


def errors(*caches: Cache) -> float:
    total = 0.0
    for cache in caches:
        for metric in cache.metrics.errors.collect():
            total += sum(s.value for s in metric.samples if s.name.endswith("_total"))
    return total


async def test_a_value_is_loaded_once_then_served_from_redis(
    items: ItemTable, instances: Instances
) -> None:
    await items.put(1, "lamp")
    cache = instances.new()
    first = await cache.get_or_load(ITEMS, "1", items.loader(1))
    second = await cache.get_or_load(ITEMS, "1", items.loader(1))
    assert first == second == Item(id=1, name="lamp", version=1)
    assert items.loads == 1
    assert outcomes(cache) == {"miss": 1, "hit": 1}


async def test_values_are_stored_as_compact_json_under_a_versioned_key(
    items: ItemTable, instances: Instances, redis_url: str
) -> None:
    await items.put(1, "lamp")
    cache = instances.new()
    await cache.get_or_load(ITEMS, "1", items.loader(1))
    key = cache.key(ITEMS, "1")
    assert key == f"{instances.prefix}:item:{ITEMS.fingerprint}:" + "{1}"
    redis = Redis.from_url(redis_url)
    body = await redis.hget(key, "b")
    etag = await redis.hget(key, "e")
    await redis.aclose()
    assert body == b'{"id":1,"name":"lamp","version":1}'
    assert isinstance(etag, bytes)
    assert etag.decode() == etag_of(body)  # computed once, when stored


async def test_not_found_is_remembered_for_the_short_negative_ttl(
    items: ItemTable, instances: Instances, redis_url: str
) -> None:
    cache = instances.new(jitter=0)
    assert await cache.get_or_load(ITEMS, "404", items.loader(404)) is None
    assert await cache.get_or_load(ITEMS, "404", items.loader(404)) is None
    assert items.loads == 1  # the second "not found" came from Redis

    await items.put(404, "created later")
    # The not-found entry lives exactly its negative TTL in Redis: wait for Redis to drop it.
    await expired(redis_url, cache.key(ITEMS, "404"))
    found = await cache.get_or_load(ITEMS, "404", items.loader(404))
    assert found is not None
    assert found.name == "created later"
    assert items.loads == 2


async def test_ttls_carry_downward_jitter(
    items: ItemTable, instances: Instances, redis_url: str
) -> None:
    region = CacheRegion("jittered", Item, ttl=100, stale_ttl=0)
    cache = instances.new(jitter=0.2)
    started = time.monotonic()
    for item_id in range(40):
        await items.put(item_id, f"item {item_id}")
        await cache.get_or_load(region, str(item_id), items.loader(item_id))
    redis = Redis.from_url(redis_url)
    ttls = [await redis.pttl(cache.key(region, str(item_id))) for item_id in range(40)]
    await redis.aclose()
    # Lower bound: 80% of the TTL, less the time this test itself took (a loaded machine).
    elapsed_ms = (time.monotonic() - started) * 1000
    assert all(80_000 - elapsed_ms - 100 <= ttl <= 100_000 for ttl in ttls)
    assert max(ttls) - min(ttls) > 5_000  # spread out, not all expiring in the same second


async def test_a_changed_schema_reads_new_keys_never_the_old_shape(
    items: ItemTable, instances: Instances
) -> None:
    class ItemV2(BaseModel):
        id: int
        name: str
        version: int
        slug: str  # a new required field: an old entry would not validate

    region_v2 = CacheRegion("item", ItemV2, ttl=60)
    assert region_v2.fingerprint != ITEMS.fingerprint

    await items.put(7, "chair")
    cache = instances.new()
    await cache.get_or_load(ITEMS, "7", items.loader(7))

    async def load_v2() -> ItemV2:
        item = await items.load(7)
        assert item is not None
        return ItemV2(**item.model_dump(), slug="chair")

    assert (await cache.get_or_load(region_v2, "7", load_v2)).slug == "chair"  # type: ignore[union-attr]
    assert items.loads == 2  # the new shape was loaded, not decoded from the old entry


async def test_an_undecodable_entry_is_a_miss_not_an_error(
    items: ItemTable, instances: Instances, redis_url: str
) -> None:
    await items.put(8, "desk")
    cache = instances.new()
    redis = Redis.from_url(redis_url)
    # Same key, a foreign body (a bug, or a hand-edit): its ETag does not match it.
    fresh_until = int((time.time() + 60) * 1000)
    foreign = {"g": "", "f": fresh_until, "e": '"not-this-body"', "b": b'{"unexpected": true}'}
    await redis.hset(cache.key(ITEMS, "8"), mapping=foreign)  # type: ignore[arg-type]
    await redis.aclose()
    assert await cache.get_or_load(ITEMS, "8", items.loader(8)) == Item(
        id=8, name="desk", version=1
    )
    assert items.loads == 1
    assert errors(cache) > 0  # counted as a decode error, and replaced by a good entry:
    assert await cache.get_or_load(ITEMS, "8", items.loader(8)) is not None
    assert items.loads == 1


class CountingConnection(Connection):
    """A Redis connection that counts what it sends: one send is one round trip (a pipeline
    or a script call is one too)."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        type(self).sent += 1
        await super().send_packed_command(command, check_health)


def counting(cache: Cache) -> type[CountingConnection]:
    cache.redis.connection_pool.connection_class = CountingConnection
    CountingConnection.sent = 0
    return CountingConnection


@pytest.mark.parametrize("scope", [None, "user-1"])
async def test_a_hit_is_one_redis_round_trip_and_a_miss_two(
    items: ItemTable, instances: Instances, scope: str | None
) -> None:
    await items.put(21, "lamp")
    await items.put(22, "desk")
    cache = instances.new()
    sent = counting(cache)
    # Warm-up: the connection, and the scripts loaded (a first call may need a SCRIPT LOAD).
    await cache.get_or_load_json(ITEMS, "22", items.loader(22), scope=scope)

    sent.sent = 0
    miss = await cache.get_or_load_json(ITEMS, "21", items.loader(21), scope=scope)
    assert sent.sent == 2  # read + lease in one script, then the store
    assert miss is not None
    assert miss.body == b'{"id":21,"name":"lamp","version":1}'
    assert miss.etag == etag_of(miss.body)

    sent.sent = 0
    hit = await cache.get_or_load_json(ITEMS, "21", items.loader(21), scope=scope)
    assert sent.sent == 1  # generation and entry read together
    assert hit == miss  # the stored bytes and the ETag computed when they were stored
    assert items.loads == 2
    assert outcomes(cache) == {"miss": 2, "hit": 1}


async def test_a_scope_moved_on_is_a_miss_in_two_round_trips_and_never_the_old_value(
    items: ItemTable, instances: Instances
) -> None:
    await items.put(23, "before")
    cache = instances.new()
    sent = counting(cache)
    await cache.get_or_load(ITEMS, "23", items.loader(23), scope="user-2")
    await items.put(23, "after", version=2)
    await cache.invalidate_scope("user-2")

    sent.sent = 0
    reread = await cache.get_or_load(ITEMS, "23", items.loader(23), scope="user-2")
    assert reread is not None
    assert reread.name == "after"
    assert sent.sent == 2
    assert items.loads == 2


@pytest.mark.load
async def test_cold_key_under_500_concurrent_readers_on_two_instances_loads_once(
    items: ItemTable, instances: Instances
) -> None:
    await items.put(42, "hot lamp")
    first, second = instances.new(), instances.new()
    readers = [first, second] * 250
    random.shuffle(readers)

    # The query takes 50 ms: plenty of time for all 500 readers to miss at once.
    results = await asyncio.gather(*(items.read(cache, 42, delay=0.05) for cache in readers))

    assert items.loads == 1
    assert all(result == Item(id=42, name="hot lamp", version=1) for result in results)
    assert errors(first, second) == 0
    seen = outcomes(first, second)
    assert seen["miss"] == 1
    assert seen["miss"] + seen.get("coalesced", 0) + seen.get("hit", 0) == 500


@pytest.mark.load
async def test_a_hot_key_is_served_from_redis_at_least_99_percent_of_the_time(
    items: ItemTable, instances: Instances
) -> None:
    await items.put(5, "bestseller")
    first, second = instances.new(), instances.new()
    served = 0

    async def reader(cache: Cache) -> None:
        nonlocal served
        for _ in range(100):
            assert await cache.get_or_load(ITEMS, "5", items.loader(5)) is not None
            served += 1

    await asyncio.gather(*(reader(cache) for cache in [first, second] * 25))

    seen = outcomes(first, second)
    assert served == 5000
    assert items.loads == 1
    assert seen["hit"] / served >= 0.99


@pytest.mark.load
async def test_an_expired_hot_key_is_served_stale_while_one_caller_reloads(
    items: ItemTable, instances: Instances
) -> None:
    region = CacheRegion("swr", Item, ttl=0.3, stale_ttl=60)
    await items.put(3, "old name")
    clock = Clock()
    first, second = instances.new(jitter=0, clock=clock), instances.new(jitter=0, clock=clock)
    await first.get_or_load(region, "3", items.loader(3))
    await items.put(3, "new name", version=2)
    clock.advance(0.4)  # past the fresh TTL, inside the stale window

    # The reload waits until every other caller has its answer: "at once" is then an order of
    # events, not a race against a 0.3 s query on a machine that may stall longer than that.
    everyone_else_served = asyncio.Event()

    async def reload_after_the_others() -> Item | None:
        await everyone_else_served.wait()
        return await items.load(3)

    async def read(cache: Cache) -> Item | None:
        return await cache.get_or_load(region, "3", reload_after_the_others)

    reads = [asyncio.create_task(read(cache)) for cache in [first, second] * 100]
    deadline = asyncio.get_running_loop().time() + 30
    while (answered := sum(read.done() for read in reads)) < 199:
        assert asyncio.get_running_loop().time() < deadline, (
            f"{answered} of 200 callers answered while one reloads; 199 should not wait"
        )
        await asyncio.sleep(0.01)
    everyone_else_served.set()
    results = await asyncio.gather(*reads)

    assert items.loads == 2  # the first fill and one reload, not 200
    names = [result.name for result in results if result]
    assert names.count("new name") == 1  # the caller holding the lease reloaded inline
    assert names.count("old name") == 199  # everyone else got the stale value at once
    assert outcomes(first, second, region="swr").get("stale") == 199
    after = await second.get_or_load(region, "3", items.loader(3))
    assert after is not None
    assert after.name == "new name"
    assert items.loads == 2


async def test_the_stale_value_is_served_when_the_reload_fails(
    items: ItemTable, instances: Instances
) -> None:
    region = CacheRegion("stale-if-error", Item, ttl=0.2, stale_ttl=60)
    await items.put(4, "still here")
    clock = Clock()
    cache = instances.new(jitter=0, clock=clock)
    await cache.get_or_load(region, "4", items.loader(4))
    clock.advance(0.3)  # past the fresh TTL, inside the stale window

    async def database_down() -> Item | None:
        raise ConnectionRefusedError("database is down")

    served = await cache.get_or_load(region, "4", database_down)
    assert served is not None
    assert served.name == "still here"


async def test_an_invalidation_during_a_load_stops_its_result_from_being_cached(
    items: ItemTable, instances: Instances, redis_url: str
) -> None:
    """The stale-refill race: a reader loads the old row, the write commits and invalidates,
    then the reader stores what it read. The revoked lease refuses that store, and callers
    that joined the old load go back to the database."""
    await items.put(9, "before")
    cache = instances.new()
    loading = asyncio.Event()
    release = asyncio.Event()

    async def slow_old_read() -> Item | None:
        item = await items.load(9)  # reads "before"
        loading.set()
        await release.wait()
        return item

    async def leader_read() -> Item | None:
        return await cache.get_or_load(ITEMS, "9", slow_old_read)

    leader = asyncio.create_task(leader_read())
    await loading.wait()
    joiner = asyncio.create_task(items.read(cache, 9))
    await asyncio.sleep(0.05)  # the joiner is now waiting on the leader's load

    await items.put(9, "after", version=2)  # the write commits...
    await cache.invalidate(ITEMS, "9")  # ...then invalidates
    release.set()

    assert (await leader).name == "before"  # type: ignore[union-attr]  # it started first
    assert (await joiner).name == "after"  # type: ignore[union-attr]
    fresh = await instances.new().get_or_load(ITEMS, "9", items.loader(9))
    assert fresh is not None
    assert fresh.name == "after"


@pytest.mark.load
async def test_after_a_write_commits_no_read_that_starts_later_returns_the_old_value(
    items: ItemTable, instances: Instances, item_engine: AsyncEngine
) -> None:
    await items.put(11, "v0", version=0)
    caches = [instances.new(), instances.new()]
    committed_version = 0  # raised once a write's commit *and* invalidation are done
    stale_reads: list[tuple[int, int]] = []
    reads = 0
    writing = True

    async def reader(cache: Cache) -> None:
        nonlocal reads
        while writing:
            floor = committed_version
            item = await cache.get_or_load(ITEMS, "11", items.loader(11, delay=0.002))
            assert item is not None
            reads += 1
            if item.version < floor:
                stale_reads.append((floor, item.version))

    async def writer() -> None:
        nonlocal committed_version, writing
        sessionmaker = async_sessionmaker(item_engine, expire_on_commit=False)
        for version in range(1, 31):
            async with sessionmaker() as session:
                await session.execute(
                    text("UPDATE cache_proof_items SET version = :v, name = :n WHERE id = 11"),
                    {"v": version, "n": f"v{version}"},
                )
                # Whichever instance took the write invalidates, after the commit.
                on_commit(session, partial(caches[version % 2].invalidate, ITEMS, "11"))
                await session.commit()
                await run_after_commit(session)
            committed_version = version
            await asyncio.sleep(0.02)
        writing = False

    await asyncio.gather(writer(), *(reader(cache) for cache in caches * 20))

    assert reads > 1000
    assert stale_reads == []
    assert items.loads < reads / 5  # and the cache still did its job


@pytest.fixture
def throwaway_redis() -> Iterator[RunningServer]:
    server = start_redis()
    yield server
    server.stop()


@pytest.mark.load
async def test_redis_stopped_under_load_fails_open_and_recovers_by_itself(
    items: ItemTable, instances: Instances, throwaway_redis: RunningServer
) -> None:
    await items.put(21, "resilient")
    port = int(throwaway_redis.url.rsplit(":", 1)[1].split("/")[0])
    instances.url = throwaway_redis.url
    breaker = CircuitBreaker(failure_threshold=5, reset_timeout=0.5)
    cache = instances.new(timeout=0.2, breaker=breaker)
    await cache.get_or_load(ITEMS, "21", items.loader(21))
    failures: list[Exception] = []
    served = 0
    phase = "up"

    async def reader() -> None:
        nonlocal served
        while phase != "done":
            try:
                item = await cache.get_or_load(ITEMS, "21", items.loader(21))
                assert item is not None
                assert item.name == "resilient"
                served += 1
            except Exception as exc:  # every failure is the finding
                failures.append(exc)
            await asyncio.sleep(0.001)

    readers = [asyncio.create_task(reader()) for _ in range(20)]
    await asyncio.sleep(0.5)
    hits_before = outcomes(cache).get("hit", 0)

    throwaway_redis.stop()  # Redis dies under load
    phase = "down"
    await asyncio.sleep(1.5)
    served_while_down = served
    redis_errors_while_down = errors(cache)

    restarted = start_redis(port=port)  # and comes back on the same address, empty
    try:
        await asyncio.sleep(1.5)
        phase = "done"
        await asyncio.gather(*readers)
        hits_after = outcomes(cache).get("hit", 0)
    finally:
        restarted.stop()

    assert failures == []
    assert served_while_down > 0
    assert hits_before > 0
    # The breaker kept a dead Redis out of most requests: a handful of failed attempts per
    # half-open probe, not one per request.
    assert redis_errors_while_down < served_while_down / 5
    assert outcomes(cache).get("bypass", 0) > 0
    assert hits_after > hits_before  # caching resumed without a restart of the app


@pytest.mark.load
async def test_a_hung_redis_costs_a_few_timeouts_then_is_skipped(
    items: ItemTable, instances: Instances, throwaway_redis: RunningServer
) -> None:
    await items.put(22, "patient")
    instances.url = throwaway_redis.url
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=30)
    cache = instances.new(timeout=0.1, breaker=breaker)
    await cache.get_or_load(ITEMS, "22", items.loader(22))
    admin = Redis.from_url(throwaway_redis.url)
    # Redis stops answering (but keeps the connections open) for 3 seconds.
    await admin.client_pause(3000, all=True)
    try:
        results = []
        for _ in range(200):
            results.append(await items.read(cache, 22))
    finally:
        await admin.client_unpause()
        await admin.aclose()
    assert all(result is not None for result in results)
    # Only the calls before the circuit opened waited for the timeout; the rest never asked.
    assert errors(cache) == 3
    assert outcomes(cache).get("bypass", 0) == 200


async def test_a_timeout_caused_by_a_busy_event_loop_is_not_blamed_on_redis(
    instances: Instances,
) -> None:
    """An overloaded process must not open its breaker (and move its load to Postgres) because
    its own event loop was too busy to read Redis's reply in time."""
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=30)
    cache = instances.new(timeout=0.1, breaker=breaker)
    calls = 0

    async def redis_command() -> bytes:
        # Stands for a GET whose reply is back in 50 ms: Redis is fine.
        nonlocal calls
        calls += 1
        if calls == 1:
            await asyncio.sleep(0.05)
        return b"reply"

    async def hog_the_loop() -> None:
        time.sleep(0.3)  # noqa: ASYNC251  # blocking the loop past the timeout is the point

    hog = asyncio.create_task(hog_the_loop())
    reply = await cache._call("get", redis_command)
    await hog

    assert reply == b"reply"
    assert calls == 2  # timed out behind the busy loop, then asked once more
    [retries] = [
        sample.value
        for metric in cache.metrics.busy_retries.collect()
        for sample in metric.samples
        if sample.name.endswith("_total")
    ]
    assert retries == 1
    assert errors(cache) == 0
    assert not breaker.is_open  # one counted failure would have opened it


async def test_a_slow_redis_on_an_idle_loop_is_a_failure(instances: Instances) -> None:
    breaker = CircuitBreaker(failure_threshold=1, reset_timeout=30)
    cache = instances.new(timeout=0.05, breaker=breaker)

    async def hung_redis() -> bytes:
        await asyncio.sleep(1)
        return b"too late"

    assert (await cache._call("get", hung_redis)).__class__.__name__ == "_Failed"
    assert errors(cache) == 1
    assert breaker.is_open


def test_the_breaker_opens_after_consecutive_failures_and_probes_once() -> None:
    now = 100.0
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=5, clock=lambda: now)
    for _ in range(2):
        breaker.record_failure()
    breaker.record_success()  # a success resets the count: failures must be consecutive
    for _ in range(2):
        breaker.record_failure()
    assert breaker.allow()
    breaker.record_failure()
    assert breaker.is_open
    assert not breaker.allow()

    now += 5
    assert breaker.allow()  # one probe after the reset timeout...
    assert not breaker.allow()  # ...and only one
    breaker.record_failure()  # the probe failed: open for another reset timeout
    assert not breaker.allow()
    now += 5
    assert breaker.allow()
    breaker.record_success()
    assert not breaker.is_open
    assert breaker.allow()
    assert breaker.allow()
