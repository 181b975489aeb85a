"""Each partition's commands in offset order, every one of them, whatever the fetch delivered.

A ledger cannot decide out of order, and faust 0.15.3 was measured to drop fetched records around
rebalances (streams/fetch.py). The gate knows the next offset it expects per partition: from
memory, else from the partition's summary (ledger/core/batch.py: written after each batch, in
the accounts changelog), else where the worker found the partition at start (the group's
committed offset, or the log's start). Of a fetched batch it admits the records from that offset
on, contiguous:

- records below it are redeliveries: dropped (their batch was written whole before the summary
  that says so, or before the commit that moved the group past them);
- a batch starting past it means records were lost in delivery: the gate asks for a seek back to
  the expected offset (the fetch delivers them again) and admits nothing. If, after that seek,
  the partition starts past the expected offset again, the broker has nothing in between (a hole
  in the log, as compaction or a transaction marker leaves): it is admitted and counted.

A seek costs a round trip; the worker used to stop and restart on every such gap (~2.5 s of p99
latency in the benchmark, issue 13).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from prometheus_client import Counter

log = logging.getLogger("ledger.streams.gate")

GAPS = Counter(
    "ledger_stream_gaps_total",
    "Fetched batches that started past the expected offset: sought back (or a hole in the log)",
    ["topic", "outcome"],
)


class Gates:
    def __init__(self, topic: str, starts: dict[int, int]) -> None:
        self._topic = topic
        self._starts = starts
        self._expected: dict[int, int] = {}
        self._sought: dict[int, int] = {}

    def forget(self) -> None:
        """On a rebalance: what another worker did meanwhile is in the changelog, not in memory."""
        self._expected.clear()
        self._sought.clear()

    def expected(self, partition: int, stored: Callable[[], int]) -> int:
        found = self._expected.get(partition)
        if found is None:
            found = max(stored(), self._starts.get(partition, 0))
            self._expected[partition] = found
        return found

    def admit(
        self, partition: int, records: Sequence[Any], stored: Callable[[], int]
    ) -> tuple[Sequence[Any], int | None]:
        """The records to process now, and the offset to seek the partition to (None: no seek).
        `stored` gives the partition's stored next offset (read only when not in memory)."""
        expected = self.expected(partition, stored)
        first = 0
        while first < len(records) and records[first].offset < expected:
            first += 1
        admitted = records[first:]
        if not admitted or admitted[0].offset == expected:
            self._sought.pop(partition, None)
        elif self._sought.get(partition) == expected:
            GAPS.labels(self._topic, "hole").inc()
            log.warning("%s[%d]: no record between %d and %d in the log: going on", self._topic,
                        partition, expected, admitted[0].offset)  # fmt: skip
            self._sought.pop(partition, None)
        else:
            GAPS.labels(self._topic, "sought").inc()
            log.info("%s[%d]: fetched from %d, expected %d: seeking back", self._topic, partition,
                     admitted[0].offset, expected)  # fmt: skip
            self._sought[partition] = expected
            return (), expected
        return admitted, None

    def done(self, partition: int, next_offset: int) -> None:
        self._expected[partition] = next_offset
