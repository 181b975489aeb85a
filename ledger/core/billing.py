"""Billing: invoices per account, the ISP's summary and publisher statements for one closed
period of one ISP, each sealed with a hash over its lines.

These are pure functions of the money facts billed in the period (`billing_period`), so that the
projection writer, `ledger reconcile` and the tests compute them one way.

A refund line states the VAT rate of the purchase it reverses (its VAT was computed at that rate),
and every invoice and period shows its totals per VAT rate, as a billing team files them (issue
12). A refund does not carry the rate: it is looked up among the purchases given, by account,
purchase id and the period the purchase is billed in (`purchase_key`); a caller billing a refund
of a purchase of an earlier period passes that purchase's rate (`purchase_rates`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC
from typing import Literal, NamedTuple

import msgspec

from ledger.core.money import owed_by
from schemas.facts import MoneyFact, PurchaseAuthorized, PurchaseRefunded

LineKind = Literal["purchase", "refund"]
# A purchase, as a refund names it: account, purchase id, the period the purchase is billed in
# (an account could reuse a purchase id once the first one is past the idempotency horizon, in
# another period).
PurchaseKey = tuple[str, str, str]


class PurchaseNotGiven(AssertionError):
    """A refund billed without the purchase it reverses: its VAT rate is unknown. The caller's
    error (every refund's purchase is on the log before it), so it stops (STYLE.md §6)."""


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


class VatTotal(msgspec.Struct, frozen=True):
    """What an invoice or a period bills at one VAT rate."""

    vat_rate_bp: int
    net_cents: int
    vat_cents: int
    gross_cents: int


def _merged(totals: Iterable[VatTotal]) -> tuple[VatTotal, ...]:
    sums: dict[int, list[int]] = {}
    for t in totals:
        total = sums.setdefault(t.vat_rate_bp, [0, 0, 0])
        total[0] += t.net_cents
        total[1] += t.vat_cents
        total[2] += t.gross_cents
    return tuple(VatTotal(rate, *sums[rate]) for rate in sorted(sums))


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
    # A function of the lines, which the seal covers (they state their rates).
    vat_by_rate: tuple[VatTotal, ...]


@dataclass(frozen=True)
class IspSummary:
    isp_id: str
    period: str
    invoices: int
    net_cents: int
    vat_cents: int
    gross_cents: int
    commission_cents: int  # what the ISP keeps
    # what it collects and passes on: the gross of its invoices and credit notes - commission
    owed_to_platform_cents: int
    vat_by_rate: tuple[VatTotal, ...]  # of its invoices, merged
    # Credit notes (issue 15), apart from the invoices above: refunds of purchases whose invoice
    # was sealed in an earlier period. Negative, as the refund lines they were.
    credit_notes: int = 0
    credit_notes_net_cents: int = 0
    credit_notes_vat_cents: int = 0
    credit_notes_gross_cents: int = 0


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
    # The lines as newline-delimited JSON, in one call: `\n` after each, so `\n` before each but
    # the last one's dropped (measured: a third of the time of an encode and two updates a line).
    encoded = _seal_encoder.encode_lines(lines)
    if encoded:
        digest.update(b"\n")
        digest.update(memoryview(encoded)[:-1])
    return digest.hexdigest()


def _occurred(fact: MoneyFact) -> str:
    return fact.occurred_at.astimezone(UTC).isoformat().replace("+00:00", "Z")


def purchase_key(fact: MoneyFact) -> PurchaseKey:
    """The purchase a money fact is or reverses."""
    if isinstance(fact, PurchaseAuthorized):
        return fact.account_id, fact.purchase_id, fact.billing_period
    return fact.account_id, fact.purchase_id, fact.purchase_billing_period


def purchase_vat_rates(facts: Iterable[MoneyFact]) -> dict[PurchaseKey, int]:
    """The VAT rate of each purchase among `facts`."""
    return {purchase_key(f): f.vat_rate_bp for f in facts if isinstance(f, PurchaseAuthorized)}


def line_of(fact: MoneyFact, purchase_rates: Mapping[PurchaseKey, int]) -> InvoiceLine:
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
    rate = purchase_rates.get(purchase_key(fact))
    if rate is None:
        raise PurchaseNotGiven(
            f"refund {fact.refund_id} ({fact.event_id}) of purchase {fact.purchase_id} of"
            f" account {fact.account_id}, billed in {fact.purchase_billing_period}: its purchase"
            " was not given, so its VAT rate is unknown"
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
        vat_rate_bp=rate,
        net_cents=-fact.net_cents,
        vat_cents=-fact.vat_cents,
        gross_cents=-fact.amount_cents,
        late_for_period=fact.late_for_period,
    )


def _billed(facts: Iterable[MoneyFact], isp_id: str, period: str) -> list[MoneyFact]:
    return [f for f in facts if f.isp_id == isp_id and f.billing_period == period]


def refunded_purchase_rates(
    facts: Iterable[MoneyFact], refunds: Iterable[MoneyFact]
) -> dict[PurchaseKey, int]:
    """The VAT rate of each purchase among `facts` (the last of a key, as `purchase_vat_rates`
    keeps it) that a refund among `refunds` names. A period is nearly all purchases: only the few
    refunded are looked at."""
    refunded = {f.purchase_id for f in refunds if isinstance(f, PurchaseRefunded)}
    return purchase_vat_rates(f for f in facts if f.purchase_id in refunded) if refunded else {}


def _refund_rates(
    facts: list[MoneyFact],
    billed: list[MoneyFact],
    purchase_rates: Mapping[PurchaseKey, int] | None,
) -> dict[PurchaseKey, int]:
    """What `line_of` needs for the refunds among `billed`: the rates in `purchase_rates`, and
    over them those of the purchases among `facts` that a refund names."""
    return {**(purchase_rates or {}), **refunded_purchase_rates(facts, billed)}


def _totals(lines: Iterable[InvoiceLine]) -> tuple[int, int, int, tuple[VatTotal, ...]]:
    """Net, VAT and gross of the lines, and their totals per VAT rate, by rate, in one pass; a
    rate whose lines cancel out (a purchase refunded whole) is shown at zero, so that the lines of
    every rate on the invoice have their total."""
    net = vat = gross = 0
    sums: dict[int, list[int]] = {}
    for line in lines:
        net += line.net_cents
        vat += line.vat_cents
        gross += line.gross_cents
        total = sums.get(line.vat_rate_bp)
        if total is None:
            total = sums[line.vat_rate_bp] = [0, 0, 0]
        total[0] += line.net_cents
        total[1] += line.vat_cents
        total[2] += line.gross_cents
    return net, vat, gross, tuple(VatTotal(rate, *sums[rate]) for rate in sorted(sums))


def _invoice(
    isp_id: str, period: str, account_id: str, kind: str, lines: tuple[InvoiceLine, ...]
) -> Invoice:
    net, vat, gross, by_rate = _totals(lines)
    by_user: dict[str, int] = {}
    if kind == "enterprise":
        for line in lines:
            by_user[line.user_id] = by_user.get(line.user_id, 0) + line.gross_cents
    return Invoice(
        invoice_id=f"{isp_id}.{period}.{account_id}",
        isp_id=isp_id,
        account_id=account_id,
        account_kind=kind,
        period=period,
        lines=lines,
        net_cents=net,
        vat_cents=vat,
        gross_cents=gross,
        gross_cents_by_user=dict(sorted(by_user.items())),
        seal=seal((isp_id, period, account_id), lines),
        vat_by_rate=by_rate,
    )


class Correction(NamedTuple):
    """The sealed invoice line a refund corrects: its invoice, the invoice's number (None for an
    invoice sealed before numbers, migration 0010) and the line's number on it."""

    invoice_id: str
    invoice_number: int | None
    line_no: int


class CreditNoteLine(msgspec.Struct, frozen=True):
    """One refund on a credit note, naming the sealed invoice line it corrects. Negative."""

    event_id: str
    refund_id: str
    purchase_id: str
    user_id: str
    publisher_id: str
    description: str
    occurred_at: str  # RFC 3339, UTC
    vat_rate_bp: int
    net_cents: int
    vat_cents: int
    gross_cents: int
    late_for_period: str | None
    corrects_line_no: int


@dataclass(frozen=True)
class CreditNote:
    """A credit note (avoir, issue 15): the refunds billed in `period` of the purchases of one
    invoice sealed in an earlier period, `corrects_invoice_id`."""

    credit_note_id: str
    isp_id: str
    account_id: str
    account_kind: str
    period: str
    corrects_invoice_id: str
    corrects_invoice_number: int | None
    lines: tuple[CreditNoteLine, ...]
    net_cents: int
    vat_cents: int
    gross_cents: int
    seal: str


def credit_note_seal(
    credit_note_id: str,
    corrects_invoice_id: str,
    corrects_invoice_number: int | None,
    lines: Iterable[CreditNoteLine],
) -> str:
    """As `seal`: the header names the credit note and the invoice it corrects
    (docs/design/seals.md)."""
    number = "" if corrects_invoice_number is None else str(corrects_invoice_number)
    return seal(("credit_note", credit_note_id, corrects_invoice_id, number), lines)


def _credit_note(
    isp_id: str, period: str, kind: str, correction: Correction,
    lines: tuple[CreditNoteLine, ...],
) -> CreditNote:  # fmt: skip
    # An invoice id is `{isp_id}.{period}.{account_id}`: the account is what follows the period.
    account_id = correction.invoice_id[len(isp_id) + 9 :]
    corrected_period = correction.invoice_id[len(isp_id) + 1 : len(isp_id) + 8]
    credit_note_id = f"{isp_id}.{period}.{account_id}.credit.{corrected_period}"
    return CreditNote(
        credit_note_id=credit_note_id,
        isp_id=isp_id,
        account_id=account_id,
        account_kind=kind,
        period=period,
        corrects_invoice_id=correction.invoice_id,
        corrects_invoice_number=correction.invoice_number,
        lines=lines,
        net_cents=sum(line.net_cents for line in lines),
        vat_cents=sum(line.vat_cents for line in lines),
        gross_cents=sum(line.gross_cents for line in lines),
        seal=credit_note_seal(
            credit_note_id, correction.invoice_id, correction.invoice_number, lines
        ),
    )


def _credit_line(line: InvoiceLine, correction: Correction) -> CreditNoteLine:
    assert line.refund_id is not None
    return CreditNoteLine(
        event_id=line.event_id,
        refund_id=line.refund_id,
        purchase_id=line.purchase_id,
        user_id=line.user_id,
        publisher_id=line.publisher_id,
        description=line.description,
        occurred_at=line.occurred_at,
        vat_rate_bp=line.vat_rate_bp,
        net_cents=line.net_cents,
        vat_cents=line.vat_cents,
        gross_cents=line.gross_cents,
        late_for_period=line.late_for_period,
        corrects_line_no=correction.line_no,
    )


def corrected_purchases(facts: Iterable[MoneyFact], sealed: Collection[str]) -> set[PurchaseKey]:
    """The purchases that the refunds among `facts` reverse and that are billed in one of the
    `sealed` periods (of the same ISP): each of those refunds goes on a credit note."""
    return {
        purchase_key(f)
        for f in facts
        if isinstance(f, PurchaseRefunded) and f.purchase_billing_period in sealed
    }


def corrections_from(
    isp_id: str, wanted: Iterable[PurchaseKey], invoices: Mapping[str, Invoice],
    numbers: Mapping[str, int],
) -> dict[PurchaseKey, Correction]:  # fmt: skip
    """The invoice line of each purchase `wanted`, among `invoices` (by id; `numbers`: their
    numbers): what `ledger verify-seals` gives `bill_period`, from the invoices it recomputed."""
    found: dict[PurchaseKey, Correction] = {}
    for key in wanted:
        account_id, purchase_id, period = key
        invoice_id = f"{isp_id}.{period}.{account_id}"
        invoice = invoices[invoice_id]
        line_no = next(
            n for n, line in enumerate(invoice.lines, start=1)
            if line.kind == "purchase" and line.purchase_id == purchase_id
        )  # fmt: skip
        found[key] = Correction(invoice_id, numbers.get(invoice_id), line_no)
    return found


@dataclass(frozen=True)
class PeriodBilling:
    """What one ISP's period bills: the projection writer seals these."""

    invoices: list[Invoice]
    statements: list[Statement]
    summary: IspSummary
    credit_notes: list[CreditNote] = field(default_factory=list)


def bill_period(
    isp_id: str, period: str, facts: Iterable[MoneyFact],
    purchase_rates: Mapping[PurchaseKey, int] | None = None,
    corrections: Mapping[PurchaseKey, Correction] | None = None,
) -> PeriodBilling:  # fmt: skip
    """The invoices, statements and summary of a period (as `build_invoices`, `build_statements`
    and `summarize` each give them) in one pass: each fact's line is made once, for its invoice
    and its statement; all the lines are put in their canonical order once, so that the lines of
    one account or one publisher, taken in that order, are in theirs. Measured on a period of
    262,450 money facts: 38 us a fact for the three functions, each of which made every line
    again (summarize built the invoices a second time), 16 to 21 us here.

    A refund whose purchase is in `corrections` (its invoice sealed in an earlier period: see
    `corrected_purchases`) goes on a credit note naming that invoice and line instead of on the
    account's invoice (issue 15); the statements count it as before."""
    corrections = corrections or {}
    facts = list(facts)
    billed = _billed(facts, isp_id, period)
    rates = _refund_rates(facts, billed, purchase_rates)
    kinds: dict[str, str] = {}  # an account's kind as its first fact says (as build_invoices)
    made: list[tuple[str, int, str, InvoiceLine, MoneyFact]] = []
    for fact in billed:
        line = line_of(fact, rates)
        made.append((line.occurred_at, len(made), line.event_id, line, fact))
        if fact.account_id not in kinds:
            kinds[fact.account_id] = fact.account_kind
    # By (occurred_at, event_id) as _canonical, ties in the facts' order (its sort is stable).
    made.sort(key=lambda item: (item[0], item[2], item[1]))
    by_account: dict[str, list[InvoiceLine]] = {}
    by_publisher: dict[str, list[InvoiceLine]] = {}
    credited: dict[Correction, list[CreditNoteLine]] = {}  # by the invoice corrected, then line
    counts: dict[str, list[int]] = {}  # per publisher: purchases, refunds, owed
    commission = 0
    for *_, line, fact in made:
        correction = corrections.get(purchase_key(fact)) if line.kind == "refund" else None
        if correction is not None:
            credited.setdefault(correction._replace(line_no=0), []).append(
                _credit_line(line, correction)
            )
        else:
            account = by_account.get(fact.account_id)
            if account is None:
                account = by_account[fact.account_id] = []
            account.append(line)
        publisher = by_publisher.get(fact.publisher_id)
        if publisher is None:
            publisher = by_publisher[fact.publisher_id] = []
            counts[fact.publisher_id] = [0, 0, 0]
        publisher.append(line)
        publisher_owed, isp_owed = owed_by(fact.postings)
        commission += isp_owed
        count = counts[fact.publisher_id]
        count[0 if isinstance(fact, PurchaseAuthorized) else 1] += 1
        count[2] += publisher_owed
    invoices = [
        _invoice(isp_id, period, account_id, kinds[account_id], tuple(by_account[account_id]))
        for account_id in sorted(by_account)
    ]
    statements = []
    for publisher_id in sorted(by_publisher):
        lines = by_publisher[publisher_id]
        net, vat, gross, _ = _totals(lines)
        purchases, refunds, owed = counts[publisher_id]
        statements.append(
            Statement(
                statement_id=f"{isp_id}.{period}.{publisher_id}",
                isp_id=isp_id,
                period=period,
                publisher_id=publisher_id,
                purchases=purchases,
                refunds=refunds,
                gross_cents=gross,
                net_cents=net,
                vat_cents=vat,
                owed_cents=owed,
                seal=seal((isp_id, period, publisher_id), lines),
            )
        )
    credit_notes = [
        _credit_note(
            isp_id, period, kinds[invoice.invoice_id[len(isp_id) + 9 :]], invoice,
            tuple(credited[invoice]),
        )
        for invoice in credited
    ]  # fmt: skip
    credit_notes.sort(key=lambda note: note.credit_note_id)
    gross = sum(invoice.gross_cents for invoice in invoices)
    credit_gross = sum(note.gross_cents for note in credit_notes)
    summary = IspSummary(
        isp_id=isp_id,
        period=period,
        invoices=len(invoices),
        net_cents=sum(invoice.net_cents for invoice in invoices),
        vat_cents=sum(invoice.vat_cents for invoice in invoices),
        gross_cents=gross,
        commission_cents=commission,
        owed_to_platform_cents=gross + credit_gross - commission,
        vat_by_rate=_merged(t for invoice in invoices for t in invoice.vat_by_rate),
        credit_notes=len(credit_notes),
        credit_notes_net_cents=sum(note.net_cents for note in credit_notes),
        credit_notes_vat_cents=sum(note.vat_cents for note in credit_notes),
        credit_notes_gross_cents=credit_gross,
    )
    return PeriodBilling(invoices, statements, summary, credit_notes)


def build_invoices(
    isp_id: str, period: str, facts: Iterable[MoneyFact],
    purchase_rates: Mapping[PurchaseKey, int] | None = None,
) -> list[Invoice]:  # fmt: skip
    """One invoice per account with money billed in the period, in account order. The rates of
    refunded purchases are those among `facts`, else in `purchase_rates`."""
    return bill_period(isp_id, period, facts, purchase_rates).invoices


def summarize(
    isp_id: str, period: str, facts: Iterable[MoneyFact],
    purchase_rates: Mapping[PurchaseKey, int] | None = None,
) -> IspSummary:  # fmt: skip
    return bill_period(isp_id, period, facts, purchase_rates).summary


def build_statements(
    isp_id: str, period: str, facts: Iterable[MoneyFact],
    purchase_rates: Mapping[PurchaseKey, int] | None = None,
) -> list[Statement]:  # fmt: skip
    return bill_period(isp_id, period, facts, purchase_rates).statements


class _SealOf(msgspec.Struct, frozen=True, array_like=True):
    kind: str
    id: str
    seal: str


def period_seal(
    summary: IspSummary, invoices: Iterable[Invoice], statements: Iterable[Statement]
) -> str:
    """The seal of a whole period: its totals and the seal of each invoice and statement, so that
    a changed line anywhere in the period no longer matches it. The totals per VAT rate are not in
    the header: they are a function of the lines, which the invoices' seals cover, and a period
    sealed before they existed keeps its seal."""
    header = (
        summary.isp_id, summary.period, str(summary.invoices), str(summary.net_cents),
        str(summary.vat_cents), str(summary.gross_cents), str(summary.commission_cents),
        str(summary.owed_to_platform_cents),
    )  # fmt: skip
    parts = [_SealOf("invoice", i.invoice_id, i.seal) for i in invoices]
    parts += [_SealOf("statement", s.statement_id, s.seal) for s in statements]
    return seal(header, parts)


# --- numbers and the chain of seals (issue 15, docs/design/seals.md) ----------------------------

# The previous seal of an ISP's first period sealed in the chain.
GENESIS_SEAL = "0" * 64
CHAINED_SEAL_VERSION = "ledger.period_seal.v2"


def numbered(
    first: int, invoices: Iterable[Invoice], credit_notes: Iterable[CreditNote]
) -> dict[str, int]:
    """The numbers of a period's invoices and credit notes: one series per ISP without gaps
    (French invoicing rules), from `first` (one more than the ISP's last number), the invoices
    by id, then the credit notes by id."""
    ids = sorted(i.invoice_id for i in invoices) + sorted(n.credit_note_id for n in credit_notes)
    return {document_id: number for number, document_id in enumerate(ids, start=first)}


class _Sealed(msgspec.Struct, frozen=True, array_like=True):
    kind: str
    id: str
    number: int | None
    seal: str


def chained_period_seal(
    prev_seal: str,
    summary: IspSummary,
    invoices: Iterable[Invoice],
    credit_notes: Iterable[CreditNote],
    statements: Iterable[Statement],
    numbers: Mapping[str, int],
) -> str:
    """The seal of a period in its ISP's chain: the previous period's seal (GENESIS_SEAL for the
    first), the summary with the invoices and credit notes apart, and each invoice's, credit
    note's and statement's id, number and seal. The bytes are documented in
    docs/design/seals.md, so that an ISP can recompute them."""
    header = (
        CHAINED_SEAL_VERSION, prev_seal, summary.isp_id, summary.period,
        str(summary.invoices), str(summary.net_cents), str(summary.vat_cents),
        str(summary.gross_cents), str(summary.credit_notes), str(summary.credit_notes_net_cents),
        str(summary.credit_notes_vat_cents), str(summary.credit_notes_gross_cents),
        str(summary.commission_cents), str(summary.owed_to_platform_cents),
    )  # fmt: skip
    parts = [_Sealed("invoice", i.invoice_id, numbers[i.invoice_id], i.seal) for i in invoices]
    parts += [
        _Sealed("credit_note", n.credit_note_id, numbers[n.credit_note_id], n.seal)
        for n in credit_notes
    ]
    parts += [_Sealed("statement", s.statement_id, None, s.seal) for s in statements]
    return seal(header, parts)
