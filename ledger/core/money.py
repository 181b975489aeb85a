"""Money: integer euro cents, VAT split and the postings of a purchase.

Rounding rules (one each, documented once, used everywhere):
- VAT is included in an amount. The amount excluding VAT is `gross * 10000 / (10000 + rate_bp)`
  rounded half up to the cent; the VAT is the rest, so net + VAT = gross exactly.
- The ISP's commission and the publisher's share are taken on the amount excluding VAT and
  rounded down to the cent; the platform's fee is what remains, so it collects the fractions of a
  cent and every posting set sums to zero exactly.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from ledger.core.invariant import invariant
from schemas.facts import Posting

BP_PER_UNIT = 10_000
TAX_AUTHORITY_ID = "fr-dgfip"  # the French tax authority, to which the VAT is owed
PLATFORM_ID = "internet-plus"


def split_vat(gross_cents: int, vat_rate_bp: int) -> tuple[int, int]:
    """(net_cents, vat_cents) of an amount including VAT."""
    if gross_cents < 0 or not 0 <= vat_rate_bp <= BP_PER_UNIT:
        raise ValueError(f"cannot split {gross_cents} cents at {vat_rate_bp} bp")
    denominator = BP_PER_UNIT + vat_rate_bp
    # Half up in integers: floor((2·g·10000 + d) / 2d) = round-half-up(g·10000 / d).
    net = (2 * gross_cents * BP_PER_UNIT + denominator) // (2 * denominator)
    return net, gross_cents - net


def share_of(amount_cents: int, rate_bp: int) -> int:
    """A share rounded down to the cent."""
    return amount_cents * rate_bp // BP_PER_UNIT


@dataclass(frozen=True, slots=True)
class Split:
    """Where the money of one amount including VAT goes."""

    gross_cents: int
    net_cents: int
    vat_cents: int
    commission_cents: int
    publisher_cents: int
    platform_cents: int


def split_amount(
    gross_cents: int, vat_rate_bp: int, commission_bp: int, revenue_share_bp: int
) -> Split:
    net, vat = split_vat(gross_cents, vat_rate_bp)
    commission = share_of(net, commission_bp)
    publisher = share_of(net, revenue_share_bp)
    platform = net - commission - publisher
    # Broken only by reference data outside its bounds (schemas/reference.py): stop, don't post.
    invariant(
        platform >= 0, "shares %d+%d bp exceed the net amount", commission_bp, revenue_share_bp
    )
    return Split(gross_cents, net, vat, commission, publisher, platform)


def purchase_postings(
    split: Split, account_id: str, isp_id: str, publisher_id: str
) -> tuple[Posting, ...]:
    """The account owes the amount including VAT; the VAT is owed to the tax authority, the
    commission to the ISP, the share to the publisher and the rest to the platform."""
    # The same check as assert_balanced, on the split's fields: this runs once per decision.
    invariant(
        split.gross_cents
        == split.vat_cents + split.commission_cents + split.publisher_cents + split.platform_cents,
        "the split of a purchase does not balance: %s", split,
    )  # fmt: skip
    return (
        Posting("account", account_id, split.gross_cents),
        Posting("tax", TAX_AUTHORITY_ID, -split.vat_cents),
        Posting("isp", isp_id, -split.commission_cents),
        Posting("publisher", publisher_id, -split.publisher_cents),
        Posting("platform", PLATFORM_ID, -split.platform_cents),
    )


def refund_split(
    refunded_before_cents: int,
    refund_cents: int,
    vat_rate_bp: int,
    commission_bp: int,
    revenue_share_bp: int,
) -> Split:
    """The split of a (partial) refund, as the difference of the splits of the cumulative amounts
    refunded after and before it. Refunds of a purchase in any number of parts therefore add up
    to exactly the purchase's own split, with no cent left over by rounding."""
    after = split_amount(
        refunded_before_cents + refund_cents, vat_rate_bp, commission_bp, revenue_share_bp
    )
    before = split_amount(refunded_before_cents, vat_rate_bp, commission_bp, revenue_share_bp)
    return Split(
        gross_cents=after.gross_cents - before.gross_cents,
        net_cents=after.net_cents - before.net_cents,
        vat_cents=after.vat_cents - before.vat_cents,
        commission_cents=after.commission_cents - before.commission_cents,
        publisher_cents=after.publisher_cents - before.publisher_cents,
        platform_cents=after.platform_cents - before.platform_cents,
    )


def refund_postings(
    split: Split, account_id: str, isp_id: str, publisher_id: str
) -> tuple[Posting, ...]:
    """The mirror of a purchase's postings: every party gives back its part."""
    postings = tuple(
        Posting(p.party, p.party_id, -p.amount_cents)
        for p in purchase_postings(split, account_id, isp_id, publisher_id)
    )
    assert_balanced(postings)
    return postings


def assert_balanced(postings: tuple[Posting, ...]) -> None:
    """Postings that do not sum to zero are a programmer's error: the worker stops (STYLE.md §6)."""
    total = sum(p.amount_cents for p in postings)
    invariant(total == 0, "postings sum to %d, not 0: %s", total, postings)


def owed_by(postings: Iterable[Posting]) -> tuple[int, int]:
    """What the publisher and the ISP are owed by a fact's postings (credits are negative)."""
    publisher = isp = 0
    for posting in postings:
        if posting.party == "publisher":
            publisher -= posting.amount_cents
        elif posting.party == "isp":
            isp -= posting.amount_cents
    return publisher, isp
