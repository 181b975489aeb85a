"""`ledger bench projections`: events/s into PostgreSQL, live and in replay, on the real stack.

The facts of the core benchmark's workload (decided by the pure core) are written to a topic of
the benchmark's own, so that the live ledger is left alone. Then:
- live: the projection writer (its consumer group, its batches of BATCH_EVENTS_MAX) projects the
  whole topic into a fresh schema; events/s from its start to the last offset stored;
- replay: `ledger replay`'s code rebuilds the same into another fresh schema and compares it
  with the first (they must be equal).
Schemas and topic are dropped afterwards.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from ledger.bench.core import reference, workload
from ledger.core.runner import LocalAuthorizer
from ledger.kafka.partitioning import partition_for
from ledger.kafka.settings import admin_config, aiokafka_producer_config, offsets_consumer_config
from projections.replay import drop_schema, fresh_schema, replay
from projections.writer import Writer, tune_gc
from schemas import codec

LIVE_SCHEMA = "ledger_bench_live"
REPLAY_SCHEMA = "ledger_bench_replay"
CATCH_UP_SECONDS_MAX = 600.0
POLL_SECONDS = 0.05


@dataclass(frozen=True)
class ProjectionFigures:
    events: int
    money_facts: int
    live_events_per_second: float
    live_seconds: float
    replay_events_per_second: float
    replay_seconds: float
    replay_equal: bool


def _facts(accounts: int, purchases: int, seed: int) -> tuple[list[tuple[str, bytes]], int]:
    ledger = LocalAuthorizer(reference())
    setup, measured = workload(accounts, purchases, seed)
    out: list[tuple[str, bytes]] = []
    money = 0
    for origin, command in enumerate([*setup, *measured], start=1):
        for fact in ledger.handle(command, origin=origin):
            out.append((command.account_id, codec.encode(fact)))  # type: ignore[union-attr]
            money += hasattr(fact, "postings")
    return out, money


async def _produce(
    bootstrap: str, topic: str, partitions: int, facts: list[tuple[str, bytes]]
) -> None:
    from aiokafka import AIOKafkaProducer

    # Lingered and batched big, to load the backlog fast; 40 s is aiokafka's request timeout,
    # which this producer always had.
    producer = AIOKafkaProducer(
        **aiokafka_producer_config(
            bootstrap, "ledger-bench",
            linger_ms=20, max_batch_bytes=256 * 1024, request_timeout_ms=40_000,
        )
    )  # fmt: skip
    await producer.start()
    try:
        pending = []
        for key, raw in facts:
            where = partition_for(key, partitions)
            pending.append(await producer.send(topic, raw, key=key.encode(), partition=where))
            if len(pending) >= 10_000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
    finally:
        await producer.stop()


def _create_topic(bootstrap: str, topic: str, partitions: int) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic

    admin = KafkaAdminClient(**admin_config(bootstrap, "ledger-bench"))
    try:
        admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        admin.close()


def _delete_topic(bootstrap: str, topic: str) -> None:
    from kafka.admin import KafkaAdminClient

    admin = KafkaAdminClient(**admin_config(bootstrap, "ledger-bench"))
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()


async def _live(
    bootstrap: str, dsn: str, topic: str, partitions: int, ends: dict[int, int]
) -> float:
    writer = Writer(bootstrap, dsn, LIVE_SCHEMA, topic=topic,
                    group_id=f"ledger-bench-{uuid.uuid4().hex[:8]}")  # fmt: skip
    # One connection, asked every POLL_SECONDS: a connection per look (authentication
    # included) took the writer's event loop, which this loop shares, for a tenth of its time.
    db = await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    query = sql.SQL("SELECT partition, next_offset FROM {} WHERE topic = %s").format(
        sql.Identifier(LIVE_SCHEMA, "projection_offsets")
    )
    started = time.perf_counter()
    task = asyncio.create_task(writer.run())
    deadline = started + CATCH_UP_SECONDS_MAX
    try:
        while time.perf_counter() < deadline:
            await asyncio.sleep(POLL_SECONDS)
            if task.done():
                task.result()
            cursor = await db.execute(query, (topic,))
            stored = {int(p): int(o) for p, o in await cursor.fetchall()}
            if all(stored.get(p, 0) >= o for p, o in ends.items()):
                return time.perf_counter() - started
        raise TimeoutError("the writer did not catch up")
    finally:
        writer.stopping.set()
        await task
        await db.close()


def _end_offsets(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**offsets_consumer_config(bootstrap, "ledger-bench"))
    try:
        ends = consumer.end_offsets([TopicPartition(topic, p) for p in range(partitions)])
        return {tp.partition: int(o) for tp, o in ends.items()}
    finally:
        consumer.close()


def run(bootstrap: str, dsn: str, partitions: int, accounts: int, purchases: int,
        seed: int) -> ProjectionFigures:  # fmt: skip
    facts, money = _facts(accounts, purchases, seed)
    tune_gc()  # as `ledger project` and `ledger replay` do (the facts held here frozen too)
    topic = f"ledger.bench.events.{uuid.uuid4().hex[:8]}"
    _create_topic(bootstrap, topic, partitions)
    try:
        asyncio.run(_produce(bootstrap, topic, partitions, facts))
        ends = _end_offsets(bootstrap, topic, partitions)
        fresh_schema(dsn, LIVE_SCHEMA)
        live_seconds = asyncio.run(_live(bootstrap, dsn, topic, partitions, ends))
        result = replay(bootstrap, dsn, REPLAY_SCHEMA, partitions, live=LIVE_SCHEMA, topic=topic)
    finally:
        _delete_topic(bootstrap, topic)
        drop_schema(dsn, LIVE_SCHEMA)
        drop_schema(dsn, REPLAY_SCHEMA)
    return ProjectionFigures(
        events=len(facts), money_facts=money,
        live_events_per_second=len(facts) / live_seconds, live_seconds=live_seconds,
        replay_events_per_second=result.events_per_second, replay_seconds=result.seconds,
        replay_equal=result.equal,
    )  # fmt: skip


def report(figures: ProjectionFigures) -> str:
    return "\n".join([
        f"events projected          {figures.events:>12,} ({figures.money_facts:,} with postings)",
        f"live writer               {figures.live_events_per_second:>12,.0f} events/s"
        f"  ({figures.live_seconds:.1f} s, batches of 5,000, commit per batch)",
        f"replay                    {figures.replay_events_per_second:>12,.0f} events/s"
        f"  ({figures.replay_seconds:.1f} s, equal to live: {figures.replay_equal})",
    ])  # fmt: skip


def as_json(figures: ProjectionFigures) -> dict[str, Any]:
    return {
        "events": figures.events,
        "projection_live_events_per_second": figures.live_events_per_second,
        "replay_events_per_second": figures.replay_events_per_second,
        "replay_equal": figures.replay_equal,
    }
