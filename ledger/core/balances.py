"""Balances per publisher and per ISP, built from the money facts.

A balance is fed from every partition of ledger.events and must count each fact once, although
facts come again (a worker replaying after a crash, a client's duplicate re-answered). Each fact
carries its origin, the offset of the command that first decided it: new decisions of a partition
have growing origins, so a balance keeps, per source partition, the highest origin it applied and
skips anything at or below. The check and the update are one value, written at once.
"""

from __future__ import annotations

import msgspec

from ledger.core.invariant import present
from ledger.core.money import owed_by
from schemas.facts import MoneyFact, PurchaseAuthorized
from schemas.types import Party


class Balance(msgspec.Struct, array_like=True):
    purchases: int = 0
    refunds: int = 0
    gross_cents: int = 0  # amounts including VAT, net of refunds
    owed_cents: int = 0  # what the party is owed by its postings, net of refunds
    applied_through: dict[int, int] = msgspec.field(default_factory=dict)  # partition → origin

    def apply(self, fact: MoneyFact, party: Party, source_partition: int) -> bool:
        """Count a fact once. Returns False for a fact already counted."""
        return self.apply_money(money_of(fact), party, source_partition)

    def apply_money(self, money: Money, party: Party, source_partition: int) -> bool:
        origin = money.origin
        if origin <= self.applied_through.get(source_partition, -1):
            return False
        self.applied_through[source_partition] = origin
        if money.refund:
            self.refunds += 1
            self.gross_cents -= money.amount_cents
        else:
            self.purchases += 1
            self.gross_cents += money.amount_cents
        self.owed_cents += money.isp_owed_cents if party == "isp" else money.publisher_owed_cents
        return True


class Money(msgspec.Struct, array_like=True, frozen=True):
    """What a balance needs of a money fact: kept on the account state for the facts of the
    last batch that wrote it (ledger/core/batch.py), so that they can be counted again from the
    state alone."""

    origin: int
    publisher_id: str
    isp_id: str
    refund: bool
    amount_cents: int
    publisher_owed_cents: int  # what the publisher is owed by the fact's postings
    isp_owed_cents: int


def money_of(fact: MoneyFact) -> Money:
    origin = present(fact.origin, "a fact without origin reached a balance: %s", fact.event_id)
    publisher, isp = owed_by(fact.postings)
    return Money(
        origin, fact.publisher_id, fact.isp_id, not isinstance(fact, PurchaseAuthorized),
        fact.amount_cents, publisher, isp,
    )  # fmt: skip


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Balance)


def encode_balance(balance: Balance) -> bytes:
    return _encoder.encode(balance)


def decode_balance(raw: bytes | None) -> Balance:
    return Balance() if raw is None else _decoder.decode(raw)
