"""`ledger replay`: rebuild every projection from offset 0 of ledger.events into a fresh schema,
with the writer's own batch code, then compare it with the live schema.

The replay reads each partition up to the offset the live writer has stored, so that both have
applied the same records; if the live writer moves on meanwhile, the replay follows it (a few
rounds) and compares inside one snapshot in which the live offsets equal the replay's.

It is a bulk load (issue 13): the scratch schema's big tables are unlogged and their indexes built
after the load (projections.bulkload), its transactions commit with synchronous_commit off (a
crash loses the scratch schema, never the live one), and the next batch is read and prepared
while the database applies the current one, as the live writer does. The partitions are shared
among REPLAY_PROCESSES processes, each with its consumer and connection, as several live writers
share them: each partition is applied in order, and the seals need nothing more (the last close
mark of a period is applied after every partition's facts of it, by whichever process).
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, TopicPartition
from psycopg import sql

from ledger.kafka import topics
from ledger.kafka.settings import READER_OFFSET_RESET_LATEST, aiokafka_reader_config
from projections import bulkload, compare, store
from projections.diffreport import Comparison, TableSummary, report_lines
from projections.migrate import DEFAULT_SCHEMA, apply_migrations, check_schema_name
from projections.progress import PROGRESS_SECONDS, Progress, partition_groups
from projections.writer import FETCH_BYTES_MAX, Prepared, prepare_more

# Replay is a bulk load: bigger batches than live, where latency does not matter. Measured:
# 20,000-event batches replay about as fast as any larger size on this machine.
log = logging.getLogger("ledger.projections.replay")
REPLAY_BATCH_EVENTS_MAX = 20_000
CATCH_UP_ROUNDS_MAX = 5
POLL_TIMEOUT_MS = 500
POLL_IN_FLIGHT_MS = 10  # while a batch is applied: look again soon whether it is done


@dataclass
class ReplayResult:
    schema: str
    records: int
    applied: int
    duplicates: int
    seconds: float
    comparison: Comparison
    # ISP periods sealed live before invoices showed VAT per rate: their billed rows are not
    # compared (compare.sealed_before_vat_by_rate).
    not_compared: compare.Periods = field(default_factory=list)

    @property
    def equal(self) -> bool:
        return self.comparison.equal

    @property
    def summaries(self) -> dict[str, TableSummary]:
        """The replay's tables."""
        return self.comparison.summaries

    @property
    def differences(self) -> list[str]:
        """The report of what differs, a line each (projections.diffreport)."""
        return report_lines(self.comparison)

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
        for attempt in range(1, DEADLOCK_ATTEMPTS + 1):
            try:
                outcome = await self._apply_once(conn, prepared)
                break
            except psycopg.errors.DeadlockDetected:
                # Two replay processes upsert the same publisher and ISP balances; a batch with a
                # refused fact applies them in halves, not in one sorted statement, so their locks
                # can cross: PostgreSQL rolls one transaction back whole, and it is applied again.
                if attempt == DEADLOCK_ATTEMPTS:
                    raise
                log.info("deadlock with the other replay process: applying the batch again")
        self.applied += outcome.applied
        self.duplicates += outcome.duplicates
        self.records += prepared.records
        done[0] += prepared.records
        self.progress(done[0], to_do)

    async def _apply_once(
        self, conn: psycopg.AsyncConnection[Any], prepared: Prepared
    ) -> store.Outcome:
        try:
            return await store.apply_prepared(conn, prepared.batch, prepared.next_offsets)
        except store.DATA_REFUSALS:
            # A fact the database refuses was set aside on ledger.dlq live (issue 16): here it
            # is left out again, the rest applied, as the writer did.
            outcome, refused = await store.apply_setting_aside(
                conn, prepared.batch, prepared.next_offsets
            )
            for one in refused:
                log.warning("left out %s[%d]@%d, refused by the database: %s %s",
                            prepared.batch.topic, one.item.partition, one.item.offset,
                            one.sqlstate, one.message)  # fmt: skip
            return outcome


DEADLOCK_ATTEMPTS = 5
# Replay runs in this many processes, each with its share of the partitions, its consumer and
# its connection. One process spent ~50 us of CPU a fact in Python (decoding, fingerprints, rows,
# COPY) and left a core mostly to PostgreSQL's waits; on 2 cores, ledger bench projections'
# 233,930 facts replayed at 12.1k events/s in one process, 20.4k in two (issue 13).
REPLAY_PROCESSES = 2
# In a child: the count of records applied that it shares with the parent, for its progress bar.
_shared: dict[str, Any] = {}


@dataclass(frozen=True)
class _GroupResult:
    position: dict[int, int]
    records: int
    applied: int
    duplicates: int


def _share_counter(counter: Any) -> None:
    _shared["done"] = counter


class _SharedProgress:
    """A child's progress (records done in its round), added to the counter it shares with the
    parent."""

    def __init__(self, counter: Any) -> None:
        self.counter, self.last = counter, 0

    def __call__(self, done: int, _to_do: int) -> None:
        with self.counter.get_lock():
            self.counter.value += done - self.last
        self.last = done


async def _replay_group(
    bootstrap_servers: str, dsn: str, schema: str, topic: str, start: dict[int, int],
    target: dict[int, int],
) -> _GroupResult:  # fmt: skip
    """Apply the records of `target`'s partitions from `start` up to `target`."""
    counter = _shared.get("done")
    replayer = _Replayer(topic, _no_progress if counter is None else _SharedProgress(counter))
    replayer.position = dict(start)
    consumer = AIOKafkaConsumer(
        **aiokafka_reader_config(
            bootstrap_servers, "ledger-replay",
            auto_offset_reset=READER_OFFSET_RESET_LATEST, fetch_bytes_max=FETCH_BYTES_MAX,
        )
    )  # fmt: skip
    await consumer.start()
    conn: psycopg.AsyncConnection[Any] | None = None
    try:
        conn = await store.connect(dsn, schema)
        # A crash loses the last commits of the scratch schema, which is replayed again; never
        # the live one's.
        await conn.execute("SET synchronous_commit = off")
        await conn.commit()
        tps = {p: TopicPartition(topic, p) for p in target}
        consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            if start.get(p, 0):
                consumer.seek(tp, start[p])
            else:
                await consumer.seek_to_beginning(tp)
        await replayer.run_to(consumer, conn, target)
    finally:
        if conn is not None:
            await conn.close()
        await consumer.stop()
    return _GroupResult(replayer.position, replayer.records, replayer.applied, replayer.duplicates)


def _run_group(
    bootstrap_servers: str, dsn: str, schema: str, topic: str, start: dict[int, int],
    target: dict[int, int],
) -> _GroupResult:  # fmt: skip
    """A child process's work: one round of its partitions."""
    return asyncio.run(_replay_group(bootstrap_servers, dsn, schema, topic, start, target))


def _replay(
    bootstrap_servers: str, dsn: str, schema: str, live: str, partition_count: int,
    progress: Progress, topic: str, durable: bool, processes: int,
) -> ReplayResult:  # fmt: skip
    started = time.perf_counter()
    deferred: bulkload.Deferred | None = bulkload.unlog_and_defer(dsn, schema)
    groups = partition_groups(partition_count, processes)
    position: dict[int, int] = {}
    records = applied = duplicates = 0
    # fork: the children start at once with what this process has imported and tuned (gc);
    # they make their own event loop, consumer and connection.
    context = multiprocessing.get_context("fork")
    counter = context.Value("q", 0)
    with ProcessPoolExecutor(
        len(groups), mp_context=context, initializer=_share_counter, initargs=(counter,)
    ) as pool:
        for _ in range(CATCH_UP_ROUNDS_MAX):
            with psycopg.connect(dsn) as db:
                target = {
                    p: live_offsets(db, live, topic).get(p, 0) for p in range(partition_count)
                }
            to_do = sum(max(0, o - position.get(p, 0)) for p, o in target.items())
            base = counter.value
            futures = [
                pool.submit(_run_group, bootstrap_servers, dsn, schema, topic,
                            {p: position.get(p, 0) for p in group}, {p: target[p] for p in group})
                for group in groups
                if any(position.get(p, 0) < target[p] for p in group)
            ]  # fmt: skip
            while wait(futures, timeout=PROGRESS_SECONDS).not_done:
                progress(counter.value - base, to_do)
            for future in futures:  # a child's failure (ConflictingFacts...) is raised here
                result = future.result()
                position.update(result.position)
                records += result.records
                applied += result.applied
                duplicates += result.duplicates
            progress(counter.value - base, to_do)
            if deferred is not None:  # after the first round: the next ones are small
                deferred.finish(dsn, durable)
                deferred = None
            seconds = time.perf_counter() - started
            with psycopg.connect(dsn) as db:
                db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
                now = {p: live_offsets(db, live, topic).get(p, 0) for p in range(partition_count)}
                if now != target:
                    continue  # the live writer moved on: follow it
                old = compare.sealed_before_vat_by_rate(db, live)
                comparison = compare.compare(db, live, schema, old)
            return ReplayResult(
                schema, records, applied, duplicates, seconds, comparison, old,
            )  # fmt: skip
    raise TimeoutError(
        f"the live writer kept moving for {CATCH_UP_ROUNDS_MAX} rounds: replay when the"
        " stream is quieter"
    )


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
    processes: int = REPLAY_PROCESSES,
) -> ReplayResult:
    """Replay into a fresh `schema`; with `keep`, the schema outlives the command and is made
    logged (durable) at the end of the load, which costs another write of its tables."""
    fresh_schema(dsn, schema)
    progress = progress or _no_progress
    return _replay(
        bootstrap_servers, dsn, schema, live, partitions, progress, topic, keep, processes
    )
