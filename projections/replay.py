"""`ledger replay`: rebuild every projection from offset 0 of ledger.events into a fresh schema,
with the writer's own batch code, then compare it with the live schema.

The replay reads each partition up to the offset the live writer has stored, so that both have
applied the same records; if the live writer moves on meanwhile, the replay follows it (a few
rounds) and compares inside one snapshot in which the live offsets equal the replay's.

It is a bulk load (issue 13): the scratch schema's big tables are unlogged and their indexes built
after the load (projections.bulkload), its transactions commit with synchronous_commit off (a
crash loses the scratch schema, never the live one), and the next batch is read and prepared
while the database applies the current one, as the live writer does.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg import sql

from ledger import delivery, topics
from projections import bulkload, compare, store
from projections.migrate import DEFAULT_SCHEMA, apply_migrations, check_schema_name
from projections.writer import FETCH_BYTES_MAX, Prepared, prepare_more

# Replay is a bulk load: bigger batches than live, where latency does not matter. Measured:
# 20,000-event batches replay about as fast as any larger size on this machine.
REPLAY_BATCH_EVENTS_MAX = 20_000
CATCH_UP_ROUNDS_MAX = 5
POLL_TIMEOUT_MS = 500
POLL_IN_FLIGHT_MS = 10  # while a batch is applied: look again soon whether it is done

Progress = Callable[[int, int], None]  # (records done, records to do)


@dataclass
class ReplayResult:
    schema: str
    records: int
    applied: int
    duplicates: int
    seconds: float
    equal: bool
    differences: list[str] = field(default_factory=list)
    summaries: dict[str, compare.TableSummary] = field(default_factory=dict)
    # ISP periods sealed live before invoices showed VAT per rate: their billed rows are not
    # compared (compare.sealed_before_vat_by_rate).
    not_compared: compare.Periods = field(default_factory=list)

    @property
    def events_per_second(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else 0.0


def fresh_schema(dsn: str, schema: str) -> None:
    check_schema_name(schema)
    if schema == DEFAULT_SCHEMA:
        raise ValueError("replay never writes into the live schema")
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
    apply_migrations(dsn, schema)


def drop_schema(dsn: str, schema: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as db:
        db.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


def live_offsets(db: psycopg.Connection[Any], live: str, topic: str) -> dict[int, int]:
    rows = db.execute(
        sql.SQL("SELECT partition, next_offset FROM {} WHERE topic = %s").format(
            sql.Identifier(live, "projection_offsets")
        ),
        (topic,),
    ).fetchall()
    return {int(p): int(o) for p, o in rows}


class _Replayer:
    def __init__(self, topic: str, progress: Progress) -> None:
        self.topic = topic
        self.progress = progress
        self.position: dict[int, int] = {}  # read up to, per partition
        self.records = self.applied = self.duplicates = 0

    async def run_to(
        self, consumer: AIOKafkaConsumer, conn: psycopg.AsyncConnection[Any],
        target: dict[int, int],
    ) -> None:  # fmt: skip
        """Apply every record below `target` per partition: one batch in flight while the next
        is read and prepared."""
        to_do = sum(max(0, o - self.position.get(p, 0)) for p, o in target.items())
        done = [0]
        for p, offset in target.items():
            tp = TopicPartition(self.topic, p)
            if self.position.get(p, 0) < offset:
                consumer.resume(tp)
            else:
                consumer.pause(tp)
        in_flight: asyncio.Task[None] | None = None
        try:
            while self._behind(target):
                prepared = await self._next_batch(consumer, target, in_flight)
                if in_flight is not None:
                    await in_flight
                    in_flight = None
                if prepared.records:
                    in_flight = asyncio.create_task(self._apply(conn, prepared, done, to_do))
            if in_flight is not None:
                await in_flight
                in_flight = None
        finally:
            if in_flight is not None:  # the next batch failed: let this one end
                await asyncio.wait([in_flight])

    def _behind(self, target: dict[int, int]) -> bool:
        return any(self.position.get(p, 0) < o for p, o in target.items())

    async def _next_batch(
        self, consumer: AIOKafkaConsumer, target: dict[int, int],
        in_flight: asyncio.Task[None] | None,
    ) -> Prepared:  # fmt: skip
        """Records below `target`, up to REPLAY_BATCH_EVENTS_MAX, read while `in_flight` is
        applied; at least one fetch's worth once it is done."""
        prepared = Prepared(store.Batch(self.topic))
        while prepared.records < REPLAY_BATCH_EVENTS_MAX and self._behind(target):
            free = in_flight is None or in_flight.done()
            if free and prepared.records:
                break
            batches = await consumer.getmany(
                timeout_ms=POLL_TIMEOUT_MS if free else POLL_IN_FLIGHT_MS,
                max_records=REPLAY_BATCH_EVENTS_MAX - prepared.records,
            )
            records: list[Any] = []
            for tp, part in batches.items():
                limit = target.get(tp.partition, 0)
                records.extend(r for r in part if r.offset < limit)
                if not part:
                    continue
                read = min(part[-1].offset + 1, limit)
                self.position[tp.partition] = max(self.position.get(tp.partition, 0), read)
                if part[-1].offset + 1 >= limit:
                    # Fetched past the target: the next round starts right at it.
                    consumer.seek(tp, limit)
                    consumer.pause(tp)
            # Poison was dead-lettered live: here it is skipped.
            await prepare_more(prepared, records)
        return prepared

    async def _apply(
        self, conn: psycopg.AsyncConnection[Any], prepared: Prepared, done: list[int], to_do: int
    ) -> None:
        outcome = await store.apply_prepared(conn, prepared.batch, prepared.next_offsets)
        self.applied += outcome.applied
        self.duplicates += outcome.duplicates
        self.records += prepared.records
        done[0] += prepared.records
        self.progress(done[0], to_do)


async def _replay(
    bootstrap_servers: str, dsn: str, schema: str, live: str, partition_count: int,
    progress: Progress, topic: str, durable: bool,
) -> ReplayResult:  # fmt: skip
    replayer = _Replayer(topic, progress)
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap_servers, group_id=None, client_id="ledger-replay",
        enable_auto_commit=False, isolation_level=delivery.CONSUMER_ISOLATION_LEVEL,
        fetch_max_bytes=FETCH_BYTES_MAX, max_partition_fetch_bytes=FETCH_BYTES_MAX // 4,
    )  # fmt: skip
    await consumer.start()
    started = time.perf_counter()
    deferred: bulkload.Deferred | None = await asyncio.to_thread(
        bulkload.unlog_and_defer, dsn, schema
    )
    conn = await store.connect(dsn, schema)
    # A crash loses the last commits of the scratch schema, which is replayed again; never the
    # live one's.
    await conn.execute("SET synchronous_commit = off")
    await conn.commit()
    try:
        partitions = list(range(partition_count))
        tps = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        for _ in range(CATCH_UP_ROUNDS_MAX):
            with psycopg.connect(dsn) as db:
                target = {p: live_offsets(db, live, topic).get(p, 0) for p in partitions}
            await replayer.run_to(consumer, conn, target)
            if deferred is not None:  # after the first round: the next ones are small
                await asyncio.to_thread(deferred.finish, dsn, durable)
                deferred = None
            seconds = time.perf_counter() - started
            with psycopg.connect(dsn) as db:
                db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                now = {p: live_offsets(db, live, topic).get(p, 0) for p in partitions}
                if now != target:
                    continue  # the live writer moved on: follow it
                old = compare.sealed_before_vat_by_rate(db, live)
                left, right = compare.summarize(db, live, old), compare.summarize(db, schema, old)
            found = compare.differences(left, right)
            return ReplayResult(
                schema, replayer.records, replayer.applied, replayer.duplicates, seconds,
                not found, found, right, old,
            )  # fmt: skip
        raise TimeoutError(
            f"the live writer kept moving for {CATCH_UP_ROUNDS_MAX} rounds: replay when the"
            " stream is quieter"
        )
    finally:
        await conn.close()
        await consumer.stop()


def progress_bar(stream: Any = sys.stderr) -> Progress:
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < 0.2 and done < total:
            return
        last[0] = now
        width = 40
        filled = width if total <= 0 else min(width, width * done // total)
        percent = 100.0 if total <= 0 else min(100.0, 100.0 * done / total)
        stream.write(f"\rreplay [{'#' * filled}{'.' * (width - filled)}] {percent:5.1f} %"
                     f" {done:,}/{total:,} events")  # fmt: skip
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show


def _no_progress(_done: int, _total: int) -> None:
    return None


def replay(
    bootstrap_servers: str,
    dsn: str,
    schema: str,
    partitions: int,
    live: str = DEFAULT_SCHEMA,
    progress: Progress | None = None,
    topic: str = topics.EVENTS,
    keep: bool = False,
) -> ReplayResult:
    """Replay into a fresh `schema`; with `keep`, the schema outlives the command and is made
    logged (durable) at the end of the load, which costs another write of its tables."""
    fresh_schema(dsn, schema)
    progress = progress or _no_progress
    return asyncio.run(
        _replay(bootstrap_servers, dsn, schema, live, partitions, progress, topic, keep)
    )
