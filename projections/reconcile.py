"""`ledger reconcile`: the books must agree with themselves and with the stream.

- every posting set sums to zero (per event in the journal);
- per ISP and billing period, the shares (publisher + ISP commission + platform + VAT) add up to
  the amounts including VAT the accounts owe, and to the purchases net of refunds;
- per sealed period, the account invoices add up to the ISP's totals, and each invoice to its
  lines; the statements add up to the period's gross and to what the journal owes publishers;
  each invoice's and period's totals per VAT rate are those of its lines (where they are kept:
  periods sealed since migration 0006); each credit note adds up to its lines and a period's
  credit notes to its credit note totals (issue 15);
- the faust balances (per publisher, per ISP) equal the PostgreSQL balances, less the money facts
  the database refused (on ledger.dlq, reason refused_by_database: issue 16), which the stream
  counted and the projections never applied.

Each check yields the rows that do not agree, named; none means the books reconcile.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg

from ledger.core.balances import Balance, Money, money_of
from projections.db import connect


@dataclass
class Check:
    name: str
    mismatches: list[str] = field(default_factory=list)


def _rows(db: psycopg.Connection[Any], query: str) -> list[tuple[Any, ...]]:
    return db.execute(query).fetchall()


def postings_balance(db: psycopg.Connection[Any]) -> Check:
    check = Check("every posting set sums to zero")
    for event_id, total in _rows(
        db, "SELECT event_id, sum(amount_cents) FROM journal GROUP BY event_id"
        " HAVING sum(amount_cents) <> 0 ORDER BY event_id LIMIT 100"
    ):  # fmt: skip
        check.mismatches.append(f"event {event_id}: postings sum to {total}")
    return check


def shares_add_up(db: psycopg.Connection[Any]) -> Check:
    check = Check("shares + commission + platform + VAT = amounts including VAT, per ISP period")
    query = """
        WITH j AS (
            SELECT isp_id, billing_period,
                   sum(amount_cents) FILTER (WHERE party = 'account') AS owed_by_accounts,
                   -sum(amount_cents) FILTER (WHERE party <> 'account') AS shares
            FROM journal GROUP BY isp_id, billing_period),
        m AS (
            SELECT isp_id, billing_period, sum(amount_cents) AS gross FROM (
                SELECT isp_id, billing_period, amount_cents FROM purchases
                WHERE decision = 'authorized'
                UNION ALL
                SELECT isp_id, billing_period, -amount_cents FROM refunds
                WHERE decision = 'refunded') x
            GROUP BY isp_id, billing_period)
        SELECT coalesce(j.isp_id, m.isp_id), coalesce(j.billing_period, m.billing_period),
               j.owed_by_accounts, j.shares, m.gross
        FROM j FULL JOIN m USING (isp_id, billing_period)
        WHERE j.owed_by_accounts IS DISTINCT FROM j.shares
           OR j.owed_by_accounts IS DISTINCT FROM m.gross
        ORDER BY 1, 2"""
    for isp, period, owed, shares, gross in _rows(db, query):
        check.mismatches.append(
            f"isp {isp} period {period}: accounts owe {owed}, shares {shares},"
            f" purchases net of refunds {gross}"
        )
    return check


def invoices_add_up(db: psycopg.Connection[Any]) -> Check:
    check = Check("invoices add up to their lines and to the ISP's totals, per sealed period")
    for invoice_id, total, lines in _rows(db, """
        SELECT i.invoice_id, i.gross_cents, coalesce(sum(l.gross_cents), 0)
        FROM invoices i LEFT JOIN invoice_lines l USING (invoice_id)
        GROUP BY i.invoice_id, i.gross_cents
        HAVING i.gross_cents <> coalesce(sum(l.gross_cents), 0) ORDER BY 1"""):  # fmt: skip
        check.mismatches.append(f"invoice {invoice_id}: total {total}, lines {lines}")
    for isp, period, count, gross, net, vat, inv_count, inv_gross, inv_net, inv_vat in _rows(db, """
        SELECT p.isp_id, p.period, p.invoices, p.gross_cents, p.net_cents, p.vat_cents,
               count(i.invoice_id), coalesce(sum(i.gross_cents), 0),
               coalesce(sum(i.net_cents), 0), coalesce(sum(i.vat_cents), 0)
        FROM billing_periods p LEFT JOIN invoices i USING (isp_id, period)
        WHERE p.state = 'closed'
        GROUP BY p.isp_id, p.period
        HAVING p.invoices <> count(i.invoice_id)
            OR p.gross_cents <> coalesce(sum(i.gross_cents), 0)
            OR p.net_cents <> coalesce(sum(i.net_cents), 0)
            OR p.vat_cents <> coalesce(sum(i.vat_cents), 0)
        ORDER BY 1, 2"""):  # fmt: skip
        check.mismatches.append(
            f"isp {isp} period {period}: summary {count} invoices {gross}/{net}/{vat} cents"
            f" (incl./excl./VAT), invoices {inv_count} {inv_gross}/{inv_net}/{inv_vat}"
        )
    # The statements count every money fact of the period: the invoices' and the credit notes'.
    for isp, period, gross, owed, st_gross, st_owed in _rows(db, """
        SELECT p.isp_id, p.period, p.gross_cents + coalesce(p.credit_notes_gross_cents, 0),
               (SELECT coalesce(-sum(j.amount_cents), 0) FROM journal j
                WHERE j.isp_id = p.isp_id AND j.billing_period = p.period
                  AND j.party = 'publisher'),
               coalesce(sum(s.gross_cents), 0), coalesce(sum(s.owed_cents), 0)
        FROM billing_periods p LEFT JOIN statements s USING (isp_id, period)
        WHERE p.state = 'closed'
        GROUP BY p.isp_id, p.period, p.gross_cents, p.credit_notes_gross_cents
        ORDER BY 1, 2"""):  # fmt: skip
        if gross != st_gross or owed != st_owed:
            check.mismatches.append(
                f"isp {isp} period {period}: statements gross {st_gross} owed {st_owed},"
                f" period gross {gross}, journal owes publishers {owed}"
            )
    _vat_by_rate_adds_up(db, check)
    _credit_notes_add_up(db, check)
    return check


def _credit_notes_add_up(db: psycopg.Connection[Any], check: Check) -> None:
    """Issue 15: each credit note adds up to its lines, and a period's credit notes to its
    credit note totals (kept since migration 0010)."""
    for note_id, count, total, lines, lines_total in _rows(db, """
        SELECT c.credit_note_id, c.lines, c.gross_cents, count(l.line_no),
               coalesce(sum(l.gross_cents), 0)
        FROM credit_notes c LEFT JOIN credit_note_lines l USING (credit_note_id)
        GROUP BY c.credit_note_id, c.lines, c.gross_cents
        HAVING c.lines <> count(l.line_no) OR c.gross_cents <> coalesce(sum(l.gross_cents), 0)
        ORDER BY 1"""):  # fmt: skip
        check.mismatches.append(
            f"credit note {note_id}: {count} lines, total {total}; its lines {lines}, {lines_total}"
        )
    for isp, period, count, gross, net, vat, n, n_gross, n_net, n_vat in _rows(db, """
        SELECT p.isp_id, p.period, p.credit_notes, p.credit_notes_gross_cents,
               p.credit_notes_net_cents, p.credit_notes_vat_cents, count(c.credit_note_id),
               coalesce(sum(c.gross_cents), 0), coalesce(sum(c.net_cents), 0),
               coalesce(sum(c.vat_cents), 0)
        FROM billing_periods p LEFT JOIN credit_notes c USING (isp_id, period)
        WHERE p.state = 'closed' AND p.credit_notes IS NOT NULL
        GROUP BY p.isp_id, p.period
        HAVING p.credit_notes <> count(c.credit_note_id)
            OR p.credit_notes_gross_cents <> coalesce(sum(c.gross_cents), 0)
            OR p.credit_notes_net_cents <> coalesce(sum(c.net_cents), 0)
            OR p.credit_notes_vat_cents <> coalesce(sum(c.vat_cents), 0)
        ORDER BY 1, 2"""):  # fmt: skip
        check.mismatches.append(
            f"isp {isp} period {period}: summary {count} credit notes {gross}/{net}/{vat} cents,"
            f" credit notes {n} {n_gross}/{n_net}/{n_vat}"
        )


# The totals per VAT rate of the lines of each invoice (`invoice_id`) or ISP period, as a JSON
# array ordered by rate: what `vat_by_rate` must hold.
_LINES_BY_RATE = """
    SELECT {key}, jsonb_agg(jsonb_build_object('vat_rate_bp', vat_rate_bp, 'net_cents', net,
                                               'vat_cents', vat, 'gross_cents', gross)
                            ORDER BY vat_rate_bp) AS by_rate
    FROM (SELECT {inner}, l.vat_rate_bp, sum(l.net_cents) AS net, sum(l.vat_cents) AS vat,
                 sum(l.gross_cents) AS gross
          FROM invoice_lines l JOIN invoices i USING (invoice_id)
          GROUP BY {inner}, l.vat_rate_bp) AS per_rate
    GROUP BY {key}"""


def _vat_by_rate_adds_up(db: psycopg.Connection[Any], check: Check) -> None:
    invoices = _LINES_BY_RATE.format(key="invoice_id", inner="i.invoice_id")
    for invoice_id, held, lines in _rows(db, f"""
        SELECT i.invoice_id, i.vat_by_rate, coalesce(x.by_rate, '[]'::jsonb)
        FROM invoices i LEFT JOIN ({invoices}) AS x USING (invoice_id)
        WHERE i.vat_by_rate IS NOT NULL
          AND i.vat_by_rate <> coalesce(x.by_rate, '[]'::jsonb)
        ORDER BY 1"""):  # fmt: skip
        check.mismatches.append(f"invoice {invoice_id}: VAT by rate {held}, its lines {lines}")
    periods = _LINES_BY_RATE.format(key="isp_id, period", inner="i.isp_id, i.period")
    for isp, period, held, lines in _rows(db, f"""
        SELECT p.isp_id, p.period, p.vat_by_rate, coalesce(x.by_rate, '[]'::jsonb)
        FROM billing_periods p LEFT JOIN ({periods}) AS x USING (isp_id, period)
        WHERE p.state = 'closed' AND p.vat_by_rate IS NOT NULL
          AND p.vat_by_rate <> coalesce(x.by_rate, '[]'::jsonb)
        ORDER BY 1, 2"""):  # fmt: skip
        check.mismatches.append(
            f"isp {isp} period {period}: VAT by rate {held}, its invoices' lines {lines}"
        )


REFUSED_BY_DATABASE = "refused_by_database"


def refused_money(bootstrap: str) -> list[Money]:
    """The money facts the database refused (ledger.dlq, reason refused_by_database, their bytes
    kept whole), once each: the stream's balances count them, PostgreSQL's do not."""
    from ledger.kafka import topics
    from projections.factcheck import read_topic
    from schemas import codec
    from schemas.facts import MoneyFact

    refused: dict[str, Money] = {}
    for record in read_topic(bootstrap, topics.DLQ, None):
        try:
            letter = codec.decode_dead_letter(record.value or b"")
            if letter.reason != REFUSED_BY_DATABASE or letter.source_topic != topics.EVENTS:
                continue
            fact = codec.decode_fact(base64.b64decode(letter.raw_base64))
        except (codec.InvalidMessage, ValueError):
            continue
        if isinstance(fact, MoneyFact):
            refused[fact.event_id] = money_of(fact)
    return list(refused.values())


def _less_refused(party: str, stream: dict[str, Balance], refused: list[Money]) -> dict[str, Any]:
    """The stream's balances as (purchases, refunds, gross, owed), less the refused facts."""
    mine = {key: [b.purchases, b.refunds, b.gross_cents, b.owed_cents] for key, b in stream.items()}
    for money in refused:
        key = money.isp_id if party == "isp" else money.publisher_id
        if key not in mine:
            continue
        row = mine[key]
        if money.refund:
            row[1] -= 1
            row[2] += money.amount_cents
        else:
            row[0] -= 1
            row[2] -= money.amount_cents
        row[3] -= money.isp_owed_cents if party == "isp" else money.publisher_owed_cents
    return {key: tuple(row) for key, row in mine.items()}


def stream_balances_equal(
    db: psycopg.Connection[Any], party: str, stream: dict[str, Balance],
    refused: list[Money] | None = None,
) -> Check:  # fmt: skip
    check = Check(f"the faust {party} balances equal the PostgreSQL ones")
    mine_less_refused = _less_refused(party, stream, refused or [])
    found = {
        party_id: (purchases, refunds, gross, owed)
        for party_id, purchases, refunds, gross, owed in db.execute(
            "SELECT party_id, purchases, refunds, gross_cents, credits_cents - debits_cents"
            " FROM balances WHERE party = %s",
            (party,),
        ).fetchall()
    }
    for key in sorted(set(found) | set(stream)):
        mine = mine_less_refused.get(key)
        if mine != found.get(key):
            check.mismatches.append(
                f"{party} {key}: faust (purchases, refunds, gross, owed) {mine},"
                f" PostgreSQL {found.get(key)}"
            )
    return check


def reconcile(
    db: psycopg.Connection[Any], stream_balances: Callable[[str], dict[str, Balance]] | None,
    refused: list[Money] | None = None,
) -> list[Check]:  # fmt: skip
    """`refused`: the money facts the database refused (`refused_money`), which the stream's
    balances count and PostgreSQL's do not."""
    checks = [postings_balance(db), shares_add_up(db), invoices_add_up(db)]
    if stream_balances is not None:
        for party in ("publisher", "isp"):
            checks.append(stream_balances_equal(db, party, stream_balances(party), refused))
    return checks


def reconcile_snapshot(
    dsn: str, stream_balances: Callable[[str], dict[str, Balance]] | None,
    refused: list[Money] | None = None,
) -> list[Check]:  # fmt: skip
    """`reconcile` in one snapshot of the live database (a read-only repeatable-read
    transaction), so that the checks see the same books."""
    with connect(dsn) as db:
        db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return reconcile(db, stream_balances, refused)
