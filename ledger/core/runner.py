"""The authorizer of one partition, in memory: what a stream worker does for each command, without
the stream. Used by the benchmarks, the simulator's dry run and the tests; the faust agent keeps the
same states in tables instead of a dict."""

from __future__ import annotations

from collections.abc import Iterable

from ledger.core.authorizer import (
    Context,
    EventTime,
    Policy,
    advance,
    decide_close,
    decide_reference_change,
    decide_upgrade,
    evolve,
    evolve_close,
    step,
)
from ledger.core.payment import decide_expiry, due_holds, open_holds_of
from ledger.core.reference import BEFORE_EVERY_COMMAND, PartitionReference, Reference
from ledger.core.state import AccountState, ClosedPeriods
from schemas.commands import (
    Command,
    HoldsExpireRequested,
    PeriodCloseRequested,
    ReferenceChangeRequested,
    UpgradeRequested,
)
from schemas.facts import Fact
from schemas.reference import ReferenceRecord


class LocalAuthorizer:
    """One partition: its account states, closed periods, reference data (`reference`, changed
    by the reference commands it handles, issue 15) and event-time watermark (`progress`, kept as
    the batch keeps it in its summary). To decide several partitions' commands as the stream
    does, use one LocalAuthorizer per partition: one alone shares a watermark among them, which
    only makes a difference for an ISP with an allowed lateness.

    `reference` is what the partition knows before its first command (a test's or a benchmark's
    ISPs and publishers, every command sees them); empty by default, as a partition of the stream
    starts. Commands are decided in the order they are handled, so every version a reference
    command adds is seen by every later command (the batch tells versions apart by offset
    because it may decide a command again; this runner never does)."""

    def __init__(
        self,
        reference: Reference | PartitionReference | Iterable[ReferenceRecord] = (),
        policy: Policy | None = None,
    ) -> None:
        self.states: dict[str, AccountState] = {}
        self.closed = ClosedPeriods()
        self.progress = EventTime()
        self._policy = policy or Policy()
        if not isinstance(reference, PartitionReference):
            reference = PartitionReference.of(reference)
        self.reference = reference
        self._context = Context(reference, self.closed.by_isp, self._policy, progress=self.progress)

    def update_reference(self, record: ReferenceRecord) -> list[Fact]:
        """The record as a reference command of this partition (as LedgerProducer.send_reference
        sends it), decided now."""
        command = ReferenceChangeRequested(
            command_id="local-reference",
            record=record,
            partition=0,
            partitions=1,
            occurred_at=record.occurred_at,
        )
        return self.handle(command)

    def handle(self, command: Command, origin: int | None = None) -> list[Fact]:
        if isinstance(command, ReferenceChangeRequested):
            return self._change_reference(command)
        if isinstance(command, UpgradeRequested):
            at = BEFORE_EVERY_COMMAND if origin is None else origin
            self.reference.activate(command.feature, at)
            return [decide_upgrade(command)]
        if isinstance(command, PeriodCloseRequested):
            fact = decide_close(self.closed, command, self._context, origin)
            evolve_close(self.closed, fact, command)
            advance(self._context, command, origin, fact)
            return [fact]
        if isinstance(command, HoldsExpireRequested):
            return self._expire(command, origin)
        decision = step(self.states.get(command.account_id), command, self._context, origin)
        advance(self._context, command, origin)
        if decision.state is not None:
            self.states[command.account_id] = decision.state
        return decision.facts

    def _change_reference(self, command: ReferenceChangeRequested) -> list[Fact]:
        # As the batch prunes (PartitionReference.prune): every version here is seen by every
        # later command, and the watermark is this command's.
        cutoff = self.progress.watermark_seconds - self._policy.horizon_seconds
        self.reference.prune(BEFORE_EVERY_COMMAND + 1, cutoff)
        self.reference.apply(command.record, BEFORE_EVERY_COMMAND)
        return [decide_reference_change(command)]

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
