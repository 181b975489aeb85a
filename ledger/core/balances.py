"""Balances per publisher and per ISP, built from the money facts.

A balance is fed from every partition of ledger.events and must count each fact once, although
facts come again (a worker replaying after a crash, a client's duplicate re-answered). Each fact
carries its origin, the offset of the command that first decided it: new decisions of a partition
have growing origins, so a balance keeps, per source partition, the highest origin it applied and
skips anything at or below. The check and the update are one value, written at once.
"""

from __future__ import annotations

import msgspec

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
        origin = fact.origin
        assert origin is not None, f"a fact without origin reached a balance: {fact.event_id}"
        if origin <= self.applied_through.get(source_partition, -1):
            return False
        self.applied_through[source_partition] = origin
        owed = -sum(p.amount_cents for p in fact.postings if p.party == party)
        if isinstance(fact, PurchaseAuthorized):
            self.purchases += 1
            self.gross_cents += fact.amount_cents
        else:
            self.refunds += 1
            self.gross_cents -= fact.amount_cents
        self.owed_cents += owed
        return True


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Balance)


def encode_balance(balance: Balance) -> bytes:
    return _encoder.encode(balance)


def decode_balance(raw: bytes | None) -> Balance:
    return Balance() if raw is None else _decoder.decode(raw)
