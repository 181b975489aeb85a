"""What `ledger status` reads from the database: where the projection writer resumes each
partition of ledger.events, the latest billing periods of each ISP, and its open holds."""

from __future__ import annotations

from dataclasses import dataclass

from ledger.kafka import topics
from projections.db import connect

CONNECT_TIMEOUT_SECONDS = 5  # status answers when things are down: it must not hang on them

_PERIODS = """
    WITH activity AS (
        SELECT isp_id, billing_period AS period, count(*) AS purchases,
               sum(amount_cents) AS gross
        FROM purchases WHERE decision = 'authorized' AND isp_id IS NOT NULL
        GROUP BY isp_id, billing_period),
    every AS (
        SELECT coalesce(a.isp_id, b.isp_id) AS isp_id, coalesce(a.period, b.period) AS period,
               coalesce(b.state, 'open') AS state, coalesce(a.purchases, 0) AS purchases,
               coalesce(a.gross, 0) AS gross, b.invoices,
               row_number() OVER (PARTITION BY coalesce(a.isp_id, b.isp_id)
                                  ORDER BY coalesce(a.period, b.period) DESC) AS recency
        FROM activity a FULL JOIN billing_periods b
          ON a.isp_id = b.isp_id AND a.period = b.period)
    SELECT isp_id, period, state, purchases, gross, invoices FROM every
    WHERE recency <= %s ORDER BY isp_id, period
"""


@dataclass(frozen=True)
class PeriodState:
    isp_id: str
    period: str
    state: str  # open | closing | closed
    purchases: int
    gross_cents: int
    invoices: int | None


def stored_offsets_and_periods(
    dsn: str, periods_per_isp: int
) -> tuple[dict[int, int], list[PeriodState]]:
    """The writer's stored offset per partition of ledger.events, and the `periods_per_isp` latest
    billing periods of each ISP (with activity or a row of their own)."""
    with connect(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS) as db:
        stored: dict[int, int] = dict(
            db.execute(
                "SELECT partition, next_offset FROM projection_offsets WHERE topic = %s",
                (topics.EVENTS,),
            ).fetchall()
        )
        periods = [
            PeriodState(isp, period, state, int(purchases), int(gross), invoices)
            for isp, period, state, purchases, gross, invoices in db.execute(
                _PERIODS, (periods_per_isp,)
            ).fetchall()
        ]
    return stored, periods


_HOLDS = """
    SELECT isp_id, count(*), sum(amount_held_cents), min(reserved_at), min(hold_expires_at)
    FROM holds GROUP BY isp_id ORDER BY isp_id
"""


@dataclass(frozen=True)
class OpenHolds:
    """An ISP's held payments not captured, voided or expired yet (issue 14)."""

    isp_id: str
    holds: int
    held_cents: int
    oldest_reserved_at: str  # ISO time
    next_expiry_at: str


def open_holds(dsn: str) -> list[OpenHolds]:
    with connect(dsn, connect_timeout=CONNECT_TIMEOUT_SECONDS) as db:
        return [
            OpenHolds(isp, int(count), int(held), oldest.isoformat(timespec="seconds"),
                      expiry.isoformat(timespec="seconds"))
            for isp, count, held, oldest, expiry in db.execute(_HOLDS).fetchall()
        ]  # fmt: skip
