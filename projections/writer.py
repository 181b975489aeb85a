"""`ledger project`: the projection writer, ledger.events → PostgreSQL, in batches.

The loop reads a batch (aiokafka, in a consumer group so that several writers share the
partitions), decodes it, sets undecodable records aside on ledger.dlq, and applies the rest in
one transaction with the stored offsets (`projections.store`). Kafka's committed offsets follow,
as a hint only: on assignment the writer seeks to the offsets stored in PostgreSQL.

Two stages, one batch in flight: while the database applies a batch, the next one is read,
decoded, fingerprinted and turned into rows (a few hundred records at a time, so that the batch
in flight gets the event loop back as soon as the database answers). Batches are applied and
committed one after the other, in the order they were read; a failure stops the writer after the
batch in flight. A batch closes at BATCH_EVENTS_MAX records, or BATCH_SECONDS_MAX after its
first record once the database is free, whichever comes first: under light load an event waits
about that long, under heavy load batches fill up while the previous one is applied.

A database that goes away (restart, failover) is waited for with a jittered backoff and the
same batch applied again, up to DB_OUTAGE_SECONDS_MAX; a transaction aborted by a deadlock, a
lock timeout or a statement timeout is retried likewise. A fact the database refuses for what it
holds (SQLSTATE classes 22 and 23: store.DATA_REFUSALS) is found by halving the batch in
savepoints, set aside on ledger.dlq with the database's SQLSTATE and message, and the rest
applied with the offsets of all (issue 16). A batch that another writer got ahead of (a zombie
writer, paused past its session) is fenced by the stored offsets: rolled back, and the writer
reads again from the stored offsets. Anything else is a bug: the writer exits non-zero,
uncommitted.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import random
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from ledger.kafka import topics
from ledger.kafka.groups import PROJECTIONS_GROUP_ID
from ledger.kafka.settings import aiokafka_group_consumer_config, dead_letter_producer_config
from ledger.settings import listen_host
from projections import metrics, store
from projections.migrate import DEFAULT_SCHEMA
from schemas import checked, codec
from schemas.deadletter import DeadLetter, set_aside

log = logging.getLogger("ledger.projections")
GROUP_ID = PROJECTIONS_GROUP_ID
# 5,000 events is about 4 MB of facts; measured on this machine, batches above ~5,000 gain
# nothing in events/s and delay every commit (issue 5 figures).
BATCH_EVENTS_MAX = 5_000
# How long the first record of a batch waits for more before the batch closes (if the database
# is free by then): the latency a light load pays for batching (issue 13).
BATCH_SECONDS_MAX = 0.1
POLL_TIMEOUT_MS = 200
# While a batch is in flight, the next is read at most this long at a time, to look again
# whether the database is done.
POLL_IN_FLIGHT_MS = 10
# Decoding yields to the event loop every this many records (~5 ms of CPU): the batch in flight
# waits at most that long for its turn when the database answers.
DECODE_CHUNK_RECORDS = 200
# The writer runs at this niceness: below the authorizer when both share cores. PERF.md, 5,000
# purchases/s paced on 2 cores: the authorizer's p99 763 ms beside a writer at equal priority,
# 82 ms beside one at nice 15. On a host (or a pod's CPU share) of its own it changes nothing.
NICENESS_DEFAULT = 10
# A batch allocates tens of thousands of short-lived tuples and structs, and almost no cycles:
# with Python's default thresholds the collector took about a quarter of the writer's CPU
# (measured with ledger bench's projection facts: 62 -> 48 us of CPU an event live, 59 -> 47 in
# replay). The workers' setting (streams/worker.py, PERF.md).
GC_THRESHOLDS = (100_000, 50, 1_000)
# Shorter than the consumer's max.poll.interval (300 s): a writer waiting longer for the
# database would be put out of the group anyway; it exits and its supervisor restarts it.
DB_OUTAGE_SECONDS_MAX = 240.0
RETRY_BACKOFF_SECONDS_MIN = 0.2
RETRY_BACKOFF_SECONDS_MAX = 5.0
FETCH_BYTES_MAX = 32 * 1024 * 1024
EXIT_GIVE_UP = 75  # EX_TEMPFAIL: the database stayed away; restart me later


@dataclass
class Prepared:
    """A batch of records, decoded and made ready for the database (store.Batch)."""

    batch: store.Batch
    incoming: list[store.Incoming] = field(default_factory=list)
    poison: list[Any] = field(default_factory=list)  # (record, InvalidMessage)
    markers: int = 0
    next_offsets: dict[int, int] = field(default_factory=dict)
    first_offsets: dict[int, int] = field(default_factory=dict)  # the fence (store._fence)
    timestamps_ms: list[int] = field(default_factory=list)  # of every record, for the latency

    @property
    def records(self) -> int:
        return len(self.timestamps_ms)

    def add(self, record: Any) -> None:
        """One record (ConsumerRecord-like: partition, offset, key, value, timestamp)."""
        partition, offset = record.partition, record.offset
        if offset >= self.next_offsets.get(partition, 0):
            self.next_offsets[partition] = offset + 1
        if offset < self.first_offsets.get(partition, offset + 1):
            self.first_offsets[partition] = offset
        self.timestamps_ms.append(record.timestamp)
        if record.key == topics.PARTITION_MARKER_KEY:  # topics.is_marker, inline
            self.markers += 1
            return
        try:  # as strict as codec.decode_fact, quicker (issue 13)
            fact = checked.decode_fact(record.value)
        except codec.InvalidMessage as invalid:
            self.poison.append((record, invalid))
            return
        item = store.Incoming(partition, offset, fact, record.value)
        self.incoming.append(item)
        self.batch.add(item)  # may raise ConflictingFacts: two facts under one id in the batch


def prepare(records: Iterable[Any], topic: str = topics.EVENTS) -> Prepared:
    """Decode a batch of records at once."""
    prepared = Prepared(store.Batch(topic))
    for record in records:
        prepared.add(record)
    return prepared


async def prepare_more(prepared: Prepared, records: list[Any]) -> None:
    """Add records to a batch, letting the event loop run between chunks."""
    for start in range(0, len(records), DECODE_CHUNK_RECORDS):
        for record in records[start : start + DECODE_CHUNK_RECORDS]:
            prepared.add(record)
        await asyncio.sleep(0)


def dead_letter_of(record: Any, invalid: codec.InvalidMessage) -> DeadLetter:
    return set_aside(
        invalid.reason, invalid.detail, record.topic, record.partition, record.offset,
        record.key, record.value, datetime.now(UTC),
    )  # fmt: skip


class _SeekToStored(ConsumerRebalanceListener):  # type: ignore[misc]
    """On assignment, start each partition at the offset stored with the projections."""

    def __init__(self, consumer: AIOKafkaConsumer, dsn: str, schema: str, topic: str) -> None:
        self._consumer, self._dsn, self._schema, self._topic = consumer, dsn, schema, topic

    async def on_partitions_revoked(self, revoked: Any) -> None:
        log.info("partitions revoked: %s", sorted(tp.partition for tp in revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:
        conn = await _connect_patiently(self._dsn, self._schema)
        try:
            stored = await store.stored_offsets(conn, self._topic)
        finally:
            await conn.close()
        for tp in assigned:
            self._consumer.seek(tp, stored.get(tp.partition, 0))
        log.info("partitions assigned: %s", {tp.partition: stored.get(tp.partition, 0)
                                             for tp in assigned})  # fmt: skip


def _failed(task: asyncio.Task[Any]) -> bool:
    return task.done() and (task.cancelled() or task.exception() is not None)


def _backoff(attempt: int) -> float:
    ceiling = min(RETRY_BACKOFF_SECONDS_MAX, RETRY_BACKOFF_SECONDS_MIN * 2**attempt)
    return random.uniform(ceiling / 2, ceiling)  # jitter, not a secret


async def _connect_patiently(dsn: str, schema: str) -> psycopg.AsyncConnection[Any]:
    deadline = time.monotonic() + DB_OUTAGE_SECONDS_MAX
    attempt = 0
    while True:
        try:
            return await store.connect(dsn, schema)
        except psycopg.OperationalError as error:
            if time.monotonic() > deadline:
                raise
            metrics.DB_RETRIES.labels("unreachable").inc()
            log.warning("the database is unreachable (%s): trying again", str(error).strip())
            await asyncio.sleep(_backoff(attempt))
            attempt += 1


def reconcile_once(dsn: str, schema: str) -> int:
    """The database's checks of the books, in one snapshot; sets the gauges. Returns the number
    of failed checks."""
    from projections.reconcile import reconcile

    with psycopg.connect(dsn, options=f"-c search_path={schema}", connect_timeout=10) as db:
        db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        checks = reconcile(db, None)
    failed = [check for check in checks if check.mismatches]
    for check in failed:
        log.error("reconciliation: %s failed: %s", check.name, "; ".join(check.mismatches[:5]))
    metrics.RECONCILE_FAILED_CHECKS.set(len(failed))
    metrics.RECONCILE_LAST_RUN.set(time.time())
    return len(failed)


# Fault injection for the fault suite only: the writer exits (as if killed) right after the
# database commit of this batch, before its Kafka commit. Unset in every real deployment.
_CRASH_AFTER_DB_COMMIT = int(os.environ.get("LEDGER_FAULT_EXIT_AFTER_DB_COMMIT_BATCH") or 0)
# The writer, having read a batch, waits this long before its transaction (and logs that it
# does): a writer paused there is a zombie holding a batch it read. For the fault suite only,
# like the next (projections/store.py: LEDGER_FAULT_HOLD_IN_TRANSACTION_SECONDS, a pg_sleep
# inside every batch's transaction before its commit).
_HOLD_BEFORE_APPLY = float(os.environ.get("LEDGER_FAULT_HOLD_BEFORE_APPLY_SECONDS") or 0)
HOLD_BEFORE_APPLY_LOG = "fault injection: holding a batch before its transaction"
EXIT_INJECTED_CRASH = 137


class Writer:
    def __init__(
        self,
        bootstrap_servers: str,
        dsn: str,
        schema: str = DEFAULT_SCHEMA,
        batch_events_max: int = BATCH_EVENTS_MAX,
        client_id: str = "ledger-projections",
        name: str | None = None,
        topic: str = topics.EVENTS,
        group_id: str = GROUP_ID,
        reconcile_seconds: float = 0.0,
    ) -> None:
        self.topic, self.group_id = topic, group_id
        self.reconcile_seconds = reconcile_seconds
        self.bootstrap_servers, self.dsn, self.schema = bootstrap_servers, dsn, schema
        self.batch_events_max = batch_events_max
        self.client_id = client_id
        # Static membership (KIP-345): a writer killed and restarted under the same name takes
        # its partitions back at once, instead of after the session timeout of its dead self.
        self.group_instance_id = None if name is None else f"projections-{name}"
        self.stopping = asyncio.Event()
        self._batches_committed = 0
        self._conn: psycopg.AsyncConnection[Any] | None = None
        self._fenced = False  # a batch was fenced: read again from the stored offsets

    async def _apply(self, prepared: Prepared, producer: AIOKafkaProducer) -> store.Outcome:
        """Apply one batch, reconnecting and trying again as long as the database is away; a
        batch the database refuses is applied again without the facts it refuses, which are
        set aside on ledger.dlq before the commit."""
        deadline = time.monotonic() + DB_OUTAGE_SECONDS_MAX
        attempt = 0
        refusal: tuple[str, str] | None = None
        while True:
            try:
                if self._conn is None or self._conn.closed:
                    self._conn = await _connect_patiently(self.dsn, self.schema)
                if refusal is None:
                    return await store.apply_prepared(
                        self._conn, prepared.batch, prepared.next_offsets, prepared.first_offsets
                    )
                outcome, refused = await store.apply_setting_aside(
                    self._conn, prepared.batch, prepared.next_offsets, prepared.first_offsets,
                    lambda refused: self._set_aside_refused(producer, refused),
                )  # fmt: skip
                metrics.RECORDS.labels("refused").inc(len(refused))
                return outcome
            except store.DATA_REFUSALS as error:
                if refusal is not None:  # refused again, outside of the facts: not the data's
                    raise
                refusal = store.refusal_of(error)
                log.warning("the database refused a fact of the batch (%s %s): finding it",
                            *refusal)  # fmt: skip
                continue
            except (psycopg.errors.DeadlockDetected, psycopg.errors.LockNotAvailable,
                    psycopg.errors.SerializationFailure,
                    psycopg.errors.QueryCanceled) as error:  # fmt: skip
                reason = type(error).__name__
            except psycopg.OperationalError as error:
                reason = "unreachable"
                log.warning("the database went away (%s): trying again", str(error).strip())
                if self._conn is not None:
                    await self._conn.close()
                self._conn = None
            if time.monotonic() > deadline:
                raise TimeoutError(f"no database for {DB_OUTAGE_SECONDS_MAX:.0f} s")
            metrics.DB_RETRIES.labels(reason).inc()
            await asyncio.sleep(_backoff(attempt))
            attempt += 1

    async def _dead_letter(self, producer: AIOKafkaProducer, prepared: Prepared) -> None:
        # Before the batch commits: a crash in between sets the same record aside again, never
        # loses it (the dead letter names its source offset, so a reader can tell).
        for record, invalid in prepared.poison:
            letter = dead_letter_of(record, invalid)
            await producer.send_and_wait(
                topics.DLQ, key=record.key, value=codec.encode(letter), partition=0
            )
            log.warning("dead-lettered %s[%d]@%d: %s", record.topic, record.partition,
                        record.offset, invalid)  # fmt: skip

    async def _set_aside_refused(
        self, producer: AIOKafkaProducer, refused: list[store.Refused]
    ) -> None:
        # Inside the batch's transaction, before its commit: a crash in between sets the same
        # facts aside again, never loses them.
        for one in refused:
            item = one.item
            letter = set_aside(
                "refused_by_database",
                f"{one.sqlstate} {one.message}",
                self.topic,
                item.partition,
                item.offset,
                None,
                item.raw,
                datetime.now(UTC),
            )  # fmt: skip  (the record's key is not kept with its fact; the partition is named)
            await producer.send_and_wait(topics.DLQ, value=codec.encode(letter), partition=0)
            log.warning("dead-lettered %s[%d]@%d: refused by the database: %s %s", self.topic,
                        item.partition, item.offset, one.sqlstate, one.message)  # fmt: skip

    async def _report_lag(self, consumer: AIOKafkaConsumer, next_offsets: dict[int, int]) -> None:
        for tp in consumer.assignment():
            highwater = consumer.highwater(tp)
            if highwater is not None and tp.partition in next_offsets:
                metrics.LAG.labels(str(tp.partition)).set(
                    max(0, highwater - next_offsets[tp.partition])
                )

    async def run(self) -> None:
        consumer = AIOKafkaConsumer(
            **aiokafka_group_consumer_config(
                self.bootstrap_servers, self.client_id, self.group_id,
                group_instance_id=self.group_instance_id, fetch_bytes_max=FETCH_BYTES_MAX,
            )
        )  # fmt: skip
        producer = AIOKafkaProducer(
            **dead_letter_producer_config(self.bootstrap_servers, f"{self.client_id}-dlq")
        )
        listener = _SeekToStored(consumer, self.dsn, self.schema, self.topic)
        consumer.subscribe([self.topic], listener=listener)
        await consumer.start()
        await producer.start()
        committed: dict[int, int] = {}
        reconciler = (
            asyncio.create_task(self._reconcile_now_and_then()) if self.reconcile_seconds else None
        )
        in_flight: asyncio.Task[dict[int, int]] | None = None
        try:
            while not self.stopping.is_set():
                prepared = await self._next_batch(consumer, in_flight)
                if in_flight is not None:
                    committed.update(await in_flight)  # its failure stops the writer here
                    in_flight = None
                if self._fenced:  # read after the fenced one: stale too
                    prepared, self._fenced = None, False
                    await listener.on_partitions_assigned(consumer.assignment())
                if prepared is not None:
                    in_flight = asyncio.create_task(self._one_batch(consumer, producer, prepared))
                await self._report_lag(consumer, committed)
            if in_flight is not None:  # stopping: the batch in progress is finished
                committed.update(await in_flight)
                in_flight = None
        finally:
            if in_flight is not None:  # the next batch failed (ConflictingFacts): this one is
                await asyncio.wait([in_flight])  # right, and stops here, committed or not
                if not in_flight.cancelled() and in_flight.exception() is not None:
                    log.error("the batch in flight failed too: %r", in_flight.exception())
            if reconciler is not None:
                reconciler.cancel()
            await producer.stop()
            await consumer.stop()
            if self._conn is not None:
                await self._conn.close()

    async def _reconcile_now_and_then(self) -> None:
        while True:
            try:  # in a thread: the checks are blocking queries, the batches go on meanwhile
                await asyncio.to_thread(reconcile_once, self.dsn, self.schema)
            except psycopg.Error as error:
                log.warning("reconciliation not run: %s", str(error).strip())
            await asyncio.sleep(self.reconcile_seconds)

    async def _next_batch(
        self, consumer: AIOKafkaConsumer, in_flight: asyncio.Task[Any] | None
    ) -> Prepared | None:
        """Read and prepare the next batch while `in_flight` is applied. None: nothing came
        (and nothing is in flight), or the writer is stopping."""
        prepared = Prepared(store.Batch(self.topic))
        opened = 0.0  # when the first record came
        while prepared.records < self.batch_events_max and not self.stopping.is_set():
            free = in_flight is None or in_flight.done()
            if free and in_flight is not None and _failed(in_flight):
                break  # the batch in flight failed: the writer stops
            if prepared.records and free:
                left = BATCH_SECONDS_MAX - (time.monotonic() - opened)
                if left <= 0:
                    break
                timeout_ms = max(1, int(left * 1000))
            elif free:
                timeout_ms = POLL_TIMEOUT_MS
            else:
                timeout_ms = POLL_IN_FLIGHT_MS
            batches = await consumer.getmany(
                timeout_ms=timeout_ms, max_records=self.batch_events_max - prepared.records
            )
            records = [r for part in batches.values() for r in part]
            if records:
                opened = opened or time.monotonic()
                await prepare_more(prepared, records)
            elif free and not prepared.records:
                return None  # idle
        return prepared if prepared.records else None

    async def _one_batch(
        self, consumer: AIOKafkaConsumer, producer: AIOKafkaProducer, prepared: Prepared
    ) -> dict[int, int]:
        """Apply one batch; returns the offsets now stored."""
        started = time.perf_counter()
        await self._dead_letter(producer, prepared)
        if _HOLD_BEFORE_APPLY:
            log.warning("%s (%s s), first offsets %s", HOLD_BEFORE_APPLY_LOG, _HOLD_BEFORE_APPLY,
                        prepared.first_offsets)  # fmt: skip
            await asyncio.sleep(_HOLD_BEFORE_APPLY)
        try:
            outcome = await self._apply(prepared, producer)
        except store.Fenced as fenced:
            metrics.FENCED_BATCHES.inc()
            log.warning("batch fenced, rolled back (%s): reading again from the stored offsets",
                        fenced)  # fmt: skip
            self._fenced = True
            return {}
        self._batches_committed += 1
        if self._batches_committed == _CRASH_AFTER_DB_COMMIT:
            # Fault injection (tests/fault): die between the database commit and the Kafka
            # commit, the window where a batch is stored but the group does not know it.
            log.warning("fault injection: exiting after the database commit of batch %d",
                        self._batches_committed)  # fmt: skip
            os._exit(EXIT_INJECTED_CRASH)
        now = time.time()
        metrics.BATCHES.inc()
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)
        metrics.CONSUMED.inc(prepared.records)
        metrics.RECORDS.labels("applied").inc(outcome.applied)
        metrics.RECORDS.labels("duplicate").inc(outcome.duplicates)
        metrics.RECORDS.labels("dead_lettered").inc(len(prepared.poison))
        metrics.RECORDS.labels("marker").inc(prepared.markers)
        for timestamp_ms in prepared.timestamps_ms:
            metrics.COMMIT_LATENCY.observe(max(0.0, now - timestamp_ms / 1000))
        for isp_id, period in outcome.sealed:
            metrics.PERIODS_SEALED.inc()
            log.info("period %s of %s sealed", period, isp_id)
        try:  # a hint for tools that read the group's offsets; the stored ones are the truth
            await consumer.commit({
                TopicPartition(self.topic, p): OffsetAndMetadata(o, "")
                for p, o in prepared.next_offsets.items()
            })  # fmt: skip
        except Exception as error:  # a rebalance in progress: the next batch commits again
            log.info("kafka commit skipped: %s", error)
        return prepared.next_offsets


def lower_priority(niceness: int) -> int:
    """Run at `niceness` at least (never raised back: that needs privileges). Returns the
    niceness now."""
    current = os.nice(0)
    if niceness > current:
        current = os.nice(niceness - current)
        log.info("running at niceness %d (below the workers', if they share the cores)", current)
    return current


def tune_gc() -> None:
    """For a process that applies batches (the writer, replay): what start-up allocated is
    frozen out of the collector's way, and the youngest generation is collected less often."""
    gc.collect()
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()


def run_writer(
    bootstrap_servers: str,
    dsn: str,
    schema: str,
    batch_events_max: int,
    metrics_port: int | None,
    name: str | None,
    reconcile_seconds: float = 0.0,
    niceness: int = NICENESS_DEFAULT,
) -> int:
    """The process's main: runs until SIGTERM or SIGINT (a batch in progress is finished)."""
    from prometheus_client import start_http_server

    lower_priority(niceness)
    if metrics_port is not None:
        start_http_server(metrics_port, addr=listen_host())
    writer = Writer(
        bootstrap_servers, dsn, schema, batch_events_max, name=name,
        reconcile_seconds=reconcile_seconds,
    )  # fmt: skip
    tune_gc()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, writer.stopping.set)
        await writer.run()

    try:
        asyncio.run(main())
    except TimeoutError as error:
        log.error("giving up: %s", error)
        return EXIT_GIVE_UP
    # A static member does not leave the group when it stops (KIP-345): its partitions would
    # wait for its session to expire before another writer got them. A stop takes it out now;
    # a kill -9 does not, and the restart under the same name takes the partitions back.
    if writer.group_instance_id is not None:
        from ledger.kafka.groups import leave_group

        leave_group(bootstrap_servers, GROUP_ID, writer.group_instance_id)
    return 0
