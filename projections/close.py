"""What `ledger close-period` reads back: whether the close it sent sealed the period, or was
refused on the stream."""

from __future__ import annotations

from typing import Any

from projections.db import connect


def close_outcome(dsn: str, isp_id: str, period: str, command_id: str) -> tuple[str, Any] | None:
    """('closed', summary row), ('rejected', reasons) or None while the close is under way. The
    summary row: state, invoices, net, VAT, gross, commission, owed to the platform, seal, the
    previous seal in the ISP's chain, credit notes and their gross (issue 15)."""
    with connect(dsn) as db:
        row = db.execute(
            "SELECT state, invoices, net_cents, vat_cents, gross_cents, commission_cents,"
            " owed_to_platform_cents, seal, prev_seal, credit_notes, credit_notes_gross_cents"
            " FROM billing_periods WHERE isp_id = %s AND period = %s",
            (isp_id, period),
        ).fetchone()
        if row is not None and row[0] == "closed":
            return "closed", row
        reasons = db.execute(
            "SELECT DISTINCT fact->>'reason' FROM account_facts"
            " WHERE type = 'command.rejected.v1' AND fact->>'command_id' = %s",
            (command_id,),
        ).fetchall()
        if reasons:
            return "rejected", sorted(r[0] for r in reasons)
    return None


def waits_for(dsn: str, isp_id: str, period: str) -> str | None:
    """The period that a period closed in every partition waits for (the one before it in its
    ISP's chain, not sealed yet: docs/design/seals.md), or None."""
    with connect(dsn) as db:
        row = db.execute(
            "SELECT b.period FROM billing_periods p JOIN billing_periods b"
            " ON b.isp_id = p.isp_id AND b.chain_no = p.chain_no - 1"
            " WHERE p.isp_id = %s AND p.period = %s AND p.state = 'closing'"
            " AND b.state = 'closing'",
            (isp_id, period),
        ).fetchone()
    return None if row is None else str(row[0])
