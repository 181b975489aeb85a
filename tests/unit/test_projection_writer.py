"""The projection writer's batches, without Kafka or PostgreSQL (issue 13): a batch prepared a
chunk at a time is the batch prepared at once; a repeat in a batch is a duplicate, another fact
under the same id stops it; a batch closes full, or BATCH_SECONDS_MAX after its first record once
the batch in flight is done; and the writer lowers its CPU priority, never raises it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Any

import msgspec
import pytest

from ledger.core.runner import LocalAuthorizer
from ledger.kafka import topics
from projections import store
from projections.writer import BATCH_SECONDS_MAX, Prepared, Writer, prepare, prepare_more
from schemas import codec
from schemas.facts import Fact
from tests import builders as b


@dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: int = 0


def _facts() -> list[Fact]:
    ledger = LocalAuthorizer(b.REFERENCE)
    commands: list[Any] = [b.open_account("acc-1"), b.open_account("acc-2")]
    commands += [b.purchase(f"acc-{1 + i % 2}", 100 + i, b.at(10 + i)) for i in range(40)]
    commands.append(b.block("acc-1", b.at(60)))
    return [f for origin, c in enumerate(commands, 1) for f in ledger.handle(c, origin=origin)]


def _records(facts: list[Fact]) -> list[_Record]:
    return [
        _Record(topics.EVENTS, i % 3, i // 3, b"k", codec.encode(fact))
        for i, fact in enumerate(facts)
    ]


def test_a_batch_prepared_a_chunk_at_a_time_is_the_batch_prepared_at_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    facts = _facts()
    records = _records([*facts, facts[3]])  # and a redelivery: a duplicate
    whole = prepare(records)
    monkeypatch.setattr("projections.writer.DECODE_CHUNK_RECORDS", 7)
    pieces = Prepared(store.Batch(topics.EVENTS))
    for start in range(0, len(records), 10):
        asyncio.run(prepare_more(pieces, records[start : start + 10]))
    assert pieces.next_offsets == whole.next_offsets
    assert pieces.incoming == whole.incoming
    assert list(pieces.batch.unique) == list(whole.batch.unique) == [f.event_id for f in facts]
    assert pieces.batch.rows == whole.batch.rows
    assert (whole.batch.facts, whole.records) == (len(facts) + 1, len(facts) + 1)


def test_another_fact_under_an_id_of_the_batch_stops_it() -> None:
    facts = _facts()
    forged = msgspec.structs.replace(facts[5], event_id=facts[4].event_id)
    with pytest.raises(store.ConflictingFacts, match=facts[4].event_id):
        prepare(_records([*facts[:5], forged]))


class _Consumer:
    """getmany over records that arrive at given seconds after the start."""

    def __init__(self, arrivals: list[float]) -> None:
        self.started = time.monotonic()
        self.arrivals = sorted(arrivals)
        self.offset = 0

    async def getmany(self, timeout_ms: int, max_records: int) -> dict[int, list[_Record]]:
        deadline = time.monotonic() + timeout_ms / 1000
        while True:
            now = time.monotonic() - self.started
            ready = [at for at in self.arrivals if at <= now][:max_records]
            if ready:
                self.arrivals = self.arrivals[len(ready) :]
                records = [self._marker() for _ in ready]
                return {0: records}
            if time.monotonic() >= deadline:
                return {}
            await asyncio.sleep(0.002)

    def _marker(self) -> _Record:
        self.offset += 1
        key, value = topics.PARTITION_MARKER_KEY, topics.PARTITION_MARKER_VALUE
        return _Record(topics.EVENTS, 0, self.offset - 1, key, value)


def _next_batch(
    arrivals: list[float], in_flight_seconds: float | None = None, fails: bool = False,
    batch_events_max: int = 100,
) -> tuple[Prepared | None, float]:  # fmt: skip
    """The batch the writer closes, and how long after the start it closed it."""

    async def flight() -> dict[int, int]:
        await asyncio.sleep(in_flight_seconds or 0)
        if fails:
            raise RuntimeError("the database said no")
        return {}

    async def main() -> tuple[Prepared | None, float]:
        writer = Writer("kafka", "postgresql://", batch_events_max=batch_events_max)
        consumer = _Consumer(arrivals)
        in_flight = None if in_flight_seconds is None else asyncio.create_task(flight())
        prepared = await writer._next_batch(consumer, in_flight)  # type: ignore[arg-type]
        closed = time.monotonic() - consumer.started
        if in_flight is not None:
            await asyncio.wait([in_flight])
            assert (in_flight.exception() is not None) == fails
        return prepared, closed

    return asyncio.run(main())


def test_under_light_load_a_batch_closes_after_its_first_record_waited() -> None:
    prepared, closed = _next_batch([0.0, 0.03, 0.6])
    assert prepared is not None and prepared.records == 2
    assert BATCH_SECONDS_MAX <= closed < BATCH_SECONDS_MAX + 0.2


def test_a_full_batch_closes_at_once() -> None:
    prepared, closed = _next_batch([0.0] * 30, batch_events_max=10)
    assert prepared is not None and prepared.records == 10
    assert closed < BATCH_SECONDS_MAX


def test_a_batch_fills_until_the_one_in_flight_is_done() -> None:
    prepared, closed = _next_batch([0.0, 0.05, 0.25, 0.9], in_flight_seconds=0.4)
    assert prepared is not None and prepared.records == 3
    assert 0.4 <= closed < 0.6


def test_nothing_read_and_nothing_in_flight_is_no_batch() -> None:
    prepared, _ = _next_batch([])
    assert prepared is None


def test_a_failed_batch_in_flight_closes_the_next_at_once() -> None:
    _, closed = _next_batch([0.0, 0.01, 0.02, 0.03], in_flight_seconds=0.0, fails=True)
    assert closed < BATCH_SECONDS_MAX


def test_the_writer_lowers_its_priority_and_never_raises_it() -> None:
    script = (
        "import os; from projections.writer import lower_priority as lower;"
        " start = os.nice(0); print(start, lower(start + 3), lower(start + 1), os.nice(0))"
    )
    found = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                           check=True).stdout.split()  # fmt: skip
    start = int(found[0])
    assert [int(n) for n in found[1:]] == [start + 3, start + 3, start + 3]
