"""Round trips through the real broker and the real database: the stack works end to end."""

from __future__ import annotations

import contextlib
import time
import uuid
from dataclasses import dataclass

from ledger.kafka.settings import admin_config, consumer_config, producer_config

SMOKE_TOPIC = "ledger.smoke"
CONSUME_DEADLINE_SECONDS = 30
POLL_TIMEOUT_MS = 500


@dataclass(frozen=True)
class KafkaRoundTrip:
    topic: str
    sent: int
    received: int
    in_order: bool
    seconds: float


def ensure_topic(bootstrap_servers: str, topic: str, partitions: int = 1) -> None:
    from kafka.admin import KafkaAdminClient
    from kafka.errors import TopicAlreadyExistsError

    admin = KafkaAdminClient(**admin_config(bootstrap_servers, "ledger-smoke"))
    try:
        if topic not in admin.list_topics():
            with contextlib.suppress(TopicAlreadyExistsError):  # created meanwhile by another
                admin.create_topics(
                    {topic: {"num_partitions": partitions, "replication_factor": 1}},
                    wait_for_metadata=True,
                )
    finally:
        admin.close()


def kafka_round_trip(
    bootstrap_servers: str, topic: str = SMOKE_TOPIC, count: int = 10
) -> KafkaRoundTrip:
    """Produce `count` keyed records (acks=all, idempotent) and read the same records back."""
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition

    ensure_topic(bootstrap_servers, topic)
    run = uuid.uuid4().hex[:12]
    payloads = [f"{run}:{index}".encode() for index in range(count)]
    started = time.monotonic()
    producer = KafkaProducer(**producer_config(bootstrap_servers, "ledger-smoke"))
    try:
        futures = [producer.send(topic, key=run.encode(), value=value) for value in payloads]
        producer.flush()
        first_offset = min(future.get(timeout=30).offset for future in futures)
    finally:
        producer.close()
    consumer = KafkaConsumer(**consumer_config(bootstrap_servers, "ledger-smoke", group_id=None))
    received: list[bytes] = []
    try:
        partition = TopicPartition(topic, 0)
        consumer.assign([partition])
        consumer.seek(partition, first_offset)
        deadline = time.monotonic() + CONSUME_DEADLINE_SECONDS
        while len(received) < count and time.monotonic() < deadline:
            for records in consumer.poll(timeout_ms=POLL_TIMEOUT_MS).values():
                received.extend(r.value for r in records if r.value.startswith(run.encode()))
    finally:
        consumer.close()
    return KafkaRoundTrip(
        topic=topic,
        sent=count,
        received=len(received),
        in_order=received == payloads,
        seconds=time.monotonic() - started,
    )


@dataclass(frozen=True)
class DatabaseRoundTrip:
    migrations: list[str]
    written: tuple[str, int, int]
    read: tuple[str, int, int] | None


def db_round_trip(dsn: str) -> DatabaseRoundTrip:
    """Write a row into a migrated table and read it back, inside a transaction rolled back after,
    so that the demo leaves no trace in the projections."""
    import psycopg

    written = (f"smoke.{uuid.uuid4().hex[:8]}", 0, 42)
    with psycopg.connect(dsn) as db:
        migrations = [
            f"{version:04d}_{name}"
            for version, name in db.execute(
                "SELECT version, name FROM ledger.schema_migrations ORDER BY version"
            )
        ]
        with db.transaction(force_rollback=True):
            db.execute(
                "INSERT INTO ledger.projection_offsets (topic, partition, next_offset)"
                " VALUES (%s, %s, %s)",
                written,
            )
            row = db.execute(
                "SELECT topic, partition, next_offset FROM ledger.projection_offsets"
                " WHERE topic = %s",
                (written[0],),
            ).fetchone()
    read = (str(row[0]), int(row[1]), int(row[2])) if row else None
    return DatabaseRoundTrip(migrations=migrations, written=written, read=read)
