"""streams/suspension.py: a worker frozen past its session writes nothing until it rejoins."""

from __future__ import annotations

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
    assert suspension_seconds() == 27.0
