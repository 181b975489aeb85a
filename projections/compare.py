"""What `ledger replay` compares: per projection table, its row count, the total of each money
column and a checksum of its rows, computed in SQL the same way in two schemas.

The checksum is order-independent (a sum of each row's MD5, taken as a 60-bit number), so it
needs no sort of a large table; any changed, missing or extra row changes it. Columns that say
when a row was written (applied_at, updated_at) are left out: only the facts' content counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

# table → (columns compared, money columns totalled)
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "journal": (("event_id", "leg", "party", "party_id", "amount_cents", "account_id", "isp_id",
                 "billing_period", "occurred_at"), ("amount_cents",)),
    "purchases": (("event_id", "purchase_id", "account_id", "isp_id", "user_id", "publisher_id",
                   "category", "decision", "reason", "amount_cents", "net_cents", "vat_cents",
                   "vat_rate_bp", "billing_period", "late_for_period", "occurred_at"),
                  ("amount_cents", "net_cents", "vat_cents")),
    "refunds": (("event_id", "refund_id", "purchase_id", "account_id", "decision", "reason",
                 "amount_cents", "net_cents", "vat_cents", "billing_period", "late_for_period"),
                ("amount_cents",)),
    "money_facts": (("event_id", "isp_id", "billing_period", "fact"), ()),
    "accounts": (("account_id", "isp_id", "kind", "company_name", "blocked", "block_reason",
                  "opened_at"), ()),
    "account_facts": (("event_id", "type", "account_id", "isp_id", "occurred_at", "fact"), ()),
    "payments": (("account_id", "payment_id", "isp_id", "publisher_id", "user_id", "status",
                  "amount_held_cents", "amount_captured_cents", "reserved_at", "hold_expires_at",
                  "finished_at", "reserved_event_id", "finished_event_id"),
                 ("amount_held_cents", "amount_captured_cents")),
    "balances": (("party", "party_id", "purchases", "refunds", "gross_cents", "debits_cents",
                  "credits_cents"), ("gross_cents", "debits_cents", "credits_cents")),
    "billing_periods": (("isp_id", "period", "state", "partitions", "closed_at", "invoices",
                         "net_cents", "vat_cents", "gross_cents", "commission_cents",
                         "owed_to_platform_cents", "seal", "chain_no", "prev_seal",
                         "credit_notes", "credit_notes_net_cents", "credit_notes_vat_cents",
                         "credit_notes_gross_cents"), ("gross_cents",)),
    "period_close_marks": (("isp_id", "period", "partition", "event_id", "command_id",
                            "occurred_at"), ()),
    "invoices": (("invoice_id", "isp_id", "period", "account_id", "account_kind",
                  "company_name", "lines", "net_cents", "vat_cents", "gross_cents",
                  "gross_cents_by_user", "seal", "number"),
                 ("net_cents", "vat_cents", "gross_cents")),
    "invoice_lines": (("invoice_id", "line_no", "event_id", "kind", "user_id", "publisher_id",
                       "occurred_at", "net_cents", "vat_cents", "gross_cents",
                       "late_for_period"), ("gross_cents",)),
    "statements": (("statement_id", "isp_id", "period", "publisher_id", "purchases", "refunds",
                    "gross_cents", "net_cents", "vat_cents", "owed_cents", "seal"),
                   ("gross_cents", "owed_cents")),
    # Issue 15 (migration 0010).
    "credit_notes": (("credit_note_id", "isp_id", "period", "account_id", "account_kind",
                      "number", "corrects_invoice_id", "corrects_invoice_number", "lines",
                      "net_cents", "vat_cents", "gross_cents", "seal"),
                     ("net_cents", "vat_cents", "gross_cents")),
    "credit_note_lines": (("credit_note_id", "line_no", "isp_id", "event_id", "refund_id",
                           "purchase_id", "user_id", "publisher_id", "description",
                           "occurred_at", "vat_rate_bp", "net_cents", "vat_cents", "gross_cents",
                           "late_for_period", "corrects_line_no"), ("gross_cents",)),
    # Not the fingerprint and type (migration 0004): ids applied before it have none live, and a
    # rebuild has them; `ledger reconcile` compares each fingerprint with the topic instead.
    "applied_events": (("event_id", "topic", "partition", "offset"), ()),
    "projection_offsets": (("topic", "partition", "next_offset"), ()),
}  # fmt: skip


@dataclass(frozen=True)
class TableSummary:
    table: str
    rows: int
    totals: tuple[int, ...]
    checksum: str


# The billed tables, by the ISP period of each row. A period sealed before invoices showed their
# VAT per rate (migration 0006, issue 12) was billed with its refund lines at rate 0 and stays so
# (sealed rows never change), while a rebuild bills it right: such periods are left out of the
# comparison on both sides (`sealed_before_vat_by_rate`), and named apart.
_BY_PERIOD = sql.SQL("(isp_id, period)")
_PERIOD_OF = {
    "billing_periods": _BY_PERIOD,
    "invoices": _BY_PERIOD,
    "statements": _BY_PERIOD,
    # An invoice id is `{isp_id}.{period}.{account_id}`.
    "invoice_lines": sql.SQL("(isp_id, substr(invoice_id, length(isp_id) + 2, 7))"),
    "credit_notes": _BY_PERIOD,
    # A credit note id is `{isp_id}.{period}.{account_id}.credit.{period}`.
    "credit_note_lines": sql.SQL("(isp_id, substr(credit_note_id, length(isp_id) + 2, 7))"),
}
Periods = list[tuple[str, str]]


def sealed_before_vat_by_rate(db: psycopg.Connection[Any], schema: str) -> Periods:
    """Also every sealed period of an ISP that has one sealed before the chain of seals
    (migration 0010: prev_seal null): its chain and its numbers start there live, and from its
    first period in a rebuild (docs/design/seals.md)."""
    rows = db.execute(
        sql.SQL(
            "SELECT isp_id, period FROM {t} WHERE state = 'closed' AND (vat_by_rate IS NULL"
            " OR isp_id IN (SELECT isp_id FROM {t} WHERE state = 'closed' AND prev_seal IS NULL))"
            " ORDER BY isp_id, period"
        ).format(t=sql.Identifier(schema, "billing_periods"))
    ).fetchall()
    return [(str(isp), str(period)) for isp, period in rows]


def summarize_table(
    db: psycopg.Connection[Any], schema: str, table: str, left_out: Periods | None = None
) -> TableSummary:
    columns, money = TABLES[table]
    row = sql.SQL("ROW({})::text").format(sql.SQL(", ").join(map(sql.Identifier, columns)))
    sums = [sql.SQL("coalesce(sum({}), 0)::bigint").format(sql.Identifier(c)) for c in money]
    where: sql.Composable = sql.SQL("")
    params: tuple[Any, ...] = ()
    if left_out and table in _PERIOD_OF:
        where = sql.SQL(" WHERE {} NOT IN (SELECT * FROM unnest(%s::text[], %s::text[]))").format(
            _PERIOD_OF[table]
        )
        params = ([isp for isp, _ in left_out], [period for _, period in left_out])
    query = sql.SQL(
        "SELECT count(*), coalesce(sum(('x' || substr(md5({row}), 1, 15))::bit(60)::bigint), 0)"
        "{sums} FROM {table}{where}"
    ).format(
        row=row,
        sums=sql.SQL("").join(sql.SQL(", ") + s for s in sums),
        table=sql.Identifier(schema, table),
        where=where,
    )
    found = db.execute(query, params).fetchone()
    assert found is not None
    return TableSummary(table, int(found[0]), tuple(int(v) for v in found[2:]), str(found[1]))


def summarize(
    db: psycopg.Connection[Any], schema: str, left_out: Periods | None = None
) -> dict[str, TableSummary]:
    """Every table; the billed rows of the `left_out` ISP periods not counted."""
    return {table: summarize_table(db, schema, table, left_out) for table in TABLES}


def differences(left: dict[str, TableSummary], right: dict[str, TableSummary]) -> list[str]:
    """One line per table that differs, naming what differs."""
    found = []
    for table in TABLES:
        a, b = left[table], right[table]
        if a == b:
            continue
        what = []
        if a.rows != b.rows:
            what.append(f"rows {a.rows} vs {b.rows}")
        if a.totals != b.totals:
            what.append(f"totals {a.totals} vs {b.totals} ({', '.join(TABLES[table][1])})")
        if a.checksum != b.checksum:
            what.append("checksum")
        found.append(f"{table}: {'; '.join(what)}")
    return found
