"""Fault scenarios of the projection writer (issue 16), on the fault suite's machinery
(test_faults.run: a stack of its own, the workload, the independent checker):

- `zombie-writer`: a second writer joins; the first, holding every batch it read for 2 s before
  its transaction (LEDGER_FAULT_HOLD_BEFORE_APPLY_SECONDS), is paused (SIGSTOP) inside that hold
  past its Kafka session timeout; the second takes its partitions and applies; the first is
  resumed, and its late batch is fenced by the stored offsets
  (ledger_projection_fenced_batches_total >= 1); the checker proves nothing applied twice.
- `db-faults`: the writer's transactions hold 2 s before their commit
  (LEDGER_FAULT_HOLD_IN_TRANSACTION_SECONDS, a pg_sleep); there its statement is cancelled three
  times as a statement_timeout would (57014, retried), a session holds billing_periods past its
  lock_timeout (retried), and PostgreSQL is ended six times (SIGQUIT, once SIGKILL): the writer
  waits and goes on; the checker proves nothing lost, nothing twice.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from pathlib import Path

import pytest

from tests.fault.supervisor import Supervisor
from tests.fault.test_faults import Scenario, run
from tests.harness import metric

FENCE_WAIT_SECONDS = 45.0
PAUSE_SECONDS = 40.0  # past the consumer's 30 s session timeout
LOCK_SECONDS = 45.0  # past the writer's 30 s lock_timeout, from before the next chunk
# The hooks (projections/writer.py, projections/store.py): every batch of the first writer waits
# this long, before its transaction (zombie-writer) or inside it before the commit (db-faults),
# so that a pause, a cancel or a kill lands there; larger batches keep its throughput up.
HOLD_SECONDS = "2"
HOOKED_BATCH_EVENTS = 2_000
KILLS = 6
# What the faults saw, by scenario, for the proofs after the run (the processes are gone then).
SEEN: dict[str, dict[str, float]] = {}


def _writer_metric(sup: Supervisor, name: str) -> float:
    assert sup.writer is not None
    return metric(sup.writer.metrics(wait_seconds=10), name)


def _zombie(sup: Supervisor, index: int, rng: random.Random) -> None:
    seen = SEEN.setdefault("zombie-writer", {"fenced": 0.0, "caught": 0.0})
    if index == 0:
        sup.restart_writer_with(
            {"LEDGER_FAULT_HOLD_BEFORE_APPLY_SECONDS": HOLD_SECONDS}, HOOKED_BATCH_EVENTS
        )
        sup.start_second_writer()
        time.sleep(8)  # it joins; the partitions are shared between the two
    if index == 1:
        seen["caught"] += sup.pause_writer_holding_a_batch(PAUSE_SECONDS)
        deadline = time.monotonic() + FENCE_WAIT_SECONDS
        while time.monotonic() < deadline and not seen["fenced"]:
            seen["fenced"] = _writer_metric(sup, "ledger_projection_fenced_batches_total")
            time.sleep(0.5)
        sup.log.note(f"batches fenced: {seen['fenced']:.0f}")


LOCKS: list[threading.Thread] = []


def _lock(sup: Supervisor, seen: dict[str, float]) -> None:
    seen["lock_waits"] += sup.hold_lock_on_the_writer("billing_periods", LOCK_SECONDS)


def _db_faults(sup: Supervisor, index: int, rng: random.Random) -> None:
    seen = SEEN.setdefault(
        "db-faults", {"cancelled": 0.0, "kills": 0.0, "kills_inside": 0.0, "lock_waits": 0.0}
    )
    if index == 0:  # the writer is idle by now: the faults come with the next chunks
        sup.restart_writer_with(
            {"LEDGER_FAULT_HOLD_IN_TRANSACTION_SECONDS": HOLD_SECONDS}, HOOKED_BATCH_EVENTS
        )
    if index == 1:  # each cancelled batch is tried again: the next cancel finds it in its hold
        for _ in range(3):
            seen["cancelled"] += sup.cancel_writer_in_hold()
            time.sleep(rng.uniform(0.2, 1.0))
    if index in (2, 4, 5):  # the batch a kill rolls back is tried again: the second kill finds
        for n in range(2):
            sig = signal.SIGKILL if (index, n) == (4, 1) else signal.SIGQUIT  # it in its hold
            seen["kills_inside"] += sup.kill_postgres_in_hold(sig)
            seen["kills"] += 1
            time.sleep(rng.uniform(0.2, 1.0))
    if index == 2:  # locked before the next chunk comes: its batches of purchases (each reads
        # billing_periods; March's close writes it) wait on the lock past the lock_timeout
        LOCKS.append(threading.Thread(target=_lock, args=(sup, seen), daemon=True))
        LOCKS[-1].start()
    if index == 3:
        LOCKS.pop().join()
    if index == 5:  # the run's last chunk: the writer's figures, before it is checked
        retried = {
            reason: _writer_metric(sup, f"ledger_projection_db_retries_total{{reason={reason}")
            for reason in ("QueryCanceled", "LockNotAvailable")
        }
        seen |= retried
        sup.log.note(f"retries seen by the writer: {retried}")


@pytest.mark.fault
@pytest.mark.timeout(900)
def test_a_zombie_writer_s_late_batch_is_fenced_and_nothing_applied_twice(tmp_path: Path) -> None:
    run(Scenario("zombie-writer", 1, 40, 3_000, 4, 0, _zombie), tmp_path)
    seen = SEEN["zombie-writer"]
    print(f"zombie-writer: {seen}")
    assert seen["caught"] == 1, "the writer was not paused while holding a batch"
    assert seen["fenced"] >= 1, "no batch fenced"


@pytest.mark.fault
@pytest.mark.timeout(900)
def test_database_faults_are_waited_for_and_nothing_lost_or_applied_twice(
    tmp_path: Path,
) -> None:
    run(Scenario("db-faults", 1, 40, 3_000, 6, 0, _db_faults), tmp_path)
    seen = SEEN["db-faults"]
    print(f"db-faults: {seen}")
    assert seen["kills"] == seen["kills_inside"] == KILLS, "PostgreSQL not killed inside a batch"
    assert seen["cancelled"] == 3, "the writer's statements not cancelled inside a batch"
    assert seen["QueryCanceled"] >= 3, "the cancelled statements were not retried"
    assert seen["lock_waits"] == 1 and seen["LockNotAvailable"] >= 1, "no lock_timeout tripped"
