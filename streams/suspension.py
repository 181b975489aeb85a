"""A worker that was frozen past its session timeout is a zombie until it rejoins the group.

SIGSTOP, a VM pause or a swapped-out process freeze both of faust's threads: no heartbeat goes
out, the broker takes the worker out of the group after the session timeout and another worker
takes its partitions, restores their state from the changelog and decides on. When the frozen
worker runs again, its batch in hand goes on (tests/fault, scenario `pause`): its facts are
identical duplicates (decided from the same state), but its changelog entries land after the new
owner's, so whoever restores the partition next reads an older summary over newer account
states, and would re-decide from there. aiokafka finds out only at its next heartbeat
(UNKNOWN_MEMBER_ID, then a rejoin with a revoke).

The worker's event loop ticks (streams/app.py, every TICK_SECONDS); a gap between ticks, or since
the last tick at a write, longer than the session timeout less a heartbeat interval means the
heartbeats stopped as long: the batch handler drops the batch in hand (nothing of it is in memory
yet: streams/authorizer.py) and every batch after it until the group's generation changes (the
rejoin; a batch begun in another generation than it ends in is dropped too). If no rebalance
comes within that time again, the worker had kept its membership (its heartbeat thread was not
frozen): it goes on. A freeze between the last check and the producer's send is not covered: the
check narrows the window to the few microseconds before a batch's records are handed over.
"""

from __future__ import annotations

import logging

log = logging.getLogger("ledger.streams.suspension")

TICK_SECONDS = 0.5


class Suspension:
    def __init__(self, limit_seconds: float) -> None:
        self._limit = limit_seconds
        self._last: float | None = None
        self._since: float | None = None  # when a freeze was seen; None: none in this generation
        self._generation: int | None = None  # the group generation the freeze was seen in

    def tick(self, now: float, generation: int) -> None:
        self._seen(now, generation)
        self._last = now

    def suspended(self, now: float, generation: int) -> bool:
        """Whether a batch must not be written now, in this generation of the group."""
        self._seen(now, generation)
        if self._since is None:
            return False
        if generation != self._generation:
            self._since = None  # rejoined: what the worker owns now is its own
            return False
        if now - self._since > self._limit:
            log.warning("no rebalance %.0f s after a freeze: still a member, going on", self._limit)
            self._since = None
            return False
        return True

    def _seen(self, now: float, generation: int) -> None:
        if self._last is not None and now - self._last > self._limit and self._since is None:
            log.warning("the worker was frozen for %.1f s, past its session: writing nothing"
                        " until it rejoins the group", now - self._last)  # fmt: skip
            self._since = now
            self._generation = generation
