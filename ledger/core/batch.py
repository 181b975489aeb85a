"""One partition of the authorizer, a batch of commands at a time: what a stream worker does with
the commands it fetched, without the stream (the worker only moves bytes in and out of it).

Beside its accounts, a partition keeps one `PartitionSummary`: where the partition resumes
(`next_offset`), the periods closed in it, and its **partial balances** per publisher and per ISP,
the sums of the money facts it decided. A party's balance is the sum of its partials over the
partitions (`sum_balances`), so the balances need no re-keying of the facts, no repartition topic
and no agent of their own (issue 13: seven of the eleven Kafka records a purchase cost existed
only for them). Each partial counts a fact once, by its origin (`Balance.apply_money`).

The worker writes a batch's outcome in this order (streams/authorizer.py): the facts, awaited;
then the changed account states; then the summary. So, after a crash anywhere:
- a command below the summary's `next_offset` was decided, its facts are on ledger.events and its
  states are in the changelog: it is skipped;
- an account state whose `decided_through` is at or past a command's offset holds that command's
  effects already (written in a batch whose summary was lost): the command is not decided again
  (its facts were written before that state), only its money facts are counted in the partials,
  which did not count them, from the state's `batch_money` (the money of the batch that wrote it);
- anything else is decided again from the states before it: the same facts again.

The expiry barrier (`holds.expire_requested.v1`) touches the accounts of the holds it expires,
not an account of its own key. The summary indexes the partition's open holds (`holds`); the
barrier expires the holds due in it, each in its account's state, which records the barrier's
offset in `decided_through` like any command of that account. The rules above then hold for
each of those accounts: a state already past the barrier is not expired again (there is no money
to count). The index is only a guide, kept from the states: whenever a batch first loads an
account, its entry is made again from the state (the truth; the summary may be older, lost with
its batch), and the barrier expires only what the state says is reserved and due.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import msgspec

from ledger.core.authorizer import (
    Context,
    Policy,
    advance,
    decide,
    decide_close,
    decide_reference_change,
    decide_upgrade,
    evolve,
    evolve_close,
)
from ledger.core.balances import Balance, Money, money_of
from ledger.core.invariant import invariant, present
from ledger.core.payment import OpenHolds, decide_expiry, due_holds, index_account
from ledger.core.reference import Limits, PartitionReference
from ledger.core.state import AccountState, ClosedPeriods
from schemas.commands import (
    Command,
    HoldsExpireRequested,
    PaymentCaptureRequested,
    PeriodCloseRequested,
    ReferenceChangeRequested,
    UpgradeRequested,
)
from schemas.facts import Fact, PurchaseAuthorized, PurchaseRefunded
from schemas.reference import IspRegistered
from schemas.reference import reference_key as reference_key_of

LimitsCache = dict[tuple[int, str], tuple[IspRegistered, Limits]]


class PartitionSummary(msgspec.Struct, array_like=True):
    next_offset: int = 0  # the first command of the partition not decided yet
    closed: ClosedPeriods = msgspec.field(default_factory=ClosedPeriods)
    publishers: dict[str, Balance] = msgspec.field(default_factory=dict)
    isps: dict[str, Balance] = msgspec.field(default_factory=dict)
    # The partition's open holds: account → payment → expiry in epoch seconds (issue 14).
    holds: OpenHolds = msgspec.field(default_factory=dict)
    # The partition's event-time watermark (ledger.core.context.Progress; 0 in a summary written
    # before issue 14: it catches up with the next purchase).
    watermark_seconds: int = 0

    def fold(self, money: Money, partition: int) -> bool:
        """Count a money fact in the partials, once. Returns False when it was counted already."""
        publisher = self.publishers.setdefault(money.publisher_id, Balance())
        counted = publisher.apply_money(money, "publisher", partition)
        isp_counted = self.isps.setdefault(money.isp_id, Balance()).apply_money(
            money, "isp", partition
        )
        invariant(counted == isp_counted, "origin %s counted for one party only", money.origin)
        return counted


def reference_key(partition: int) -> bytes:
    """The partition's reference data (ledger.core.reference.PartitionReference) in the accounts
    table: written only by a batch that changed it, before the batch's summary (issue 15)."""
    return b"\x00reference:%d" % partition


def summary_key(partition: int) -> bytes:
    """The summary's key in the accounts table. The workers' own keys start with a NUL byte (ids
    start with a letter or digit); the partition is in the key because a memory store holds every
    partition in one dict."""
    return b"\x00summary:%d" % partition


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(PartitionSummary)


def encode_summary(summary: PartitionSummary) -> bytes:
    return _encoder.encode(summary)


def decode_summary(raw: bytes | None) -> PartitionSummary:
    return PartitionSummary() if raw is None else _decoder.decode(raw)


def sum_balances(partials: Iterable[Mapping[str, Balance]]) -> dict[str, Balance]:
    """Each party's balance: the sum of its partials, one per partition (they count disjoint
    facts, so their watermarks are disjoint too)."""
    total: dict[str, Balance] = {}
    for partial in partials:
        for party_id, balance in partial.items():
            into = total.setdefault(party_id, Balance())
            into.purchases += balance.purchases
            into.refunds += balance.refunds
            into.gross_cents += balance.gross_cents
            into.owed_cents += balance.owed_cents
            into.applied_through.update(balance.applied_through)
    return total


@dataclass
class PartitionBatch:
    """What one batch of a partition produced: facts to emit, in order, with their message key;
    the account states it changed; and the summary after it (the caller's, updated in place)."""

    summary: PartitionSummary
    facts: list[tuple[str, Fact]] = field(default_factory=list)
    # The partition's reference after the batch, when the batch changed it (a copy: the caller's
    # is never changed); None when it did not: then there is nothing to write.
    reference: PartitionReference | None = None
    # The offset of the command each fact was decided for, in the order of `facts` (what `ledger
    # verify` names when a fact differs from the one on ledger.events).
    offsets: list[int] = field(default_factory=list)
    states: dict[str, AccountState] = field(default_factory=dict)
    redelivered: int = 0  # commands below next_offset: skipped
    already_applied: int = 0  # commands whose state held them already: folded, not re-emitted
    folded: int = 0  # money facts counted in the partials
    captured: int = 0  # held payments captured (their facts are purchases')
    expiries: int = 0  # expiry barriers decided (each one decision, whatever it expired)

    def emit(self, key: str, fact: Fact, offset: int) -> None:
        """A fact to emit under `key`, decided for the command at `offset`."""
        self.facts.append((key, fact))
        self.offsets.append(offset)


def decide_batch(
    partition: int,
    summary: PartitionSummary,
    commands: Iterable[tuple[int, Command | None]],
    load: Callable[[str], AccountState | None],
    reference: PartitionReference,
    policy: Policy,
    limits_cache: LimitsCache | None = None,
) -> PartitionBatch:
    """Decide the commands of one partition in offset order. A None command (an undecodable
    record, one on the wrong partition: set aside by the caller) only moves the partition on.
    `load` reads an account's state as stored before this batch; `reference` is the partition's
    reference data as stored (possibly newer than the summary, after a crash: a decision reads
    only the versions introduced before its own offset, ledger.core.reference), never changed:
    a batch with reference changes works on a copy, returned in `PartitionBatch.reference`."""
    batch = PartitionBatch(summary)
    states = batch.states
    commands = list(commands)
    if any(
        isinstance(command, ReferenceChangeRequested | UpgradeRequested) for _, command in commands
    ):
        # Pruned with the batch's starting offset and watermark, which a batch decided again
        # after a crash starts from too (PartitionReference.prune).
        reference = reference.copy()
        reference.prune(summary.next_offset, summary.watermark_seconds - policy.horizon_seconds)
    # The ISPs' limits resolved once per reference record, across batches (Context.base_limits).
    cache: LimitsCache = {} if limits_cache is None else limits_cache
    # The summary is the partition's progress: the decisions read its watermark, `advance` moves
    # it on after each command.
    context = Context(reference, summary.closed.by_isp, policy, cache, summary)
    for offset, command in commands:
        if offset < summary.next_offset:
            batch.redelivered += 1
            continue
        summary.next_offset = offset + 1
        if command is None:
            continue
        if isinstance(command, ReferenceChangeRequested | PeriodCloseRequested | UpgradeRequested):
            _decide_barrier(batch, context, command, offset)
            continue
        if isinstance(command, HoldsExpireRequested):
            batch.expiries += 1
            _expire(batch, command, offset, load, policy)
            continue
        account_id = command.account_id
        state = states.get(account_id)
        if state is None:
            state = load(account_id)
            if state is not None:
                index_account(summary.holds, state)
            if state is not None and state.decided_through >= offset:
                # Written by a batch whose summary was lost: decided, emitted, not counted.
                batch.already_applied += 1
                held = [m for m in state.batch_money if m.origin == offset]
                batch.folded += sum(summary.fold(m, partition) for m in held)
                advance(context, command, offset)  # as when it was decided
                continue
            if state is not None:
                state.batch_money = []  # this batch's money from now on
        for fact in decide(state, command, context, offset):
            state = evolve(state, fact, policy)
            batch.emit(account_id, fact, offset)
            if isinstance(command, PaymentCaptureRequested) and isinstance(
                fact, PurchaseAuthorized
            ):
                batch.captured += 1
            if isinstance(fact, PurchaseAuthorized | PurchaseRefunded):
                money = money_of(fact)
                batch.folded += summary.fold(money, partition)
                present(state, "a money fact of an account with no state").batch_money.append(money)
        advance(context, command, offset)
        if state is not None:
            state.decided_through = offset
            states[account_id] = state
            if state.holds or account_id in summary.holds:
                index_account(summary.holds, state)
    return batch


def _decide_barrier(
    batch: PartitionBatch,
    context: Context,
    command: ReferenceChangeRequested | PeriodCloseRequested | UpgradeRequested,
    offset: int,
) -> None:
    if isinstance(command, UpgradeRequested):
        batch.emit(command.command_id, decide_upgrade(command), offset)
        if context.reference.activate(command.feature, offset):
            batch.reference = context.reference
        return
    if isinstance(command, ReferenceChangeRequested):
        batch.emit(reference_key_of(command.record), decide_reference_change(command), offset)
        if context.reference.apply(command.record, offset):
            batch.reference = context.reference
        return
    closed = batch.summary.closed
    fact = decide_close(closed, command, context, offset)
    evolve_close(closed, fact, command)
    advance(context, command, offset, fact)
    batch.emit(command.isp_id, fact, offset)


def _expire(
    batch: PartitionBatch,
    command: HoldsExpireRequested,
    offset: int,
    load: Callable[[str], AccountState | None],
    policy: Policy,
) -> None:
    """The barrier: every indexed hold due at its `as_of`, in `due_holds` order, expired in its
    account's state (ledger.core.payment.decide_expiry says whether it still is due)."""
    summary, states = batch.summary, batch.states
    as_of = int(command.as_of.timestamp())
    for _, payment_id, account_id in due_holds(summary.holds, as_of):
        state = states.get(account_id)
        if state is None:
            state = load(account_id)
            if state is None:  # an index entry no state stands behind: nothing to expire
                summary.holds.pop(account_id, None)
                continue
            index_account(summary.holds, state)
            if state.decided_through >= offset:
                batch.already_applied += 1  # expired by this barrier in a batch whose summary
                continue  # was lost: nothing to count (an expiry moves no money)
            state.batch_money = []
        fact = decide_expiry(state, payment_id, command, offset)
        if fact is not None:
            evolved = present(evolve(state, fact, policy), "an expiry lost its account")
            batch.emit(account_id, fact, offset)
            evolved.decided_through = offset
            states[account_id] = evolved
        index_account(summary.holds, state)
