"""The authorizer of one partition, in memory: what a stream worker does for each command, without
the stream. Used by the benchmarks, the simulator's dry run and the tests; the faust agent keeps the
same states in tables instead of a dict."""

from __future__ import annotations

from ledger.core.authorizer import (
    Context,
    EventTime,
    Policy,
    advance,
    decide_close,
    evolve,
    evolve_close,
    step,
)
from ledger.core.payment import decide_expiry, due_holds, open_holds_of
from ledger.core.reference import Reference
from ledger.core.state import AccountState, ClosedPeriods
from schemas.commands import Command, HoldsExpireRequested, PeriodCloseRequested
from schemas.facts import Fact
from schemas.reference import ReferenceRecord


class LocalAuthorizer:
    """One partition: its account states, closed periods and event-time watermark (`progress`,
    kept as the batch keeps it in its summary). To decide several partitions' commands as the
    stream does, use one LocalAuthorizer per partition: one alone shares a watermark among them,
    which only makes a difference for an ISP with an allowed lateness."""

    def __init__(self, reference: Reference, policy: Policy | None = None) -> None:
        self.states: dict[str, AccountState] = {}
        self.closed = ClosedPeriods()
        self.progress = EventTime()
        self._policy = policy or Policy()
        self._context = Context(reference, self.closed.by_isp, self._policy, progress=self.progress)

    @property
    def reference(self) -> Reference:
        return self._context.reference

    def update_reference(self, record: ReferenceRecord) -> None:
        self._context = Context(
            self.reference.with_record(record),
            self.closed.by_isp,
            self._policy,
            progress=self.progress,
        )

    def handle(self, command: Command, origin: int | None = None) -> list[Fact]:
        if isinstance(command, PeriodCloseRequested):
            fact = decide_close(self.closed, command, self.reference)
            evolve_close(self.closed, fact, command)
            advance(self.progress, command, self.reference, fact)
            return [fact]
        if isinstance(command, HoldsExpireRequested):
            return self._expire(command, origin)
        decision = step(self.states.get(command.account_id), command, self._context, origin)
        advance(self.progress, command, self.reference)
        if decision.state is not None:
            self.states[command.account_id] = decision.state
        return decision.facts

    def _expire(self, command: HoldsExpireRequested, origin: int | None) -> list[Fact]:
        """As the batch does (ledger/core/batch.py), from every state instead of an index."""
        facts: list[Fact] = []
        index = open_holds_of(self.states.values())
        for _, payment_id, account_id in due_holds(index, int(command.as_of.timestamp())):
            state = self.states[account_id]
            fact = decide_expiry(state, payment_id, command, origin)
            if fact is not None:
                evolve(state, fact, self._policy)
                facts.append(fact)
        return facts
