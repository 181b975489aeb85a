"""streams/suspension.py: a worker frozen past its session writes nothing until it rejoins."""

from __future__ import annotations

import asyncio
import time

from ledger.kafka.topics import PARTITION_MARKER_KEY, PARTITION_MARKER_VALUE
from streams.authorizer import BatchAuthorizer
from streams.config import suspension_seconds
from streams.suspension import Suspension

LIMIT = 27.0


def test_ticking_on_time_never_suspends() -> None:
    s = Suspension(LIMIT)
    for second in range(200):
        s.tick(float(second), generation=3)
        assert not s.suspended(second + 0.5, generation=3)


def test_a_freeze_seen_at_the_write_suspends_until_the_generation_changes() -> None:
    s = Suspension(LIMIT)
    s.tick(100.0, generation=3)
    # SIGSTOP for 45 s; the batch in hand resumes before the tick does
    assert s.suspended(145.0, generation=3)
    s.tick(145.5, generation=3)
    assert s.suspended(146.0, generation=3)  # fetched after the resume, before the rejoin
    assert not s.suspended(150.0, generation=5)  # rejoined: its own partitions again
    s.tick(150.5, generation=5)
    assert not s.suspended(151.0, generation=5)


def test_a_freeze_seen_by_the_tick_suspends_the_next_batch() -> None:
    s = Suspension(LIMIT)
    s.tick(10.0, generation=1)
    s.tick(40.0, generation=1)
    assert s.suspended(40.1, generation=1)


def test_a_freeze_shorter_than_the_limit_does_not_suspend() -> None:
    s = Suspension(LIMIT)
    s.tick(10.0, generation=1)
    assert not s.suspended(10.0 + LIMIT - 1, generation=1)


def test_no_rebalance_after_the_freeze_means_still_a_member() -> None:
    s = Suspension(LIMIT)
    s.tick(0.0, generation=2)
    s.tick(30.0, generation=2)
    assert s.suspended(30.0 + LIMIT, generation=2)
    assert not s.suspended(30.0 + LIMIT + 1, generation=2)


def test_the_limit_is_the_session_less_a_heartbeat() -> None:
    assert suspension_seconds() == 9.0


class _Store:
    def __init__(self) -> None:
        self.writes: list[int] = []

    def get(self, partition: int, key: bytes) -> bytes | None:
        return None

    def write(
        self, partition: int, items: list[tuple[bytes, bytes]], changelog_offset: int
    ) -> None:
        self.writes.append(partition)


class _App:
    consumer_generation_id = 4


class _Record:
    topic = "ledger.commands"
    partition = 0
    offset = 0
    key = PARTITION_MARKER_KEY
    value = PARTITION_MARKER_VALUE


def _authorizer(app: _App, store: _Store, sent: list[str]) -> BatchAuthorizer:
    authorizer = BatchAuthorizer(app, store, "changelog", 4, {}, {})
    authorizer._producer = object()  # type: ignore[assignment]

    async def emit(producer: object, parts: object) -> None:
        sent.append("facts")
        app.consumer_generation_id += 1  # the group rebalanced while the facts were sent

    async def write_changelog(producer: object, parts: object) -> dict[int, int]:
        sent.append("changelog")
        return {0: 0}

    authorizer._emit = emit  # type: ignore[method-assign,assignment]
    authorizer._write_changelog = write_changelog  # type: ignore[method-assign,assignment]
    return authorizer


def test_a_batch_that_outlives_its_generation_writes_no_state() -> None:
    app, store, sent = _App(), _Store(), []
    authorizer = _authorizer(app, store, sent)
    asyncio.run(authorizer.handle({0: [_Record()]}))
    assert sent == ["facts"]  # identical duplicates at worst; no changelog, no store
    assert store.writes == []
    assert authorizer.gates._expected.get(0) in (None, 0)  # the gate did not move on


def test_a_frozen_worker_writes_nothing_until_it_rejoins() -> None:
    app, store, sent = _App(), _Store(), []
    authorizer = _authorizer(app, store, sent)
    authorizer.suspension.tick(time.monotonic() - 40.0, app.consumer_generation_id)
    asyncio.run(authorizer.handle({0: [_Record()]}))
    assert sent == [] and store.writes == []
