"""Balances count each fact once, whatever comes again."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core.balances import Balance, decode_balance, encode_balance
from ledger.core.runner import LocalAuthorizer
from schemas.facts import PurchaseAuthorized, PurchaseRefunded
from tests import builders as b
from tests.builders import REFERENCE, at


def _facts() -> list[PurchaseAuthorized | PurchaseRefunded]:
    ledger = LocalAuthorizer(REFERENCE)
    ledger.handle(b.open_account("acct"), origin=0)
    commands = [
        b.purchase("acct", 1_000, at(0), purchase_id="p1"),
        b.purchase("acct", 500, at(1), purchase_id="p2", publisher_id="lemonde-archives"),
        b.refund("acct", "p1", 400, at(2), refund_id="r1"),
        b.purchase("acct", 1_000, at(0), purchase_id="p1"),  # a client's duplicate
    ]
    facts = []
    for offset, command in enumerate(commands, start=1):
        facts += ledger.handle(command, origin=offset)
    assert ledger.states["acct"].owed_cents == 1_100
    return [f for f in facts if isinstance(f, PurchaseAuthorized | PurchaseRefunded)]


def _fold(sequence: list[PurchaseAuthorized | PurchaseRefunded]) -> Balance:
    balance = Balance()
    for fact in sequence:
        balance.apply(fact, "isp", source_partition=0)
    return balance


def test_isp_balance_counts_the_commission_once() -> None:
    balance = _fold(_facts())
    assert (balance.purchases, balance.refunds, balance.gross_cents) == (2, 1, 1_100)
    # Orange's 15 % of the amounts excluding VAT, purchase by purchase, minus the refund's part.
    assert balance.owed_cents == 836 * 15 // 100 + 418 * 15 // 100 - (
        836 * 15 // 100 - 502 * 15 // 100
    )
    assert decode_balance(encode_balance(balance)) == balance
    assert decode_balance(None) == Balance()


@settings(max_examples=50, deadline=None)
@given(st.lists(st.integers(0, 3), max_size=12))
def test_replays_and_duplicates_change_nothing(replays: list[int]) -> None:
    facts = _facts()
    # A consumer that crashed re-reads a suffix of what it had read; duplicates come again.
    sequence = list(facts)
    for start in replays:
        sequence += facts[min(start, len(facts) - 1) :]
    assert _fold(sequence) == _fold(facts)
