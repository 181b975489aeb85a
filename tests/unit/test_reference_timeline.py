"""Reference data in the command order (issue 15): a change of an ISP or a publisher is a barrier
command of each partition, effective from its `effective_at`; a decision uses, among the versions
its partition received before it, the one in force at its own time. The runner and the batch
agree, and a batch decided again after a crash (an older summary, a newer stored reference) emits
the same facts."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from random import Random

import msgspec
import pytest

from ledger.core.authorizer import Policy
from ledger.core.batch import (
    PartitionBatch,
    PartitionSummary,
    decide_batch,
    decode_summary,
    encode_summary,
    reference_key,
    summary_key,
)
from ledger.core.reference import (
    PartitionReference,
    Reference,
    decode_reference,
    encode_reference,
)
from ledger.core.runner import LocalAuthorizer
from ledger.core.state import AccountState, decode_account, encode_state
from ledger.produce import reference_commands
from schemas import codec
from schemas.commands import Command, ReferenceChangeRequested
from schemas.facts import Fact, PurchaseAuthorized, PurchaseRejected, ReferenceChanged
from schemas.reference import PublisherRegistered
from tests import builders as b
from tests.builders import T0, at

DAY = 86_400
POLICY = Policy(horizon_seconds=20 * DAY)
Log = list[tuple[int, Command | None]]


def _change(record: PublisherRegistered, partitions: int = 1) -> ReferenceChangeRequested:
    return reference_commands(record, partitions)[0]


def _canalplay(
    when: datetime, effective: datetime | None = None, **values: object
) -> PublisherRegistered:
    return msgspec.structs.replace(b.CANALPLAY, occurred_at=when, effective_at=effective, **values)


def _share(fact: Fact) -> int:
    assert isinstance(fact, PurchaseAuthorized), fact
    return fact.revenue_share_bp


def _reason(fact: Fact) -> str | None:
    return fact.reason if isinstance(fact, PurchaseRejected) else None


# --- the timeline, one command at a time ----------------------------------------------------


def test_a_share_changed_mid_month_applies_to_the_purchases_dated_after_it() -> None:
    """Sent on the 3rd, effective on the 15th: a purchase of the 10th keeps 60 %, one of the
    20th has 50 %, and a purchase of the 10th decided after the one of the 20th still 60 %: the
    purchase's own time decides, not the order it came in."""
    ledger = LocalAuthorizer(Reference.of([b.ORANGE, b.CANALPLAY]), POLICY)
    ledger.handle(b.open_account("a1"))
    [changed] = ledger.handle(_change(_canalplay(at(days=2), at(days=14), revenue_share_bp=5000)))
    assert isinstance(changed, ReferenceChanged) and changed.effective_at == at(days=14)
    assert _share(ledger.handle(b.purchase("a1", when=at(days=9)))[0]) == 6000
    assert _share(ledger.handle(b.purchase("a1", when=at(days=19)))[0]) == 5000
    assert _share(ledger.handle(b.purchase("a1", when=at(days=9, minutes=5)))[0]) == 6000


def test_a_block_refuses_the_purchases_dated_after_it_not_those_dated_before() -> None:
    ledger = LocalAuthorizer(Reference.of([b.ORANGE, b.CANALPLAY]), POLICY)
    ledger.handle(b.open_account("a1"))
    ledger.handle(_change(_canalplay(at(days=1), at(days=1), blocked=True)))
    assert _reason(ledger.handle(b.purchase("a1", when=at(days=2)))[0]) == "publisher_blocked"
    # Dated before the block, decided after it arrived: the values in force at its time.
    assert _share(ledger.handle(b.purchase("a1", when=at(20 * 60)))[0]) == 6000


def test_a_change_received_after_a_command_is_never_seen_by_it() -> None:
    """The batch's rule: only versions introduced below the command's offset, whatever their
    effective time (here effective before the purchase, but sent after it)."""
    reference = PartitionReference.of([b.ORANGE, b.CANALPLAY])
    log: Log = [
        (0, b.open_account("a1")),
        (1, b.purchase("a1", when=at(days=5))),
        (2, _change(_canalplay(at(days=6), at(days=1), revenue_share_bp=4000))),
        (3, b.purchase("a1", when=at(days=5, minutes=1))),
    ]
    batch = decide_batch(0, PartitionSummary(), log, _no_state, reference, POLICY)
    shares = [_share(f) for _, f in batch.facts if isinstance(f, PurchaseAuthorized)]
    assert shares == [6000, 4000]
    assert batch.reference is not None and batch.reference is not reference  # a copy
    assert len(reference.publishers["canalplay"]) == 1  # the caller's is unchanged


def _no_state(_account_id: str) -> AccountState | None:
    return None


def test_before_its_first_effective_time_an_entity_is_its_registration() -> None:
    """A purchase dated before the record that registered its publisher was accepted before
    issue 15 (the reference had no time): it still is, with the registration's values."""
    reference = PartitionReference()
    reference.apply(_canalplay(at(days=10)), 0)
    reference.apply(_canalplay(at(days=20), revenue_share_bp=5500), 1)
    early = reference.publisher("canalplay", int(at(days=-30).timestamp()), before=5)
    assert early is not None and early.revenue_share_bp == 6000
    # Nothing introduced before offset 0: unknown.
    assert reference.publisher("canalplay", int(at(days=30).timestamp()), before=0) is None


def test_an_unknown_publisher_registered_later_is_unknown_before_and_known_after() -> None:
    ledger = LocalAuthorizer(Reference.of([b.ORANGE]), POLICY)
    ledger.handle(b.open_account("a1"))
    assert _reason(ledger.handle(b.purchase("a1"))[0]) == "publisher_unknown"
    ledger.update_reference(b.CANALPLAY)
    assert _share(ledger.handle(b.purchase("a1", when=at(5)))[0]) == 6000


def test_a_commission_change_and_the_isps_calendar_follow_the_close_time() -> None:
    ledger = LocalAuthorizer(Reference.of([b.ORANGE, b.CANALPLAY]), POLICY)
    ledger.handle(b.open_account("a1"))
    orange = msgspec.structs.replace(
        b.ORANGE, commission_bp=1000, occurred_at=at(days=1), effective_at=at(days=10)
    )
    ledger.update_reference(orange)
    before = ledger.handle(b.purchase("a1", when=at(days=5)))[0]
    after = ledger.handle(b.purchase("a1", when=at(days=12)))[0]
    assert isinstance(before, PurchaseAuthorized) and before.commission_bp == 1500
    assert isinstance(after, PurchaseAuthorized) and after.commission_bp == 1000


def test_the_same_change_again_is_the_same_fact_and_changes_nothing() -> None:
    command = _change(_canalplay(at(days=2), at(days=14), revenue_share_bp=5000), partitions=4)
    reference = PartitionReference.of([b.CANALPLAY])
    log: Log = [(0, command), (1, command)]
    batch = decide_batch(0, PartitionSummary(), log, _no_state, reference, POLICY)
    first, second = (f for _, f in batch.facts)
    assert first == second and first.event_id.startswith("reference.")
    assert batch.reference is not None and len(batch.reference.publishers["canalplay"]) == 2
    other = msgspec.structs.replace(command, partition=1)
    assert codec.encode(first) != codec.encode(
        decide_batch(1, PartitionSummary(), [(0, other)], _no_state, reference, POLICY).facts[0][1]
    )  # one fact per partition


def test_old_versions_are_pruned_and_the_lookups_do_not_change() -> None:
    """A change a day for a year: the partition keeps the versions a later decision can use
    (those in force from its watermark less the horizon on), not all of them."""
    ledger = LocalAuthorizer(Reference.of([b.ORANGE, b.CANALPLAY]), POLICY)
    ledger.handle(b.open_account("a1"))
    for day in range(365):
        share = 5000 + (day % 7) * 100
        ledger.update_reference(_canalplay(at(days=day), at(days=day, minutes=1),
                                           revenue_share_bp=share))  # fmt: skip
        fact = ledger.handle(b.purchase("a1", 15, when=at(days=day, minutes=2)))[0]
        assert _share(fact) == share
    kept = len(ledger.reference.publishers["canalplay"])
    assert kept <= 22, kept  # the horizon (20 days) of daily versions, and the one before it


def test_the_partition_reference_survives_its_encoding() -> None:
    reference = PartitionReference.of([b.ORANGE, b.CANALPLAY])
    reference.apply(_canalplay(at(days=2), at(days=14), blocked=True), 7)
    again = decode_reference(encode_reference(reference))
    assert again == reference
    assert decode_reference(None) == PartitionReference()


# --- the batch against the runner, with crashes ---------------------------------------------


@dataclass
class _Store:
    """One partition as the worker keeps it: summary, reference and states, encoded."""

    data: dict[bytes, bytes] = field(default_factory=dict)
    emitted: list[bytes] = field(default_factory=list)

    def summary(self) -> PartitionSummary:
        return decode_summary(self.data.get(summary_key(0)))

    def reference(self) -> PartitionReference:
        raw = self.data.get(reference_key(0))
        return PartitionReference.of([b.ORANGE]) if raw is None else decode_reference(raw)

    def load(self, account_id: str) -> AccountState | None:
        raw = self.data.get(account_id.encode())
        return None if raw is None else decode_account(raw)

    def run(self, log: Log, states_written: int | None = None) -> PartitionBatch:
        """Decide and write in the worker's order (facts, reference, states, summary). A crash
        (`states_written` not None) writes the reference and that many states, not the summary:
        the batch is then decided again with a stored reference newer than its summary, and the
        commands of the states not written are decided again."""
        batch = decide_batch(0, self.summary(), log, self.load, self.reference(), POLICY)
        self.emitted += [codec.encode(f) for _, f in batch.facts]
        if batch.reference is not None:
            self.data[reference_key(0)] = encode_reference(batch.reference)
        for account_id, state in list(batch.states.items())[:states_written]:
            self.data[account_id.encode()] = encode_state(state)
        if states_written is None:
            self.data[summary_key(0)] = encode_summary(batch.summary)
        return batch


def _history(rnd: Random, commands: int) -> Log:
    accounts = [f"a{i}" for i in range(4)]
    log: list[Command] = [b.open_account(a) for a in accounts]
    when = T0
    for n in range(commands):
        when += timedelta(hours=rnd.randint(1, 30))
        roll = rnd.random()
        if roll < 0.06:
            # A new account's first purchase, dated long ago (a trusted feed's history): older
            # than the partition's watermark less the horizon, where versions are pruned.
            fresh = f"late{n}"
            dated = when - timedelta(days=rnd.randint(15, 45))
            log.append(b.open_account(fresh, when=dated))
            log.append(b.purchase(fresh, rnd.randint(15, 400), when=dated))
        elif roll < 0.25:
            # Mostly soon, sometimes backdated by a trusted feed beyond the horizon.
            back = rnd.randint(-48, 72) if rnd.random() < 0.8 else -rnd.randint(20 * 24, 40 * 24)
            effective = when + timedelta(hours=back)
            record = _canalplay(when, effective, revenue_share_bp=rnd.randint(40, 70) * 100,
                                blocked=rnd.random() < 0.2)  # fmt: skip
            log.append(_change(record))
        else:
            # Some purchases come late: dated before changes already received.
            dated = when - timedelta(hours=rnd.randint(0, 60) if rnd.random() < 0.3 else 0)
            log.append(b.purchase(rnd.choice(accounts), rnd.randint(15, 400), when=dated))
    first = b.CANALPLAY
    return [(0, _change(first))] + [(i + 1, c) for i, c in enumerate(log)]


@pytest.mark.parametrize("seed", range(40))
def test_batches_with_reference_changes_and_crashes_decide_as_the_runner(seed: int) -> None:
    rnd = Random(seed)
    print(f"seed {seed}")
    log = _history(rnd, 200)
    oracle = LocalAuthorizer(Reference.of([b.ORANGE]), POLICY)
    expected = [codec.encode(f) for offset, c in log if c is not None
                for f in oracle.handle(c, origin=offset)]  # fmt: skip
    store = _Store()
    start = 0
    while start < len(log):
        size = rnd.randint(1, 25)
        part = log[start : start + size]
        if rnd.random() < 0.4:  # then decided again from the older summary
            store.run(part, states_written=rnd.randint(0, len(part)))
        store.run(part)
        start += size
    # Every fact emitted, the repeats included, is one the runner emitted; none is missing.
    assert set(store.emitted) <= set(expected)
    assert set(expected) <= set(store.emitted)
    # In order, once the repeats of a crashed batch are dropped.
    seen: list[bytes] = []
    for fact in store.emitted:
        if fact not in seen:
            seen.append(fact)
    assert seen == list(dict.fromkeys(expected))


def test_a_batch_decided_again_prunes_nothing_its_earlier_commands_need() -> None:
    """The crash the pruning rule is for: the lost batch stored a backdated version (effective
    long before the watermark less the horizon) after a purchase that did not see it. Decided
    again, the pruning must keep the version that purchase saw: it prunes only below versions
    introduced before the batch (PartitionReference.prune's `before`)."""
    store = _Store()
    later = at(days=60)
    store.run([(0, _change(b.CANALPLAY)), (1, b.open_account("a1")),
               (2, b.purchase("a1", when=later))])  # fmt: skip
    lost: Log = [
        (3, b.open_account("a2", when=later)),
        (4, b.purchase("a2", when=later)),
        (5, _change(_canalplay(later, at(days=1), revenue_share_bp=4000))),
    ]
    first = store.run(lost, states_written=0)
    again = store.run(lost)
    assert [codec.encode(f) for _, f in again.facts] == [codec.encode(f) for _, f in first.facts]
    assert _share(again.facts[1][1]) == 6000


def test_a_reference_record_goes_to_every_partition_then_to_the_compacted_topic() -> None:
    """What LedgerProducer.send_reference, the API and `ledger produce` (a record line, with its
    effective_at) send: the change to each partition, keyed by entity, then the record."""
    from ledger.kafka import topics
    from ledger.produce import _decode_line, reference_records

    line = codec.encode(_canalplay(at(days=2), at(days=14), revenue_share_bp=5000))
    record = _decode_line(line)
    assert isinstance(record, PublisherRegistered) and record.effective_at == at(days=14)
    sent = reference_records(record, 4)
    assert [(t, p, k) for t, p, k, _ in sent] == [
        *((topics.COMMANDS, p, b"publisher:canalplay") for p in range(4)),
        (topics.REFERENCE, 0, b"publisher:canalplay"),
    ]
    changes = [codec.decode_command(v) for t, _, _, v in sent if t == topics.COMMANDS]
    assert {c.command_id for c in changes if isinstance(c, ReferenceChangeRequested)} == {
        reference_commands(record, 4)[0].command_id
    }  # one command id: the same record sent again is the same command
    assert codec.decode_reference(sent[-1][3]) == record
