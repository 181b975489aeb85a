"""`ledger verify-seals`: every sealed row recomputed from the money facts, and compared.

For each ISP, its sealed periods in the order of its chain (billing_periods.chain_no,
docs/design/seals.md), one period at a time: the period's money facts as the writer read them
(money_facts) billed again with the pure core's functions, as the seal does (ledger.core.billing);
the invoice lines that its credit notes correct as stored (each is compared with its
recomputation in its own period); the numbers counted from 1; each seal over the seal recomputed
before it. Every stored row of invoices, invoice_lines, statements, credit_notes,
credit_note_lines and billing_periods is then compared column by column with the recomputed one,
and each difference named: table, key, column, stored and recomputed value. A cent changed behind
the ledger's back is named where it was changed; a seal rewritten to match it is named too.

A period sealed before invoices kept their VAT per rate (migration 0006: vat_by_rate null) was
billed with its refund lines at rate 0 and cannot be recomputed: it is named, not compared, and
the chain goes on from its stored seal. A period sealed before the chain (migration 0010:
prev_seal null) is compared with the unchained formula (billing.period_seal), without numbers.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql

from ledger.core import billing
from projections import rows as projected
from schemas import checked
from schemas.facts import MoneyFact, PurchaseAuthorized, PurchaseRefunded

# Columns whose recomputed value is JSON text or an RFC 3339 string, as the writer copies them.
_JSON_COLUMNS = {"gross_cents_by_user", "vat_by_rate"}
_TIME_COLUMNS = {"occurred_at", "closed_at"}


@dataclass
class SealCheck:
    periods: int = 0  # compared
    rows: int = 0  # compared
    not_compared: list[tuple[str, str]] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)


def _normal(column: str, value: Any) -> Any:
    if value is None:
        return None
    if column in _JSON_COLUMNS and isinstance(value, str):
        return json.loads(value)
    if column in _TIME_COLUMNS and isinstance(value, str):
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    return value


def _stored(
    db: psycopg.Connection[Any], table: str, columns: Sequence[str], where: str, params: Any
) -> list[tuple[Any, ...]]:
    query = sql.SQL("SELECT {} FROM {} WHERE " + where).format(
        sql.SQL(", ").join(map(sql.Identifier, columns)), sql.Identifier(table)
    )
    return db.execute(query, params).fetchall()


def _compare(
    check: SealCheck,
    table: str,
    columns: Sequence[str],
    keys: int,
    stored: list[tuple[Any, ...]],
    recomputed: list[tuple[Any, ...]],
) -> None:
    """Name every row missing, extra, or with a column that differs; a row is known by its first
    `keys` columns."""
    held = {row[:keys]: row for row in stored}
    made = {row[:keys]: row for row in recomputed}
    for key in sorted(held.keys() | made.keys(), key=repr):
        name = f"{table} {'/'.join(map(str, key))}"
        a, b = held.get(key), made.get(key)
        if a is None:
            check.differences.append(f"{name}: missing (recomputed from the facts, not stored)")
            continue
        if b is None:
            check.differences.append(f"{name}: stored, but not recomputed from the facts")
            continue
        check.rows += 1
        for column, held_value, made_value in zip(columns, a, b, strict=True):
            x, y = _normal(column, held_value), _normal(column, made_value)
            if x != y:
                check.differences.append(f"{name}: {column} stored {x!r}, recomputed {y!r}")


def _decoded(rows: Any) -> list[MoneyFact]:
    facts: list[MoneyFact] = []
    for (raw,) in rows:
        fact = checked.decode_fact(bytes(raw))
        assert isinstance(fact, PurchaseAuthorized | PurchaseRefunded)
        facts.append(fact)
    return facts


def _period_facts(db: psycopg.Connection[Any], isp_id: str, period: str) -> list[MoneyFact]:
    """A period's money facts, in event id order, as the writer reads them to seal it. One
    period at a time: an ISP's whole history would not fit in memory on a large log."""
    with db.cursor(binary=True) as cursor:
        cursor.execute(
            "SELECT fact FROM money_facts WHERE isp_id = %s AND billing_period = %s"
            " ORDER BY event_id",
            (isp_id, period),
        )
        return _decoded(cursor)


def _earlier_rates(
    db: psycopg.Connection[Any], isp_id: str, facts: list[MoneyFact]
) -> dict[billing.PurchaseKey, int]:
    """The VAT rate of each purchase of an earlier period that a refund among `facts` reverses,
    from that period's money facts (the same reading as the writer's, in
    projections.store._earlier_purchase_rates, which is asynchronous)."""
    wanted = {billing.purchase_key(f) for f in facts if isinstance(f, PurchaseRefunded)}
    wanted -= billing.refunded_purchase_rates(facts, facts).keys()
    rates: dict[billing.PurchaseKey, int] = {}
    for period in sorted({key[2] for key in wanted}):
        names = sorted({f"purchase.{key[1]}" for key in wanted if key[2] == period})
        with db.cursor(binary=True) as cursor:
            cursor.execute(
                "SELECT fact FROM money_facts WHERE isp_id = %s AND billing_period = %s"
                " AND event_id LIKE 'purchase.%%' AND left(event_id, -17) = ANY(%s)",
                (isp_id, period, names),
            )
            for fact in _decoded(cursor):
                key = billing.purchase_key(fact)
                if key in wanted and isinstance(fact, PurchaseAuthorized):
                    rates[key] = fact.vat_rate_bp
    return rates


@dataclass
class _Chain:
    """What the periods recomputed so far leave to the next one of the ISP."""

    prev_seal: str = billing.GENESIS_SEAL
    next_number: int = 1
    sealed: set[str] = field(default_factory=set)
    numbers: dict[str, int] = field(default_factory=dict)  # recomputed, by document id


def _corrections(
    db: psycopg.Connection[Any], isp_id: str, facts: list[MoneyFact], chain: _Chain
) -> dict[billing.PurchaseKey, billing.Correction]:
    """The invoice line each refund of a purchase sealed before corrects. The line's number is
    read from the stored invoice_lines (every stored line is itself compared with its
    recomputation when its period is verified, so a forged one is named there); the invoice's
    number is the recomputed one."""
    wanted = billing.corrected_purchases(facts, chain.sealed)
    if not wanted:
        return {}
    by_line = {(f"{isp_id}.{key[2]}.{key[0]}", key[1]): key for key in wanted}
    found: dict[billing.PurchaseKey, billing.Correction] = {}
    for invoice_id, purchase_id, line_no in db.execute(
        "SELECT invoice_id, purchase_id, min(line_no) FROM invoice_lines"
        " WHERE invoice_id = ANY(%s) AND kind = 'purchase' AND purchase_id = ANY(%s)"
        " GROUP BY invoice_id, purchase_id",
        (sorted({k[0] for k in by_line}), sorted({k[1] for k in by_line})),
    ).fetchall():
        key = by_line.get((invoice_id, purchase_id))
        if key is not None:
            found[key] = billing.Correction(invoice_id, chain.numbers.get(invoice_id), line_no)
    return found


def _bill(
    db: psycopg.Connection[Any], isp_id: str, period: str, chain: _Chain, chained: bool
) -> billing.PeriodBilling:
    facts = _period_facts(db, isp_id, period)
    rates = _earlier_rates(db, isp_id, facts)
    corrections = _corrections(db, isp_id, facts, chain) if chained else {}
    # A refund of a sealed purchase whose invoice line is missing is billed as a line here: the
    # missing credit note is then named, as the missing line of the earlier invoice was.
    return billing.bill_period(isp_id, period, facts, rates, corrections)


def _verify_period(
    db: psycopg.Connection[Any],
    check: SealCheck,
    isp_id: str,
    period: str,
    stored_prev: str | None,
    stored_seal: str,
    has_vat_by_rate: bool,
    chain: _Chain,
) -> None:
    chained = stored_prev is not None
    billed = _bill(db, isp_id, period, chain, chained)
    chain.sealed.add(period)
    if not has_vat_by_rate:
        check.not_compared.append((isp_id, period))
        chain.prev_seal = stored_seal
        return
    check.periods += 1
    closed_at = db.execute(
        "SELECT max(occurred_at) FROM period_close_marks WHERE isp_id = %s AND period = %s",
        (isp_id, period),
    ).fetchone()
    companies = dict(
        db.execute(
            "SELECT account_id, company_name FROM accounts WHERE account_id = ANY(%s)"
            " AND company_name IS NOT NULL",
            ([i.account_id for i in billed.invoices if i.account_kind == "enterprise"],),
        ).fetchall()
    )
    at = closed_at[0] if closed_at else None
    if chained:
        made = projected.chained_seal_rows(
            billed, companies, chain.next_number, chain.prev_seal, at
        )
        numbers = billing.numbered(chain.next_number, billed.invoices, billed.credit_notes)
        chain.numbers.update(numbers)
        chain.next_number += len(numbers)
        rows = made
        period_row = made.period
        period_columns: tuple[str, ...] = projected.PERIOD_SEAL_COLUMNS
    else:  # sealed before the chain: the unchained formula, no numbers, no credit notes
        old = projected.seal_rows(billed.invoices, billed.statements, companies)
        s = billed.summary
        period_columns = projected.PERIOD_SEAL_COLUMNS[:10]
        period_row = (
            at, s.invoices, s.net_cents, s.vat_cents, s.gross_cents, s.commission_cents,
            s.owed_to_platform_cents,
            billing.period_seal(s, billed.invoices, billed.statements),
            projected.vat_json(s.vat_by_rate), None,
        )  # fmt: skip
        rows = projected.ChainedSealRows(
            [(*row, None) for row in old.invoices], old.lines, old.statements, [], [], period_row
        )
    chain.prev_seal = str(period_row[7])
    by_period = "isp_id = %s AND period = %s"
    _compare(check, "billing_periods", ("isp_id", "period", *period_columns), 2,
             _stored(db, "billing_periods", ("isp_id", "period", *period_columns), by_period,
                     (isp_id, period)),
             [(isp_id, period, *period_row)])  # fmt: skip
    _compare(check, "invoices", projected.NUMBERED_INVOICE_COLUMNS, 1,
             _stored(db, "invoices", projected.NUMBERED_INVOICE_COLUMNS, by_period,
                     (isp_id, period)), rows.invoices)  # fmt: skip
    _compare(check, "invoice_lines", projected.LINE_COLUMNS, 2,
             _stored(db, "invoice_lines", projected.LINE_COLUMNS,
                     "invoice_id IN (SELECT invoice_id FROM invoices WHERE " + by_period + ")",
                     (isp_id, period)), rows.lines)  # fmt: skip
    _compare(check, "statements", projected.STATEMENT_COLUMNS, 1,
             _stored(db, "statements", projected.STATEMENT_COLUMNS, by_period, (isp_id, period)),
             rows.statements)  # fmt: skip
    _compare(check, "credit_notes", projected.CREDIT_NOTE_COLUMNS, 1,
             _stored(db, "credit_notes", projected.CREDIT_NOTE_COLUMNS, by_period,
                     (isp_id, period)), rows.credit_notes)  # fmt: skip
    _compare(check, "credit_note_lines", projected.CREDIT_NOTE_LINE_COLUMNS, 2,
             _stored(db, "credit_note_lines", projected.CREDIT_NOTE_LINE_COLUMNS,
                     "credit_note_id IN (SELECT credit_note_id FROM credit_notes WHERE "
                     + by_period + ")", (isp_id, period)),
             rows.credit_note_lines)  # fmt: skip


def verify_isp(db: psycopg.Connection[Any], isp_id: str, check: SealCheck) -> None:
    chain = _Chain()
    periods = db.execute(
        "SELECT period, prev_seal, seal, vat_by_rate IS NOT NULL FROM billing_periods"
        " WHERE isp_id = %s AND state = 'closed' ORDER BY chain_no NULLS LAST, period",
        (isp_id,),
    ).fetchall()
    for period, prev_seal, stored_seal, has_vat_by_rate in periods:
        _verify_period(db, check, isp_id, period, prev_seal, stored_seal, has_vat_by_rate, chain)
    # Documents of a period that is not sealed, or of no period: they cannot have been sealed.
    for table, key in (("invoices", "invoice_id"), ("credit_notes", "credit_note_id")):
        for (row_id,) in db.execute(
            sql.SQL(
                "SELECT {key} FROM {table} t WHERE isp_id = %s AND NOT EXISTS (SELECT FROM"
                " billing_periods p WHERE p.isp_id = t.isp_id AND p.period = t.period"
                " AND p.state = 'closed') ORDER BY 1"
            ).format(key=sql.Identifier(key), table=sql.Identifier(table)),
            (isp_id,),
        ).fetchall():
            check.differences.append(f"{table} {row_id}: stored, but its period is not sealed")


def verify_seals(db: psycopg.Connection[Any], isp_id: str | None = None) -> dict[str, SealCheck]:
    """Every ISP's (or one's) sealed rows recomputed and compared, in one snapshot."""
    db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
    if isp_id is None:
        isps = [
            row[0]
            for row in db.execute(
                "SELECT isp_id FROM billing_periods UNION SELECT isp_id FROM invoices"
                " UNION SELECT isp_id FROM credit_notes ORDER BY 1"
            ).fetchall()
        ]
    else:
        isps = [isp_id]
    checks: dict[str, SealCheck] = {}
    for isp in isps:
        checks[isp] = SealCheck()
        verify_isp(db, isp, checks[isp])
    db.rollback()
    return checks
