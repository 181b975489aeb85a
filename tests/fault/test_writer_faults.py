"""Fault scenarios of the projection writer (issue 16), on the fault suite's machinery
(test_faults.run: a stack of its own, the workload, the independent checker):

- `zombie-writer`: a second writer joins; the first is paused (SIGSTOP) inside a transaction past
  its Kafka session timeout, the second takes its partitions, then the first is resumed. The
  batch that comes late is fenced by the stored offsets (ledger_projection_fenced_batches_total)
  and the checker proves nothing applied twice.
- `db-faults`: the writers' statements cancelled as a statement_timeout would (57014), a session
  holding billing_periods past the writer's lock_timeout during the close of March, and
  PostgreSQL shut down at once (SIGQUIT) at moments a batch's transaction is open, 8 times: the
  writer waits and goes on; the checker proves nothing lost, nothing twice.
"""

from __future__ import annotations

import random
import time
from pathlib import Path

import pytest

from tests.fault.supervisor import Supervisor
from tests.fault.test_faults import Scenario, run
from tests.harness import metric

FENCE_WAIT_SECONDS = 45.0
PAUSE_SECONDS = 40.0  # past the consumer's 30 s session timeout
LOCK_SECONDS = 33.0  # past the writer's 30 s lock_timeout
# What the faults saw, by scenario, for the proofs after the run (the processes are gone then).
SEEN: dict[str, dict[str, float]] = {}


def _fenced(sup: Supervisor) -> float:
    total = 0.0
    for writer in sup.all_writers():
        if writer.alive():
            samples = writer.metrics(wait_seconds=10)
            total += metric(samples, "ledger_projection_fenced_batches_total")
    return total


def _zombie(sup: Supervisor, index: int, rng: random.Random) -> None:
    seen = SEEN.setdefault("zombie-writer", {"fenced": 0.0, "pauses": 0.0})
    if index == 0:
        sup.start_second_writer()
        time.sleep(8)  # it joins; the partitions are shared between the two
    if index in (1, 3) and not seen["fenced"]:
        sup.pause_writer(PAUSE_SECONDS)
        seen["pauses"] += 1
        deadline = time.monotonic() + FENCE_WAIT_SECONDS
        while time.monotonic() < deadline and not seen["fenced"]:
            seen["fenced"] = _fenced(sup)
            time.sleep(1)
        sup.log.note(f"batches fenced so far: {seen['fenced']:.0f}")


def _db_faults(sup: Supervisor, index: int, rng: random.Random) -> None:
    seen = SEEN.setdefault("db-faults", {"cancelled": 0.0, "kills": 0.0})
    if index == 0:
        for _ in range(3):
            seen["cancelled"] += sup.cancel_writer_statements()
            time.sleep(rng.uniform(0.2, 1.0))
    if index in (1, 2, 4):
        for _ in range(3 if index < 4 else 2):
            sup.kill_postgres_in_transaction()
            seen["kills"] += 1
            time.sleep(rng.uniform(0.5, 3.0))
    if index == 3:  # March's close was sent with this chunk: it waits behind the lock
        sup.hold_lock("billing_periods", LOCK_SECONDS)


@pytest.mark.fault
@pytest.mark.timeout(900)
def test_a_zombie_writer_s_late_batch_is_fenced_and_nothing_applied_twice(tmp_path: Path) -> None:
    run(Scenario("zombie-writer", 1, 40, 3_000, 5, 0, _zombie), tmp_path)
    seen = SEEN["zombie-writer"]
    assert seen["fenced"] >= 1, f"no batch fenced after {seen['pauses']:.0f} pause(s)"


@pytest.mark.fault
@pytest.mark.timeout(900)
def test_database_faults_are_waited_for_and_nothing_lost_or_applied_twice(
    tmp_path: Path,
) -> None:
    run(Scenario("db-faults", 1, 40, 3_000, 6, 0, _db_faults), tmp_path)
    seen = SEEN["db-faults"]
    assert seen["kills"] == 8
    assert seen["cancelled"] >= 1, "no statement of the writer cancelled"
