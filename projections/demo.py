"""What `ledger demo` reads from the database: how many of its purchases and refunds are decided
and projected, the billing periods it has to close, whether they are sealed, and the figures of
its summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from projections.db import connect

Connection = psycopg.Connection[tuple[Any, ...]]


def open_demo_db(dsn: str) -> Connection:
    return connect(dsn, autocommit=True)


def stored_offsets(db: Connection, topic: str) -> dict[int, int]:
    """The writer's stored offsets (projection_offsets: a few rows, written with the rows they
    cover): partition → the next offset it will apply."""
    rows = db.execute(
        "SELECT partition, next_offset FROM projection_offsets WHERE topic = %s", (topic,)
    ).fetchall()
    return {int(p): int(o) for p, o in rows}


def projected_count(db: Connection, purchases: list[str], refunds: list[str]) -> int:
    """How many of these purchases and refunds are in the projection (decided either way)."""
    row = db.execute(
        "SELECT (SELECT count(DISTINCT purchase_id) FROM purchases"
        "        WHERE purchase_id = ANY(%s))"
        "     + (SELECT count(DISTINCT refund_id) FROM refunds WHERE refund_id = ANY(%s))",
        (purchases, refunds),
    ).fetchone()
    return int(row[0]) if row else 0


def unsealed_periods(db: Connection, isp_ids: list[str]) -> list[tuple[str, str]]:
    """(ISP, period) of every period billed something and not sealed yet, of these ISPs."""
    rows = db.execute(
        "SELECT DISTINCT m.isp_id, m.billing_period FROM money_facts m"
        " WHERE m.isp_id = ANY(%s) AND NOT EXISTS (SELECT 1 FROM billing_periods p"
        "   WHERE p.isp_id = m.isp_id AND p.period = m.billing_period AND p.state = 'closed')"
        " ORDER BY 1, 2",
        (isp_ids,),
    ).fetchall()
    return [(str(isp), str(period)) for isp, period in rows]


def sealed_count(db: Connection, periods: list[tuple[str, str]]) -> int:
    row = db.execute(
        "SELECT count(*) FROM billing_periods WHERE state = 'closed'"
        " AND (isp_id, period) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
        ([i for i, _ in periods], [p for _, p in periods]),
    ).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class Figures:
    """The demo's summary, as read: money in cents, rows as the database returns them."""

    decided: int
    authorized: int
    revenue_cents: int | None
    refunded_cents: int
    rejections: list[tuple[Any, ...]]  # (reason, count), most frequent first
    invoices: list[tuple[Any, ...]]  # (isp, period, invoices, net, vat, gross, commission)
    top_publishers: list[tuple[Any, ...]]  # (publisher, purchases, owed)


def figures(dsn: str, isp_ids: list[str], publisher_ids: list[str]) -> Figures:
    with open_demo_db(dsn) as db:

        def one(query: str) -> Any:
            row = db.execute(query.encode(), (isp_ids,)).fetchone()
            if row is None:  # an aggregate always has a row
                raise RuntimeError(f"no row from {query}")
            return row

        total, authorized, revenue = one(
            "SELECT count(*), count(*) FILTER (WHERE decision = 'authorized'),"
            " sum(amount_cents) FILTER (WHERE decision = 'authorized') FROM purchases"
            " WHERE isp_id = ANY(%s)"
        )
        refunded = one("SELECT coalesce(sum(amount_cents), 0) FROM refunds"
                       " WHERE decision = 'refunded' AND isp_id = ANY(%s)")[0]  # fmt: skip
        rejections = db.execute(
            "SELECT reason, count(*) FROM purchases WHERE decision = 'rejected'"
            " AND (isp_id = ANY(%s) OR isp_id IS NULL) GROUP BY reason ORDER BY 2 DESC",
            (isp_ids,),
        ).fetchall()
        invoices = db.execute(
            "SELECT isp_id, period, invoices, net_cents, vat_cents, gross_cents,"
            " commission_cents FROM billing_periods WHERE state = 'closed' AND isp_id = ANY(%s)"
            " ORDER BY 1, 2",
            (isp_ids,),
        ).fetchall()
        top = db.execute(
            "SELECT publisher_id, purchases, owed_cents FROM publisher_balances"
            " WHERE publisher_id = ANY(%s) ORDER BY owed_cents DESC LIMIT 5",
            (publisher_ids,),
        ).fetchall()
    return Figures(total, authorized, revenue, int(refunded), rejections, invoices, top)
