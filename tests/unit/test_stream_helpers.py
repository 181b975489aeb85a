"""The stream layer's own logic, without a broker: the in-order gates, the reference reader and the
API's decision index."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from prometheus_client import REGISTRY

from ledger.api.listener import DecisionListener, wait_key
from ledger.api.purchases import Purchase
from ledger.core.runner import LocalAuthorizer
from ledger.kafka.reference import ReferenceReader
from schemas import codec
from streams.gate import Gates
from tests import builders as b
from tests.builders import REFERENCE


@dataclass(frozen=True)
class Record:
    offset: int


def _records(*offsets: int) -> list[Record]:
    return [Record(offset) for offset in offsets]


def _offsets(records: Sequence[Any]) -> list[int]:
    return [record.offset for record in records]


class Stored:
    """A partition's stored next offset (the summary's), counting how often it is read."""

    def __init__(self, next_offset: int = 0) -> None:
        self.next_offset = next_offset
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.next_offset


def _gaps(topic: str, outcome: str) -> float:
    return (
        REGISTRY.get_sample_value("ledger_stream_gaps_total", {"topic": topic, "outcome": outcome})
        or 0.0
    )


def test_gate_admits_from_the_expected_offset_and_drops_redeliveries() -> None:
    gates = Gates("gate.redeliveries", {0: 10})
    stored = Stored()
    admitted, seek = gates.admit(0, _records(8, 9, 10, 11, 12), stored)
    assert (_offsets(admitted), seek) == ([10, 11, 12], None)
    gates.done(0, 13)
    # A batch of redeliveries only: nothing to do, no seek.
    assert gates.admit(0, _records(11, 12), stored) == ([], None)
    admitted, seek = gates.admit(0, _records(12, 13, 14), stored)
    assert (_offsets(admitted), seek) == ([13, 14], None)
    assert stored.reads == 1  # the expectation is in memory after the first batch
    assert _gaps("gate.redeliveries", "sought") == 0


def test_a_gap_asks_for_a_seek_back_and_admits_nothing() -> None:
    gates = Gates("gate.gap", {0: 10})
    stored = Stored()
    assert gates.admit(0, _records(12, 13), stored) == ((), 10)  # 10 and 11 were lost
    assert _gaps("gate.gap", "sought") == 1
    # The fetch from the seek delivers them: admitted, and the seek is settled.
    admitted, seek = gates.admit(0, _records(10, 11, 12, 13), stored)
    assert (_offsets(admitted), seek) == ([10, 11, 12, 13], None)
    gates.done(0, 14)
    # A later gap is another seek, not a hole.
    assert gates.admit(0, _records(16), stored) == ((), 14)
    assert (_gaps("gate.gap", "sought"), _gaps("gate.gap", "hole")) == (2, 0)


def test_after_a_seek_a_batch_starting_past_the_expected_offset_is_a_hole() -> None:
    gates = Gates("gate.hole", {0: 10})
    stored = Stored()
    assert gates.admit(0, _records(12, 13), stored) == ((), 10)
    # Fetched again from 10, the log starts at 12: nothing in between (a hole in the log).
    admitted, seek = gates.admit(0, _records(12, 13), stored)
    assert (_offsets(admitted), seek) == ([12, 13], None)
    assert (_gaps("gate.hole", "sought"), _gaps("gate.hole", "hole")) == (1, 1)
    gates.done(0, 14)
    # The hole is settled: the next gap is sought again.
    assert gates.admit(0, _records(20), stored) == ((), 14)


def test_a_seek_settled_by_redeliveries_only_is_sought_again() -> None:
    gates = Gates("gate.resought", {0: 10})
    stored = Stored()
    assert gates.admit(0, _records(12), stored) == ((), 10)
    assert gates.admit(0, _records(8, 9), stored) == ([], None)  # nothing past 10 this time
    assert gates.admit(0, _records(12), stored) == ((), 10)  # not taken for a hole
    assert _gaps("gate.resought", "hole") == 0


def test_partitions_are_gated_apart() -> None:
    gates = Gates("gate.partitions", {0: 10, 1: 0})
    assert gates.admit(0, _records(12), Stored()) == ((), 10)
    admitted, seek = gates.admit(1, _records(0, 1), Stored())
    assert (_offsets(admitted), seek) == ([0, 1], None)
    # Partition 1 starting past its expected offset after partition 0's seek is a gap, not a hole.
    gates.done(1, 2)
    assert gates.admit(1, _records(5), Stored()) == ((), 2)


@pytest.mark.parametrize(
    ("stored_next", "start", "expected"),
    [
        (0, 0, 0),  # nothing stored, the log's start
        (0, 25, 25),  # nothing stored, the group's committed offset
        (40, 7, 40),  # the summary is ahead of the committed offset (committed lags the writes)
        (40, 50, 50),  # the log starts past the summary (retention removed the records between)
    ],
)
def test_the_expected_offset_is_the_stored_one_or_the_start(
    stored_next: int, start: int, expected: int
) -> None:
    gates = Gates("gate.expected", {3: start})
    stored = Stored(stored_next)
    assert gates.expected(3, stored) == expected
    assert gates.expected(3, stored) == expected
    assert stored.reads == 1


def test_a_partition_without_a_start_begins_at_its_stored_offset() -> None:
    gates = Gates("gate.nostart", {})
    assert gates.expected(5, Stored(0)) == 0
    assert gates.expected(6, Stored(17)) == 17


def test_forget_goes_back_to_the_stored_offset_and_drops_pending_seeks() -> None:
    gates = Gates("gate.forget", {0: 10})
    stored = Stored(10)
    assert gates.admit(0, _records(12), stored) == ((), 10)
    gates.forget()  # a rebalance: another worker decided up to 29 meanwhile
    stored.next_offset = 30
    admitted, seek = gates.admit(0, _records(28, 29, 30, 31), stored)
    assert (_offsets(admitted), seek) == ([30, 31], None)
    assert stored.reads == 2
    gates.forget()
    # The seek pending before forget() is gone: a gap is sought, not taken for a hole.
    assert gates.admit(0, _records(12), Stored(10)) == ((), 10)
    gates.forget()
    assert gates.admit(0, _records(12), Stored(10)) == ((), 10)
    assert _gaps("gate.forget", "hole") == 0


def test_reference_reader_keeps_the_latest_records_and_skips_invalid_ones() -> None:
    reader = ReferenceReader("unused:1")
    reader.apply(codec.encode(b.ORANGE))
    reader.apply(codec.encode(b.CANALPLAY))
    reader.apply(b"{not json")
    reader.apply(None)
    assert reader.reference.isps["orange"] == b.ORANGE
    assert reader.reference.publishers["canalplay"] == b.CANALPLAY
    assert (reader.records_read, reader.invalid) == (2, 1)


def test_decision_listener_answers_waiters_and_indexes_purchases() -> None:
    ledger = LocalAuthorizer(REFERENCE)
    ledger.handle(b.open_account("acct"))
    command = b.purchase("acct", 266, purchase_id="p1")
    (fact,) = ledger.handle(command, origin=1)
    (conflict,) = ledger.handle(b.purchase("acct", 267, purchase_id="p1"), origin=2)

    async def scenario() -> Any:
        listener = DecisionListener("unused:1", partitions=1)
        key = wait_key(fact)
        assert key is not None
        future = listener.expect(key)
        listener.apply(codec.encode(conflict))  # another body's answer: not this waiter's
        assert not future.done()
        listener.apply(codec.encode(fact))
        listener.apply(b"garbage")
        return await asyncio.wait_for(future, 1), listener

    answered, listener = asyncio.run(scenario())
    assert answered == fact
    # the conflict did not replace it; what is kept is the decision, not the whole fact
    assert listener.purchases[(fact.publisher_id, "p1")] == Purchase.of_fact(fact)
