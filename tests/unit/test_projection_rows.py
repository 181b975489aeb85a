"""The pure half of the projection writer: facts to rows and balance deltas, and the decoding of
a batch of records (markers, poison, offsets)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from ledger.core.runner import LocalAuthorizer
from ledger.kafka import topics
from projections.rows import JOURNAL_COLUMNS, PAYMENT_COLUMNS, PURCHASE_COLUMNS, project
from projections.writer import prepare
from schemas import codec
from schemas.facts import Fact, PurchaseAuthorized, PurchaseRefunded
from tests import builders as b


def _facts() -> list[Fact]:
    ledger = LocalAuthorizer(b.REFERENCE)
    bought = b.purchase("acc-1", 500, b.at(10), publisher_id="canalplay")
    commands = [
        b.open_account("acc-1"),
        bought,
        b.purchase("acc-1", 99_999, b.at(20)),  # rejected: above the band
        b.refund("acc-1", bought.purchase_id, 200, b.at(30)),
        b.block("acc-1", b.at(40)),
        b.close("orange", "2006-03", b.at(days=40)),
    ]
    return [fact for command in commands for fact in ledger.handle(command)]


def test_a_batch_becomes_rows_and_one_delta_per_balance() -> None:
    facts = _facts()
    rows = project((fact, codec.encode(fact)) for fact in facts)
    purchase = next(f for f in facts if isinstance(f, PurchaseAuthorized))
    refund = next(f for f in facts if isinstance(f, PurchaseRefunded))
    assert len(rows.journal) == len(purchase.postings) + len(refund.postings)
    assert all(len(row) == len(JOURNAL_COLUMNS) for row in rows.journal)
    assert sum(row[4] for row in rows.journal) == 0  # postings sum to zero
    assert [row[7] for row in rows.purchases] == ["authorized", "rejected"]
    assert all(len(row) == len(PURCHASE_COLUMNS) for row in rows.purchases)
    assert len(rows.refunds) == 1 and len(rows.money_facts) == 2
    assert rows.accounts[0][:3] == ("acc-1", "orange", "consumer")
    assert rows.blocks == {"acc-1": (True, "parental")}
    assert [c.period for c in rows.closes] == ["2006-03"]
    account = rows.balances["account", "acc-1"]
    assert (account.purchases, account.refunds) == (1, 1)
    assert (account.debits_cents, account.credits_cents) == (500, 200)
    assert account.gross_cents == 300
    publisher = rows.balances["publisher", "canalplay"]
    owed = -sum(p.amount_cents for p in purchase.postings if p.party == "publisher")
    given_back = sum(p.amount_cents for p in refund.postings if p.party == "publisher")
    assert (publisher.credits_cents, publisher.debits_cents) == (owed, given_back)
    assert rows.billed == {("orange", purchase.billing_period)}
    keys = [row[:2] for row in rows.balance_rows()]
    assert keys == sorted(keys)  # one lock order for every writer


@dataclass
class _Record:
    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp: int = 0


def test_prepare_sets_markers_and_poison_apart_and_covers_every_offset() -> None:
    fact = _facts()[1]
    records = [
        _Record(topics.EVENTS, 0, 0, topics.PARTITION_MARKER_KEY, topics.PARTITION_MARKER_VALUE),
        _Record(topics.EVENTS, 0, 1, b"acc-1", codec.encode(fact)),
        _Record(topics.EVENTS, 2, 7, b"x", b"{not json"),
        _Record(topics.EVENTS, 0, 2, b"acc-1", codec.encode(fact)),
    ]
    prepared = prepare(records)
    assert prepared.markers == 1
    assert [(i.partition, i.offset) for i in prepared.incoming] == [(0, 1), (0, 2)]
    assert [(r.offset, invalid.reason) for r, invalid in prepared.poison] == [(7, "malformed_json")]
    assert prepared.next_offsets == {0: 3, 2: 8}


def test_late_facts_are_billed_where_the_core_put_them() -> None:
    ledger = LocalAuthorizer(b.REFERENCE)
    ledger.handle(b.open_account("acc-2"))
    ledger.handle(b.close("orange", "2006-03", b.at(days=40)))
    late = ledger.handle(b.purchase("acc-2", 300, b.at(days=10) + timedelta(hours=1)))[0]
    rows = project([(late, codec.encode(late))])
    assert isinstance(late, PurchaseAuthorized) and late.late_for_period == "2006-03"
    assert rows.purchases[0][13:15] == ("2006-04", "2006-03")
    assert rows.billed == {("orange", "2006-04")}


def test_held_payments_become_payment_rows_and_only_captures_money() -> None:
    ledger = LocalAuthorizer(b.REFERENCE)
    commands = [
        b.open_account("acc-1"),
        b.hold("acc-1", 1_500, b.at(1), payment_id="h1"),
        b.hold("acc-1", 700, b.at(2), payment_id="h2"),
        b.hold("acc-1", 300, b.at(3), payment_id="h3", hold_for=timedelta(minutes=5)),
        b.capture("acc-1", "h1", 1_000, b.at(10)),
        b.void("acc-1", "h2", b.at(11)),
        b.capture("acc-1", "h2", 100, b.at(12)),  # refused: voided
        b.expire(b.at(20)),
    ]
    facts = [fact for command in commands for fact in ledger.handle(command)]
    rows = project((fact, codec.encode(fact)) for fact in facts)
    assert [(r[1], r[5], r[6]) for r in rows.payments] == [
        ("h1", "reserved", 1_500), ("h2", "reserved", 700), ("h3", "reserved", 300),
    ]  # fmt: skip
    assert all(len(row) == len(PAYMENT_COLUMNS) for row in rows.payments)
    assert rows.authorized == 1  # the capture's purchase: matched with its hold in the database
    assert [row[1:4] for row in rows.finished] == [
        ("h2", "voided", b.at(11)), ("h3", "expired", b.at(20)),
    ]  # fmt: skip
    # Money: the capture's purchase only, for the amount captured.
    assert [row[9] for row in rows.purchases] == [1_000]
    assert len(rows.money_facts) == 1 and rows.balances["account", "acc-1"].gross_cents == 1_000
    # Every payment fact is kept as it is, for `ledger reconcile`.
    assert sorted(row[1] for row in rows.account_facts) == [
        "payment.command_rejected.v1", "payment.expired.v1", "payment.reserved.v1",
        "payment.reserved.v1", "payment.reserved.v1", "payment.voided.v1",
    ]  # fmt: skip


def test_a_reference_change_is_known_to_the_writer_and_makes_no_row() -> None:
    """Issue 15: reference.changed.v1 is applied (its id in applied_events) without a row of its
    own, never a fact the writer stops on."""
    ledger = LocalAuthorizer(b.REFERENCE)
    changed = ledger.update_reference(b.CANALPLAY)
    rows = project((fact, codec.encode(fact)) for fact in changed)
    assert not rows.journal and not rows.purchases and not rows.account_facts
