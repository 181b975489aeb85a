"""The stream layer's own logic, without a broker: the in-order gate, the reference reader and the
API's decision index."""

from __future__ import annotations

import asyncio
import signal
from dataclasses import dataclass
from typing import Any

import pytest

from ledger.api.listener import DecisionListener, wait_key
from ledger.core.runner import LocalAuthorizer
from schemas import codec
from streams import ordering
from streams.reference_reader import ReferenceReader
from tests import builders as b
from tests.builders import REFERENCE


@dataclass
class Message:
    partition: int
    offset: int


class FakeStore(dict[bytes, bytes]):
    def __init__(self) -> None:
        super().__init__()
        self.persisted: list[Any] = []

    def set_persisted_offset(self, tp: Any, offset: int) -> None:
        self.persisted.append((tp, offset))


class FakeTopic:
    def __init__(self) -> None:
        self.sent: list[tuple[bytes, bytes, int]] = []

    async def send(self, *, key: bytes, value: bytes, partition: int, callback: Any) -> None:
        self.sent.append((key, value, partition))


class FakeTable:
    def __init__(self) -> None:
        self.data = FakeStore()
        self.changelog_topic = FakeTopic()

    def get(self, key: bytes) -> bytes | None:
        return self.data.get(key)


@pytest.fixture
def no_restart(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int]]:
    kills: list[tuple[int, int]] = []
    monkeypatch.setattr(ordering.os, "kill", lambda pid, sig: kills.append((pid, sig)))
    monkeypatch.setattr(ordering.Restart, "requested", False)
    return kills


def test_gate_admits_in_order_and_redeliveries(no_restart: list[tuple[int, int]]) -> None:
    table = FakeTable()
    gate = ordering.InOrder(table, "ledger.commands", {0: 10})
    for offset in (10, 11, 12):
        assert gate.admit(Message(0, offset))
        asyncio.run(gate.done(Message(0, offset)))
    assert table.data[ordering.PROGRESS_KEY] == b"13"  # progress stored with the state
    assert table.changelog_topic.sent[-1] == (ordering.PROGRESS_KEY, b"13", 0)
    assert gate.admit(Message(0, 11))  # a redelivery: processed again, harmlessly
    asyncio.run(gate.done(Message(0, 11)))
    assert table.data[ordering.PROGRESS_KEY] == b"13"
    assert no_restart == []


def test_gate_refuses_a_gap_and_asks_for_a_restart(no_restart: list[tuple[int, int]]) -> None:
    gate = ordering.InOrder(FakeTable(), "ledger.commands", {0: 10})
    assert not gate.admit(Message(0, 12))  # 10 and 11 never came
    assert ordering.Restart.requested
    assert no_restart and no_restart[0][1] == signal.SIGTERM
    assert not gate.admit(Message(0, 10))  # stopping: nothing more is processed


def test_gate_resumes_from_stored_progress_after_a_rebalance(
    no_restart: list[tuple[int, int]],
) -> None:
    table = FakeTable()
    table.data[ordering.PROGRESS_KEY] = b"40"
    gate = ordering.InOrder(table, "ledger.events", {0: 7})
    assert gate.admit(Message(0, 40))
    gate.forget()
    assert gate.admit(Message(0, 35))  # below: a redelivery
    assert not ordering.Restart.requested


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
    assert listener.purchases["p1"] == fact  # the conflict did not replace the decision
