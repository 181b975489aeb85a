"""`ledger isp-api`: the ISPs' read API over the sealed invoices in PostgreSQL.

Each ISP authenticates with its own API key (Bearer), stored only as a SHA-256 hash. A missing or
unknown key is a 401; a path of another ISP, or an invoice that is not the caller's, is a 404 that
says no more than a path that does not exist. Every query is bound to the key's ISP, and every
path and query value is checked before it reaches PostgreSQL (ledger.api.validation).
"""

from __future__ import annotations

import csv
import io
import logging
import re
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Histogram

from ledger.api.database import Database
from ledger.api.errors import ApiError
from ledger.api.http import RequestMetrics, bearer, create_app, unauthenticated
from ledger.api.validation import (
    CREDIT_NOTE_ID,
    INVOICE_ID,
    PERIOD,
    WHOLE_NUMBER,
    not_found,
    path_value,
    query_value,
)
from ledger.keys import key_hash
from ledger.settings import listen_host

log = logging.getLogger("ledger.api.isp")
PAGE_INVOICES_MAX = 1_000
METRICS = RequestMetrics(
    Counter("ledger_isp_api_requests_total", "ISP API requests", ["route", "status"]),
    Histogram("ledger_isp_api_request_latency_seconds", "ISP API latency", ["route"]),
)

CSV_COLUMNS = (
    "invoice_id", "line_no", "kind", "purchase_id", "refund_id", "user_id", "publisher_id",
    "description", "occurred_at", "vat_rate_bp", "net_cents", "vat_cents", "gross_cents",
    "late_for_period",
)  # fmt: skip
# A credit note's lines (issue 15): each names the line of the sealed invoice it corrects.
CREDIT_NOTE_CSV_COLUMNS = (
    "credit_note_id", "line_no", "refund_id", "purchase_id", "user_id", "publisher_id",
    "description", "occurred_at", "vat_rate_bp", "net_cents", "vat_cents", "gross_cents",
    "late_for_period", "corrects_line_no", "event_id",
)  # fmt: skip
CREDIT_NOTE_COLUMNS = (
    "credit_note_id, period, account_id, account_kind, number, corrects_invoice_id,"
    " corrects_invoice_number, lines, net_cents, vat_cents, gross_cents, seal"
)
# A sealed period, with the seal its own covers (docs/design/seals.md).
PERIOD_COLUMNS = (
    "period, closed_at, invoices, net_cents, vat_cents, gross_cents, commission_cents,"
    " owed_to_platform_cents, seal, vat_by_rate, prev_seal, chain_no, credit_notes,"
    " credit_notes_net_cents, credit_notes_vat_cents, credit_notes_gross_cents"
)


def _json(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    return value


def _clean(row: dict[str, Any]) -> dict[str, Any]:
    return {k: _json(v) for k, v in row.items()}


class IspApi:
    def __init__(self, dsn: str, schema: str = "ledger") -> None:
        self.db = Database(dsn, schema)

    async def start(self, _app: web.Application) -> None:
        await self.db.query("SELECT 1", ())

    async def stop(self, _app: web.Application) -> None:
        await self.db.close()

    async def query(self, text: str, params: tuple[Any, ...]) -> list[dict[str, Any]]:
        return await self.db.query(text, params)

    async def isp_of(self, request: web.Request) -> str:
        key = bearer(request)
        rows = await self.query(
            "SELECT isp_id FROM isp_api_keys WHERE key_sha256 = %s AND revoked_at IS NULL",
            (key_hash(key),),
        )
        if not rows:
            raise unauthenticated("unknown or revoked API key")
        isp_id: str = rows[0]["isp_id"]
        if request.match_info.get("isp_id") != isp_id:
            raise not_found()
        return isp_id

    async def invoice_and_lines(
        self, request: web.Request
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        isp_id = await self.isp_of(request)
        invoice_id = path_value(request, "invoice_id", INVOICE_ID, "resource")
        found = await self.query(
            "SELECT invoice_id, isp_id, period, account_id, account_kind, company_name, lines,"
            " net_cents, vat_cents, gross_cents, gross_cents_by_user, seal, vat_by_rate, number"
            " FROM invoices"
            " WHERE isp_id = %s AND invoice_id = %s",
            (isp_id, invoice_id),
        )
        if not found:
            raise not_found()
        lines = await self.query(
            "SELECT " + ", ".join((*CSV_COLUMNS, "event_id")) + " FROM invoice_lines"
            " WHERE isp_id = %s AND invoice_id = %s ORDER BY line_no",
            (isp_id, invoice_id),
        )
        return found[0], lines

    async def credit_note_and_lines(
        self, request: web.Request
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        isp_id = await self.isp_of(request)
        note_id = path_value(request, "credit_note_id", CREDIT_NOTE_ID, "resource")
        found = await self.query(
            f"SELECT {CREDIT_NOTE_COLUMNS} FROM credit_notes"
            " WHERE isp_id = %s AND credit_note_id = %s",
            (isp_id, note_id),
        )
        if not found:
            raise not_found()
        lines = await self.query(
            "SELECT " + ", ".join(CREDIT_NOTE_CSV_COLUMNS) + " FROM credit_note_lines"
            " WHERE isp_id = %s AND credit_note_id = %s ORDER BY line_no",
            (isp_id, note_id),
        )
        return found[0], lines

    async def sealed_parts(self, isp_id: str, period: str) -> list[dict[str, Any]]:
        """What the period's seal covers besides its summary, in the order hashed."""
        return await self.query(
            "SELECT kind, id, number, seal FROM ("
            " SELECT 1 AS o, 'invoice' AS kind, invoice_id AS id, number, seal FROM invoices"
            "  WHERE isp_id = %s AND period = %s"
            " UNION ALL SELECT 2, 'credit_note', credit_note_id, number, seal FROM credit_notes"
            "  WHERE isp_id = %s AND period = %s"
            " UNION ALL SELECT 3, 'statement', statement_id, NULL, seal FROM statements"
            '  WHERE isp_id = %s AND period = %s) parts ORDER BY o, id COLLATE "C"',
            (isp_id, period) * 3,
        )


def _invoices_page(
    request: web.Request, ids: re.Pattern[str] = INVOICE_ID, what: str = "an invoice id"
) -> tuple[str, str, int]:
    """The period, the id to start after and the page size of a listing, else a 400."""
    period = request.query.get("period", "")
    if not PERIOD.fullmatch(period):
        raise ApiError(400, "bad_request", "the query needs period=YYYY-MM")
    after = query_value(request, "after", ids, f"{what} (next_after)", "")
    page = query_value(request, "limit", WHOLE_NUMBER, "a whole number", str(PAGE_INVOICES_MAX))
    limit = int(page)
    if not 1 <= limit <= PAGE_INVOICES_MAX:
        raise ApiError(400, "bad_request", f"limit is 1 to {PAGE_INVOICES_MAX}")
    return period, after, limit


def _csv_response(
    name: str, lines: list[dict[str, Any]], columns: tuple[str, ...] = CSV_COLUMNS
) -> web.Response:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(columns)
    for line in lines:
        writer.writerow(["" if line[c] is None else _json(line[c]) for c in columns])
    return web.Response(
        text=out.getvalue(), content_type="text/csv", charset="utf-8",
        headers={"Content-Disposition": f'attachment; filename="{name}.csv"'},
    )  # fmt: skip


def routes(api: IspApi) -> web.RouteTableDef:
    table = web.RouteTableDef()

    @table.get("/v1/isps/{isp_id}/periods")
    async def periods(request: web.Request) -> web.Response:
        isp_id = await api.isp_of(request)
        rows = await api.query(
            f"SELECT {PERIOD_COLUMNS} FROM billing_periods"
            " WHERE isp_id = %s AND state = 'closed' ORDER BY period",
            (isp_id,),
        )
        return web.json_response({"isp_id": isp_id, "periods": [_clean(r) for r in rows]})

    @table.get("/v1/isps/{isp_id}/periods/{period}")
    async def period(request: web.Request) -> web.Response:
        """A sealed period with what its seal covers: an ISP recomputes the chain from this and
        its invoices' and credit notes' lines (docs/design/seals.md)."""
        isp_id = await api.isp_of(request)
        key = path_value(request, "period", PERIOD, "resource")
        rows = await api.query(
            f"SELECT {PERIOD_COLUMNS} FROM billing_periods"
            " WHERE isp_id = %s AND period = %s AND state = 'closed'",
            (isp_id, key),
        )
        if not rows:
            raise not_found()
        parts = await api.sealed_parts(isp_id, key)
        return web.json_response({"isp_id": isp_id, **_clean(rows[0]), "sealed_parts": parts})

    @table.get("/v1/isps/{isp_id}/credit-notes")
    async def credit_notes(request: web.Request) -> web.Response:
        isp_id = await api.isp_of(request)
        period, after, limit = _invoices_page(request, CREDIT_NOTE_ID, "a credit note id")
        rows = await api.query(
            f"SELECT {CREDIT_NOTE_COLUMNS} FROM credit_notes WHERE isp_id = %s AND period = %s"
            " AND credit_note_id > %s ORDER BY credit_note_id LIMIT %s",
            (isp_id, period, after, limit),
        )
        body: dict[str, Any] = {"isp_id": isp_id, "period": period, "credit_notes": rows}
        if len(rows) == limit:
            body["next_after"] = rows[-1]["credit_note_id"]
        return web.json_response(body)

    @table.get("/v1/isps/{isp_id}/credit-notes/{credit_note_id}.csv")
    async def credit_note_csv(request: web.Request) -> web.Response:
        found, lines = await api.credit_note_and_lines(request)
        return _csv_response(found["credit_note_id"], lines, CREDIT_NOTE_CSV_COLUMNS)

    @table.get("/v1/isps/{isp_id}/credit-notes/{credit_note_id}")
    async def credit_note(request: web.Request) -> web.Response:
        found, lines = await api.credit_note_and_lines(request)
        return web.json_response({**_clean(found), "credit_note_lines": [_clean(x) for x in lines]})

    @table.get("/v1/isps/{isp_id}/invoices")
    async def invoices(request: web.Request) -> web.Response:
        isp_id = await api.isp_of(request)
        period, after, limit = _invoices_page(request)
        rows = await api.query(
            "SELECT invoice_id, account_id, account_kind, company_name, lines, net_cents,"
            " vat_cents, gross_cents, gross_cents_by_user, seal, vat_by_rate FROM invoices"
            " WHERE isp_id = %s AND period = %s AND invoice_id > %s ORDER BY invoice_id LIMIT %s",
            (isp_id, period, after, limit),
        )
        body: dict[str, Any] = {"isp_id": isp_id, "period": period, "invoices": rows}
        if len(rows) == limit:
            body["next_after"] = rows[-1]["invoice_id"]
        return web.json_response(body)

    # Before the JSON route: an invoice id has dots, and "{invoice_id}" would take ".csv" too.
    @table.get("/v1/isps/{isp_id}/invoices/{invoice_id}.csv")
    async def invoice_csv(request: web.Request) -> web.Response:
        found, lines = await api.invoice_and_lines(request)
        return _csv_response(found["invoice_id"], lines)

    @table.get("/v1/isps/{isp_id}/invoices/{invoice_id}")
    async def invoice(request: web.Request) -> web.Response:
        found, lines = await api.invoice_and_lines(request)
        return web.json_response({**_clean(found), "invoice_lines": [_clean(x) for x in lines]})

    @table.get("/v1/isps/openapi.json")
    async def openapi(_request: web.Request) -> web.Response:
        from ledger.api.openapi import isp_openapi_document

        return web.json_response(isp_openapi_document())

    return table


def create_isp_app(api: IspApi) -> web.Application:
    return create_app(routes(api), METRICS, log, api.start, api.stop)


def run_isp_api(dsn: str, port: int) -> None:
    web.run_app(create_isp_app(IspApi(dsn)), host=listen_host(), port=port, print=None)
