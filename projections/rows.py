"""From facts to rows: the pure half of the projection writer.

A batch of new facts (duplicates already taken out) becomes the rows to copy into each table and
one delta per balance, summed in memory so that a batch touches each balance row once. Nothing
here imports psycopg (STYLE.md §1); the adapter in `projections.store` writes what this returns.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import msgspec

from ledger.core import billing
from schemas.facts import (
    AccountBlocked,
    AccountOpened,
    AccountUnblocked,
    CommandRejected,
    EmployeeAuthorised,
    EmployeeRevoked,
    Fact,
    LimitsSet,
    PaymentCommandRejected,
    PaymentExpired,
    PaymentReserved,
    PaymentVoided,
    PeriodClosed,
    PurchaseAuthorized,
    PurchaseRefunded,
    PurchaseRejected,
    ReferenceChanged,
    RefundRejected,
    Upgraded,
)

# Columns, in the order the rows below are built (and copied).
JOURNAL_COLUMNS = (
    "event_id", "leg", "party", "party_id", "amount_cents", "account_id", "isp_id",
    "billing_period", "occurred_at",
)  # fmt: skip
PURCHASE_COLUMNS = (
    "event_id", "purchase_id", "account_id", "isp_id", "user_id", "publisher_id", "category",
    "decision", "reason", "amount_cents", "net_cents", "vat_cents", "vat_rate_bp",
    "billing_period", "late_for_period", "occurred_at",
)  # fmt: skip
REFUND_COLUMNS = (
    "event_id", "refund_id", "purchase_id", "account_id", "isp_id", "publisher_id", "decision",
    "reason", "amount_cents", "net_cents", "vat_cents", "billing_period",
    "purchase_billing_period", "late_for_period", "occurred_at",
)  # fmt: skip
MONEY_FACT_COLUMNS = ("event_id", "isp_id", "billing_period", "fact")
ACCOUNT_COLUMNS = ("account_id", "isp_id", "kind", "company_name", "opened_at")
ACCOUNT_FACT_COLUMNS = ("event_id", "type", "account_id", "isp_id", "occurred_at", "fact")
PAYMENT_COLUMNS = (
    "account_id", "payment_id", "isp_id", "publisher_id", "user_id", "status",
    "amount_held_cents", "reserved_at", "hold_expires_at", "reserved_event_id",
)  # fmt: skip

# The PostgreSQL type of each column above, in the same order, for the writer's binary COPY
# (PERF.md: 42k events/s binary against 23.8k text). Binary COPY applies no cast: a type here
# must be the column's own (projections/migrations; tests/integration/test_projection_copy.py
# compares them with the tables).
JOURNAL_TYPES = (
    "text", "int2", "text", "text", "int8", "text", "text", "text", "timestamptz",
)  # fmt: skip
PURCHASE_TYPES = (
    "text", "text", "text", "text", "text", "text", "text", "text", "text", "int8", "int8",
    "int8", "int4", "text", "text", "timestamptz",
)  # fmt: skip
REFUND_TYPES = (
    "text", "text", "text", "text", "text", "text", "text", "text", "int8", "int8", "int8",
    "text", "text", "text", "timestamptz",
)  # fmt: skip
MONEY_FACT_TYPES = ("text", "text", "text", "bytea")
ACCOUNT_TYPES = ("text", "text", "text", "text", "timestamptz")
ACCOUNT_FACT_TYPES = ("text", "text", "text", "text", "timestamptz", "jsonb")

Row = tuple[Any, ...]


@dataclass(slots=True)
class BalanceDelta:
    purchases: int = 0
    refunds: int = 0
    gross_cents: int = 0
    debits_cents: int = 0
    credits_cents: int = 0

    def as_row(self, party: str, party_id: str) -> Row:
        return (party, party_id, self.purchases, self.refunds, self.gross_cents,
                self.debits_cents, self.credits_cents)  # fmt: skip


@dataclass
class Rows:
    journal: list[Row] = field(default_factory=list)
    purchases: list[Row] = field(default_factory=list)
    refunds: list[Row] = field(default_factory=list)
    money_facts: list[Row] = field(default_factory=list)
    accounts: list[Row] = field(default_factory=list)
    account_facts: list[Row] = field(default_factory=list)
    # The last block state of each account the batch blocked or unblocked: (blocked, reason).
    blocks: dict[str, tuple[bool, str | None]] = field(default_factory=dict)
    balances: dict[tuple[str, str], BalanceDelta] = field(default_factory=dict)
    closes: list[PeriodClosed] = field(default_factory=list)
    # Held payments (issue 14): the new ones (PAYMENT_COLUMNS); how many purchases were
    # authorized (a capture is a purchase whose id is an open hold's, which only the database
    # knows: projections.store matches the open holds with the purchases table); voids and
    # expiries (account, payment id, status, finished at, event id). Applied in this order.
    payments: list[Row] = field(default_factory=list)
    authorized: int = 0
    finished: list[Row] = field(default_factory=list)
    # (isp_id, billing_period) of the money facts: none may be billed in a sealed period.
    billed: set[tuple[str, str]] = field(default_factory=set)

    def balance_rows(self) -> list[Row]:
        """In key order: concurrent writers lock shared balance rows in one order, so they never
        deadlock on each other."""
        return [self.balances[key].as_row(*key) for key in sorted(self.balances)]


_json = msgspec.json.Encoder()


def _money(rows: Rows, fact: PurchaseAuthorized | PurchaseRefunded, raw: bytes) -> None:
    # Every fact of the live stream passes here, five legs each: the loop takes what it needs
    # out of the fact once, and makes a BalanceDelta only for a party new to the batch.
    purchase = isinstance(fact, PurchaseAuthorized)
    gross_cents = fact.amount_cents if purchase else -fact.amount_cents
    event_id, account_id, isp_id = fact.event_id, fact.account_id, fact.isp_id
    period, occurred_at = fact.billing_period, fact.occurred_at
    journal, balances = rows.journal, rows.balances
    for leg, posting in enumerate(fact.postings):
        party, party_id, amount_cents = posting.party, posting.party_id, posting.amount_cents
        journal.append((event_id, leg, party, party_id, amount_cents, account_id, isp_id, period,
                        occurred_at))  # fmt: skip
        delta = balances.get((party, party_id))
        if delta is None:
            delta = balances[party, party_id] = BalanceDelta()
        if amount_cents >= 0:
            delta.debits_cents += amount_cents
        else:
            delta.credits_cents -= amount_cents
        if purchase:
            delta.purchases += 1
        else:
            delta.refunds += 1
        delta.gross_cents += gross_cents
    rows.money_facts.append((event_id, isp_id, period, raw))
    rows.billed.add((isp_id, period))


def _purchase(rows: Rows, fact: PurchaseAuthorized | PurchaseRejected) -> None:
    if isinstance(fact, PurchaseAuthorized):
        rows.purchases.append((
            fact.event_id, fact.purchase_id, fact.account_id, fact.isp_id, fact.user_id,
            fact.publisher_id, fact.category, "authorized", None, fact.amount_cents,
            fact.net_cents, fact.vat_cents, fact.vat_rate_bp, fact.billing_period,
            fact.late_for_period, fact.occurred_at,
        ))  # fmt: skip
    else:
        rows.purchases.append((
            fact.event_id, fact.purchase_id, fact.account_id, fact.isp_id, fact.user_id,
            fact.publisher_id, None, "rejected", fact.reason, fact.amount_cents, None, None,
            None, None, None, fact.occurred_at,
        ))  # fmt: skip


def _refund(rows: Rows, fact: PurchaseRefunded | RefundRejected) -> None:
    if isinstance(fact, PurchaseRefunded):
        rows.refunds.append((
            fact.event_id, fact.refund_id, fact.purchase_id, fact.account_id, fact.isp_id,
            fact.publisher_id, "refunded", None, fact.amount_cents, fact.net_cents,
            fact.vat_cents, fact.billing_period, fact.purchase_billing_period,
            fact.late_for_period, fact.occurred_at,
        ))  # fmt: skip
    else:
        rows.refunds.append((
            fact.event_id, fact.refund_id, fact.purchase_id, fact.account_id, None, None,
            "rejected", fact.reason, fact.amount_cents, None, None, None, None, None,
            fact.occurred_at,
        ))  # fmt: skip


def _account_fact(rows: Rows, fact: Fact, occurred_at: datetime) -> None:
    tag = fact.__struct_config__.tag
    account_id = getattr(fact, "account_id", None)
    isp_id = getattr(fact, "isp_id", None)
    rows.account_facts.append(
        (fact.event_id, tag, account_id, isp_id, occurred_at, _json.encode(fact).decode())
    )


def _payment(
    rows: Rows, fact: PaymentReserved | PaymentVoided | PaymentExpired | PaymentCommandRejected
) -> None:
    if isinstance(fact, PaymentReserved):
        rows.payments.append((
            fact.account_id, fact.payment_id, fact.isp_id, fact.publisher_id, fact.user_id,
            "reserved", fact.amount_cents, fact.occurred_at, fact.hold_expires_at, fact.event_id,
        ))  # fmt: skip
    elif isinstance(fact, PaymentVoided | PaymentExpired):
        status = "voided" if isinstance(fact, PaymentVoided) else "expired"
        rows.finished.append(
            (fact.account_id, fact.payment_id, status, fact.occurred_at, fact.event_id)
        )
    _account_fact(rows, fact, fact.occurred_at)


def add(rows: Rows, fact: Fact, raw: bytes) -> None:
    """Add the rows of one new fact, the next in the order of the log."""
    if isinstance(fact, PurchaseAuthorized):
        _purchase(rows, fact)
        _money(rows, fact, raw)
        rows.authorized += 1
    elif isinstance(fact, PurchaseRefunded):
        _refund(rows, fact)
        _money(rows, fact, raw)
    elif isinstance(fact, PurchaseRejected):
        _purchase(rows, fact)
    elif isinstance(fact, RefundRejected):
        _refund(rows, fact)
    elif isinstance(fact, PeriodClosed):
        rows.closes.append(fact)
    elif isinstance(fact, ReferenceChanged | Upgraded):
        # Issue 15: a reference change passed a partition. No row of its own: it is in
        # applied_events like every fact, the money facts it affects carry their rates, and the
        # latest values are the compacted ledger.reference's. Known, so never a reason to stop.
        # Issue 16: an upgrade likewise (purchase.authorized.v2 is a PurchaseAuthorized, above).
        pass
    elif isinstance(
        fact, PaymentReserved | PaymentVoided | PaymentExpired | PaymentCommandRejected
    ):
        _payment(rows, fact)
    elif isinstance(fact, AccountOpened):
        rows.accounts.append(
            (fact.account_id, fact.isp_id, fact.kind, fact.company_name, fact.occurred_at)
        )
    else:
        if isinstance(fact, AccountBlocked):
            rows.blocks[fact.account_id] = (True, fact.reason)
        elif isinstance(fact, AccountUnblocked):
            rows.blocks[fact.account_id] = (False, None)
        assert isinstance(
            fact,
            AccountBlocked
            | AccountUnblocked
            | LimitsSet
            | EmployeeAuthorised
            | EmployeeRevoked
            | CommandRejected,
        ), f"a fact the projections do not know: {type(fact).__name__}"
        _account_fact(rows, fact, fact.occurred_at)


def project(facts: Iterable[tuple[Fact, bytes]]) -> Rows:
    """The rows of new facts, in the order of the log."""
    rows = Rows()
    for fact, raw in facts:
        add(rows, fact, raw)
    return rows


# --- the rows of a sealed period ----------------------------------------------------------------

INVOICE_COLUMNS = (
    "invoice_id", "isp_id", "period", "account_id", "account_kind", "company_name", "lines",
    "net_cents", "vat_cents", "gross_cents", "gross_cents_by_user", "seal", "vat_by_rate",
)  # fmt: skip
LINE_COLUMNS = (
    "invoice_id", "line_no", "isp_id", "event_id", "kind", "purchase_id", "refund_id", "user_id",
    "publisher_id", "description", "occurred_at", "vat_rate_bp", "net_cents", "vat_cents",
    "gross_cents", "late_for_period",
)  # fmt: skip
STATEMENT_COLUMNS = (
    "statement_id", "isp_id", "period", "publisher_id", "purchases", "refunds", "gross_cents",
    "net_cents", "vat_cents", "owed_cents", "seal",
)  # fmt: skip


class SealRows(NamedTuple):
    """What the seal of a period copies into invoices, invoice_lines and statements."""

    invoices: list[Row]
    lines: list[Row]
    statements: list[Row]


def vat_json(totals: tuple[billing.VatTotal, ...]) -> str:
    return _json.encode(list(totals)).decode()


def seal_rows(
    invoices: list[billing.Invoice],
    statements: list[billing.Statement],
    companies: Mapping[str, str],
) -> SealRows:
    """The rows of a period's invoices (`companies`: the name of each enterprise account), their
    lines, numbered from 1 in the invoice's order, and its statements."""
    lines: list[Row] = []
    for i in invoices:
        invoice_id, isp_id = i.invoice_id, i.isp_id
        lines += [
            (invoice_id, number, isp_id, line.event_id, line.kind, line.purchase_id,
             line.refund_id, line.user_id, line.publisher_id, line.description, line.occurred_at,
             line.vat_rate_bp, line.net_cents, line.vat_cents, line.gross_cents,
             line.late_for_period)
            for number, line in enumerate(i.lines, start=1)
        ]  # fmt: skip
    return SealRows(
        [
            (i.invoice_id, i.isp_id, i.period, i.account_id, i.account_kind,
             companies.get(i.account_id), len(i.lines), i.net_cents, i.vat_cents, i.gross_cents,
             json.dumps(i.gross_cents_by_user) if i.gross_cents_by_user else "{}", i.seal,
             vat_json(i.vat_by_rate))
            for i in invoices
        ],
        lines,
        [
            (s.statement_id, s.isp_id, s.period, s.publisher_id, s.purchases, s.refunds,
             s.gross_cents, s.net_cents, s.vat_cents, s.owed_cents, s.seal)
            for s in statements
        ],
    )  # fmt: skip


# --- credit notes and numbers (issue 15, migration 0010) ----------------------------------------

CREDIT_NOTE_COLUMNS = (
    "credit_note_id", "isp_id", "period", "account_id", "account_kind", "number",
    "corrects_invoice_id", "corrects_invoice_number", "lines", "net_cents", "vat_cents",
    "gross_cents", "seal",
)  # fmt: skip
CREDIT_NOTE_LINE_COLUMNS = (
    "credit_note_id", "line_no", "isp_id", "event_id", "refund_id", "purchase_id", "user_id",
    "publisher_id", "description", "occurred_at", "vat_rate_bp", "net_cents", "vat_cents",
    "gross_cents", "late_for_period", "corrects_line_no",
)  # fmt: skip
# The invoices' rows as seal_rows makes them, and their number last.
NUMBERED_INVOICE_COLUMNS = (*INVOICE_COLUMNS, "number")
PERIOD_SEAL_COLUMNS = (
    "closed_at", "invoices", "net_cents", "vat_cents", "gross_cents", "commission_cents",
    "owed_to_platform_cents", "seal", "vat_by_rate", "prev_seal", "credit_notes",
    "credit_notes_net_cents", "credit_notes_vat_cents", "credit_notes_gross_cents",
)  # fmt: skip


class ChainedSealRows(NamedTuple):
    """What the seal of a period in its ISP's chain writes: SealRows' with the invoices numbered
    (NUMBERED_INVOICE_COLUMNS), the credit notes and their lines, and the period's row
    (PERIOD_SEAL_COLUMNS)."""

    invoices: list[Row]
    lines: list[Row]
    statements: list[Row]
    credit_notes: list[Row]
    credit_note_lines: list[Row]
    period: Row


def chained_seal_rows(
    billed: billing.PeriodBilling,
    companies: Mapping[str, str],
    first_number: int,
    prev_seal: str,
    closed_at: Any,
) -> ChainedSealRows:
    """The rows of a period sealed in its ISP's chain: its documents numbered from
    `first_number`, its seal covering `prev_seal` (ledger.core.billing.chained_period_seal)."""
    invoices, notes, summary = billed.invoices, billed.credit_notes, billed.summary
    numbers = billing.numbered(first_number, invoices, notes)
    rows = seal_rows(invoices, billed.statements, companies)
    note_lines: list[Row] = []
    for n in notes:
        note_lines += [
            (n.credit_note_id, number, n.isp_id, line.event_id, line.refund_id, line.purchase_id,
             line.user_id, line.publisher_id, line.description, line.occurred_at,
             line.vat_rate_bp, line.net_cents, line.vat_cents, line.gross_cents,
             line.late_for_period, line.corrects_line_no)
            for number, line in enumerate(n.lines, start=1)
        ]  # fmt: skip
    seal = billing.chained_period_seal(
        prev_seal, summary, invoices, notes, billed.statements, numbers
    )
    return ChainedSealRows(
        [(*row, numbers[row[0]]) for row in rows.invoices],
        rows.lines,
        rows.statements,
        [
            (n.credit_note_id, n.isp_id, n.period, n.account_id, n.account_kind,
             numbers[n.credit_note_id], n.corrects_invoice_id, n.corrects_invoice_number,
             len(n.lines), n.net_cents, n.vat_cents, n.gross_cents, n.seal)
            for n in notes
        ],
        note_lines,
        (closed_at, summary.invoices, summary.net_cents, summary.vat_cents, summary.gross_cents,
         summary.commission_cents, summary.owed_to_platform_cents, seal,
         vat_json(summary.vat_by_rate), prev_seal, summary.credit_notes,
         summary.credit_notes_net_cents, summary.credit_notes_vat_cents,
         summary.credit_notes_gross_cents),
    )  # fmt: skip
