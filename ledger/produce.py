"""Putting commands and reference data on the log: `ledger produce FILE`, and the same producer for
the CLI's admin commands and the tests. kafka-python, with the delivery options of
ledger/kafka/settings.py (acks=all, idempotence on); every send is checked before we say it is
done."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from hashlib import blake2b
from pathlib import Path
from typing import Any
from uuid import uuid4

from ledger.errors import LedgerError
from ledger.kafka import topics
from ledger.kafka.batches import Outgoing, RecordTooLarge, send_batched
from ledger.kafka.partitioning import partition_for
from ledger.kafka.settings import aiokafka_producer_config, producer_config
from schemas import codec
from schemas.commands import (
    Command,
    Feature,
    HoldsExpireRequested,
    PartitionBarrier,
    PeriodCloseRequested,
    ReferenceChangeRequested,
    UpgradeRequested,
    barrier_key,
)
from schemas.reference import IspRegistered, PublisherRegistered, ReferenceRecord, reference_key

SEND_TIMEOUT_SECONDS = 60
PENDING_MAX = 10_000  # futures kept before we wait for the oldest ones


@dataclass
class ProduceReport:
    sent: int = 0
    invalid: list[tuple[int, str]] = field(default_factory=list)  # (line number, why)
    seconds: float = 0.0

    @property
    def per_second(self) -> float:
        return self.sent / self.seconds if self.seconds > 0 else 0.0


class LedgerProducer:
    """Commands keyed and partitioned by account, reference records keyed by entity."""

    def __init__(self, bootstrap_servers: str, partitions: int, client_id: str = "ledger-produce"):
        from kafka import KafkaProducer

        self.partitions = partitions
        self._producer = KafkaProducer(**producer_config(bootstrap_servers, client_id))
        self._pending: list[Any] = []

    def send_command(self, command: Command) -> Any:
        """Returns the send's future: its result (after flush) has the record's offset."""
        topic, partition, key, value = command_record(command, self.partitions)
        return self.send_raw(topic, key, value, partition)

    def send_reference(self, record: ReferenceRecord) -> Any:
        """Register or change an ISP or a publisher (issue 15): the change to every partition of
        ledger.commands, where the decisions see it in their order, then the record to the
        compacted ledger.reference (the latest values, for the API). Returns the last send's
        future."""
        future = None
        for topic, partition, key, value in reference_records(record, self.partitions):
            future = self.send_raw(topic, key, value, partition)
        return future

    def send_raw(self, topic: str, key: bytes | None, value: bytes, partition: int) -> Any:
        future = self._producer.send(topic, key=key, value=value, partition=partition)
        self._pending.append(future)
        if len(self._pending) >= PENDING_MAX:
            self._settle(len(self._pending) // 2)
        return future

    def _settle(self, count: int) -> None:
        done, self._pending = self._pending[:count], self._pending[count:]
        for future in done:
            future.get(timeout=SEND_TIMEOUT_SECONDS)  # raises if the broker refused it

    def flush(self) -> None:
        self._producer.flush(timeout=SEND_TIMEOUT_SECONDS)
        self._settle(len(self._pending))

    def close(self) -> None:
        self.flush()
        self._producer.close()

    def __enter__(self) -> LedgerProducer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def command_record(command: Command, partitions: int) -> Outgoing:
    """A command as LedgerProducer.send_command sends it: keyed and partitioned by account (a
    period close or an expiry barrier to the partition it names)."""
    if isinstance(command, PartitionBarrier):
        key, partition = barrier_key(command), command.partition
    else:
        key, partition = command.account_id, partition_for(command.account_id, partitions)
    return topics.COMMANDS, partition, key.encode(), codec.encode(command)


def send_in_batches(bootstrap_servers: str, records: Iterable[Outgoing], client_id: str) -> int:
    """Send records in aiokafka record batches, in order per partition, and wait until the broker
    has every one (acks=all, idempotence on); returns how many. For bulk loads such as the demo's
    months: kafka-python's `send` costs ~100 µs of CPU a record, a record batch ~3 µs (ledger
    bench), and that CPU is the ledger's when the two share a machine."""
    return asyncio.run(_send_in_batches(bootstrap_servers, records, client_id))


async def _send_in_batches(
    bootstrap_servers: str, records: Iterable[Outgoing], client_id: str
) -> int:
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(**aiokafka_producer_config(bootstrap_servers, client_id))
    await producer.start()
    try:
        return await send_batched(producer, records)
    except RecordTooLarge as error:
        raise LedgerError(str(error)) from None
    finally:
        await producer.stop()


def reference_commands(record: ReferenceRecord, partitions: int) -> list[ReferenceChangeRequested]:
    """A reference change goes to every partition (see ReferenceChangeRequested). Its id names
    the record's content: the same record sent twice is the same command (and fact) twice."""
    digest = blake2b(codec.encode(record), digest_size=12).hexdigest()
    return [
        ReferenceChangeRequested(
            command_id=f"reference-{digest}", record=record, partition=p, partitions=partitions,
            occurred_at=record.occurred_at,
        )
        for p in range(partitions)
    ]  # fmt: skip


def reference_records(record: ReferenceRecord, partitions: int) -> list[Outgoing]:
    """What send_reference sends, in order: the change to each partition of ledger.commands, then
    the record to the compacted ledger.reference."""
    out = [command_record(c, partitions) for c in reference_commands(record, partitions)]
    out.append((topics.REFERENCE, 0, reference_key(record).encode(), codec.encode(record)))
    return out


def close_commands(
    isp_id: str, period: str, partitions: int, command_id: str, occurred_at: Any
) -> list[PeriodCloseRequested]:
    """A period close goes to every partition (see PeriodCloseRequested)."""
    return [
        PeriodCloseRequested(
            command_id=command_id, isp_id=isp_id, period=period, partition=p,
            partitions=partitions, occurred_at=occurred_at,
        )
        for p in range(partitions)
    ]  # fmt: skip


def upgrade_commands(
    feature: Feature, partitions: int, occurred_at: datetime
) -> list[UpgradeRequested]:
    """An upgrade goes to every partition (see UpgradeRequested), once every worker runs a build
    that knows the feature. Its id names the feature: sent again, it is the same command (and
    fact) again, and the first activation's place in each partition stays."""
    return [
        UpgradeRequested(
            command_id=f"upgrade-{feature}", feature=feature, partition=p, partitions=partitions,
            occurred_at=occurred_at,
        )
        for p in range(partitions)
    ]  # fmt: skip


def expire_commands(
    as_of: datetime, partitions: int, command_id: str | None = None,
    occurred_at: datetime | None = None,
) -> list[HoldsExpireRequested]:  # fmt: skip
    """An expiry barrier goes to every partition (see HoldsExpireRequested): every hold whose
    `hold_expires_at` is at or before `as_of` expires, in each partition at that point of its
    order. The command id names the time (and a random tail: two barriers of one instant are two
    commands, the second one expiring nothing)."""
    command_id = command_id or f"expire-{as_of.astimezone(UTC):%Y%m%dT%H%M%SZ}-{uuid4().hex[:8]}"
    return [
        HoldsExpireRequested(
            command_id=command_id, as_of=as_of, partition=p, partitions=partitions,
            occurred_at=occurred_at or as_of,
        )
        for p in range(partitions)
    ]  # fmt: skip


def send_holds_expiry(
    bootstrap_servers: str, partitions: int, as_of: datetime | None = None
) -> list[HoldsExpireRequested]:
    """`ledger expire-holds`: the barrier at `as_of` (now by default) to every partition, each
    send confirmed by the broker."""
    commands = expire_commands(as_of or datetime.now(UTC), partitions)
    with LedgerProducer(bootstrap_servers, partitions, "ledger-expire-holds") as producer:
        for command in commands:
            producer.send_command(command).get(timeout=SEND_TIMEOUT_SECONDS)
    return commands


async def send_holds_expiry_async(
    producer: Any, partitions: int, as_of: datetime | None = None
) -> list[HoldsExpireRequested]:
    """The same from a process with a started AIOKafkaProducer (the API's timer, every minute):
    each copy sent and awaited (acks=all in the producer's settings)."""
    commands = expire_commands(as_of or datetime.now(UTC), partitions)
    for command in commands:
        topic, partition, key, value = command_record(command, partitions)
        await producer.send_and_wait(topic, key=key, value=value, partition=partition)
    return commands


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    try:
        handle = path.open("rb")
    except OSError as error:
        raise LedgerError(f"cannot read {path}: {error.strerror}") from None
    with handle:
        for number, line in enumerate(handle, start=1):
            if line.strip():
                yield number, line.strip()


def _decode_line(raw: bytes) -> Command | ReferenceRecord:
    tag = b""
    with contextlib.suppress(ValueError, AttributeError):  # undecodable: the codec says why
        tag = str(json.loads(raw).get("type", "")).encode()
    if tag.startswith((b"isp.", b"publisher.")):
        return codec.decode_reference(raw)
    return codec.decode_command(raw)


def produce_lines(
    producer: LedgerProducer, lines: Iterable[tuple[int, bytes]], send_invalid: bool
) -> ProduceReport:
    report = ProduceReport()
    started = time.monotonic()
    for number, raw in lines:
        try:
            message = _decode_line(raw)
        except codec.InvalidMessage as invalid:
            report.invalid.append((number, str(invalid)))
            if send_invalid:  # poison on purpose: the worker must dead-letter it
                producer.send_raw(topics.COMMANDS, None, raw, 0)
                report.sent += 1
            continue
        if isinstance(message, IspRegistered | PublisherRegistered):
            producer.send_reference(message)
        else:
            producer.send_command(message)
        report.sent += 1
    producer.flush()
    report.seconds = time.monotonic() - started
    return report


def produce_file(
    path: Path, bootstrap_servers: str, partitions: int, send_invalid: bool = False
) -> ProduceReport:
    with LedgerProducer(bootstrap_servers, partitions) as producer:
        return produce_lines(producer, _lines(path), send_invalid)
