"""Each partition's records in offset order, every one of them, whatever faust delivers.

Measured with faust-streaming 0.15.3: around a rebalance, records already fetched for a partition
can be dropped while later ones are delivered, and faust then counts the dropped offsets as done
when later ones are acknowledged (transport/consumer.py, _new_offset fills "gaps"). In
test_kill_9_mid_stream_changes_nothing that showed as purchases decided before the opening of
their account, which had been skipped. A seek back does not help: faust's read-offset filter
drops the records fetched again. A ledger cannot decide out of order, so:

- every agent acknowledges its records itself (`noack` streams), one by one, in order;
- an InOrder gate knows the next offset it expects per partition: from memory, else from its
  progress entry in the agent's table (written with the agent's state, in the same changelog
  partition), else where the worker found the partition at start;
- a record below it is a redelivery and is processed again (the processors are idempotent);
- a record above it means records were lost in delivery: it is not acknowledged, so nothing is
  committed past the gap, and the worker stops gracefully and is started again by `ledger worker`
  (crash-only: the restart resumes at the last committed offset, in order).
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any

from prometheus_client import Counter

from streams.state import put_state

log = logging.getLogger("ledger.streams.ordering")
PROGRESS_KEY = b"\x00next-offset"  # ids start with a letter or digit: no clash with a real key
EXIT_RESTART = 75  # EX_TEMPFAIL: `ledger worker` starts the worker again

GAPS = Counter(
    "ledger_stream_gaps_total", "Records delivered past a gap: the worker restarts", ["topic"]
)


class Restart:
    """Set once a gate has asked for a restart; the worker then exits with EXIT_RESTART."""

    requested = False


def request_restart(reason: str) -> None:
    if not Restart.requested:
        Restart.requested = True
        log.warning("restarting the worker: %s", reason)
        os.kill(os.getpid(), signal.SIGTERM)  # faust stops gracefully: commits what was acked


class InOrder:
    def __init__(self, table: Any, topic: str, starts: dict[int, int]) -> None:
        self._table = table
        self._topic = topic
        self._starts = starts
        self._expected: dict[int, int] = {}

    def forget(self) -> None:
        """On a rebalance: what another worker did meanwhile is in the table, not in memory."""
        self._expected.clear()

    def _expected_for(self, partition: int) -> int:
        found = self._expected.get(partition)
        if found is None:
            raw = self._table.get(PROGRESS_KEY)  # the current event's partition of the table
            start = self._starts.get(partition, 0)  # committed when this worker started
            found = max(int(raw), start) if raw is not None else start
            self._expected[partition] = found
        return found

    def admit(self, message: Any) -> bool:
        """True: process this record now. False: leave it unacknowledged; the worker restarts."""
        expected = self._expected_for(message.partition)
        if message.offset <= expected and not Restart.requested:
            return True
        if message.offset > expected:
            GAPS.labels(self._topic).inc()
            request_restart(
                f"{self._topic}[{message.partition}]: record {message.offset} came before "
                f"{expected}"
            )
        return False

    async def done(self, message: Any) -> None:
        """The record was processed: move the partition's expectation past it, and store it.

        Progress is written with every record, before it is acknowledged: so it is never behind
        the committed offset, and a record above it is always a real gap, never an artefact of
        progress written lazily (that made a worker taking over a partition see a false gap)."""
        partition, offset = message.partition, message.offset
        if offset + 1 <= self._expected_for(partition):
            return  # a redelivery
        self._expected[partition] = offset + 1
        await put_state(self._table, PROGRESS_KEY, str(offset + 1).encode(), partition)
