"""Billing: invoices per account, the ISP's summary and publisher statements for one closed
period of one ISP, each sealed with a hash over its lines.

These are pure functions of the money facts billed in the period (`billing_period`), so that the
projection writer, `ledger reconcile` and the tests compute them one way.
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC
from typing import Literal

import msgspec

from schemas.facts import MoneyFact, PurchaseAuthorized, PurchaseRefunded

LineKind = Literal["purchase", "refund"]


class InvoiceLine(msgspec.Struct, frozen=True):
    """One line of a subscriber's or a company's bill. Refund lines are negative."""

    event_id: str
    kind: LineKind
    purchase_id: str
    refund_id: str | None
    user_id: str
    publisher_id: str
    description: str
    occurred_at: str  # RFC 3339, UTC
    vat_rate_bp: int
    net_cents: int
    vat_cents: int
    gross_cents: int
    late_for_period: str | None


@dataclass(frozen=True)
class Invoice:
    invoice_id: str
    isp_id: str
    account_id: str
    account_kind: str
    period: str
    lines: tuple[InvoiceLine, ...]
    net_cents: int
    vat_cents: int
    gross_cents: int
    # Internet Plus Pro: the company's invoice shows what each employee spent.
    gross_cents_by_user: dict[str, int]
    seal: str


@dataclass(frozen=True)
class IspSummary:
    isp_id: str
    period: str
    invoices: int
    net_cents: int
    vat_cents: int
    gross_cents: int
    commission_cents: int  # what the ISP keeps
    owed_to_platform_cents: int  # what it collects and passes on: gross - commission


@dataclass(frozen=True)
class Statement:
    """What one publisher is owed for its sales billed by one ISP in one period, net of refunds."""

    statement_id: str
    isp_id: str
    period: str
    publisher_id: str
    purchases: int
    refunds: int
    gross_cents: int
    net_cents: int
    vat_cents: int
    owed_cents: int  # the publisher's share: its postings, credited
    seal: str


_seal_encoder = msgspec.json.Encoder()


def seal(header: tuple[str, ...], lines: Iterable[msgspec.Struct]) -> str:
    """SHA-256 over the header and the lines in their canonical order, as JSON: an invoice
    changed by one cent, one line or one character no longer matches its seal."""
    digest = hashlib.sha256(_seal_encoder.encode(list(header)))
    for line in lines:
        digest.update(b"\n")
        digest.update(_seal_encoder.encode(line))
    return digest.hexdigest()


def _occurred(fact: MoneyFact) -> str:
    return fact.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def line_of(fact: MoneyFact) -> InvoiceLine:
    if isinstance(fact, PurchaseAuthorized):
        return InvoiceLine(
            event_id=fact.event_id,
            kind="purchase",
            purchase_id=fact.purchase_id,
            refund_id=None,
            user_id=fact.user_id,
            publisher_id=fact.publisher_id,
            description=fact.description,
            occurred_at=_occurred(fact),
            vat_rate_bp=fact.vat_rate_bp,
            net_cents=fact.net_cents,
            vat_cents=fact.vat_cents,
            gross_cents=fact.amount_cents,
            late_for_period=fact.late_for_period,
        )
    return InvoiceLine(
        event_id=fact.event_id,
        kind="refund",
        purchase_id=fact.purchase_id,
        refund_id=fact.refund_id,
        user_id=fact.user_id,
        publisher_id=fact.publisher_id,
        description=f"refund: {fact.reason}",
        occurred_at=_occurred(fact),
        vat_rate_bp=0,
        net_cents=-fact.net_cents,
        vat_cents=-fact.vat_cents,
        gross_cents=-fact.amount_cents,
        late_for_period=fact.late_for_period,
    )


def _billed(facts: Iterable[MoneyFact], isp_id: str, period: str) -> list[MoneyFact]:
    return [f for f in facts if f.isp_id == isp_id and f.billing_period == period]


def _canonical(lines: Iterable[InvoiceLine]) -> tuple[InvoiceLine, ...]:
    return tuple(sorted(lines, key=lambda line: (line.occurred_at, line.event_id)))


def build_invoices(isp_id: str, period: str, facts: Iterable[MoneyFact]) -> list[Invoice]:
    """One invoice per account with money billed in the period, in account order."""
    by_account: dict[str, list[MoneyFact]] = defaultdict(list)
    for fact in _billed(facts, isp_id, period):
        by_account[fact.account_id].append(fact)
    invoices = []
    for account_id in sorted(by_account):
        own = by_account[account_id]
        lines = _canonical(line_of(f) for f in own)
        by_user: dict[str, int] = defaultdict(int)
        for line in lines:
            by_user[line.user_id] += line.gross_cents
        kind = own[0].account_kind
        invoices.append(
            Invoice(
                invoice_id=f"{isp_id}.{period}.{account_id}",
                isp_id=isp_id,
                account_id=account_id,
                account_kind=kind,
                period=period,
                lines=lines,
                net_cents=sum(line.net_cents for line in lines),
                vat_cents=sum(line.vat_cents for line in lines),
                gross_cents=sum(line.gross_cents for line in lines),
                gross_cents_by_user=dict(sorted(by_user.items())) if kind == "enterprise" else {},
                seal=seal((isp_id, period, account_id), lines),
            )
        )
    return invoices


def _posted(fact: MoneyFact, party: str) -> int:
    """What a party is owed by this fact (credits are negative postings)."""
    return -sum(p.amount_cents for p in fact.postings if p.party == party)


def summarize(isp_id: str, period: str, facts: Iterable[MoneyFact]) -> IspSummary:
    billed = _billed(facts, isp_id, period)
    invoices = build_invoices(isp_id, period, billed)
    gross = sum(invoice.gross_cents for invoice in invoices)
    commission = sum(_posted(f, "isp") for f in billed)
    return IspSummary(
        isp_id=isp_id,
        period=period,
        invoices=len(invoices),
        net_cents=sum(invoice.net_cents for invoice in invoices),
        vat_cents=sum(invoice.vat_cents for invoice in invoices),
        gross_cents=gross,
        commission_cents=commission,
        owed_to_platform_cents=gross - commission,
    )


def build_statements(isp_id: str, period: str, facts: Iterable[MoneyFact]) -> list[Statement]:
    by_publisher: dict[str, list[MoneyFact]] = defaultdict(list)
    for fact in _billed(facts, isp_id, period):
        by_publisher[fact.publisher_id].append(fact)
    statements = []
    for publisher_id in sorted(by_publisher):
        own = by_publisher[publisher_id]
        lines = _canonical(line_of(f) for f in own)
        statements.append(
            Statement(
                statement_id=f"{isp_id}.{period}.{publisher_id}",
                isp_id=isp_id,
                period=period,
                publisher_id=publisher_id,
                purchases=sum(1 for f in own if isinstance(f, PurchaseAuthorized)),
                refunds=sum(1 for f in own if isinstance(f, PurchaseRefunded)),
                gross_cents=sum(line.gross_cents for line in lines),
                net_cents=sum(line.net_cents for line in lines),
                vat_cents=sum(line.vat_cents for line in lines),
                owed_cents=sum(_posted(f, "publisher") for f in own),
                seal=seal((isp_id, period, publisher_id), lines),
            )
        )
    return statements


class _SealOf(msgspec.Struct, frozen=True, array_like=True):
    kind: str
    id: str
    seal: str


def period_seal(
    summary: IspSummary, invoices: Iterable[Invoice], statements: Iterable[Statement]
) -> str:
    """The seal of a whole period: its totals and the seal of each invoice and statement, so that
    a changed line anywhere in the period no longer matches it."""
    header = (
        summary.isp_id, summary.period, str(summary.invoices), str(summary.net_cents),
        str(summary.vat_cents), str(summary.gross_cents), str(summary.commission_cents),
        str(summary.owed_to_platform_cents),
    )  # fmt: skip
    parts = [_SealOf("invoice", i.invoice_id, i.seal) for i in invoices]
    parts += [_SealOf("statement", s.statement_id, s.seal) for s in statements]
    return seal(header, parts)
