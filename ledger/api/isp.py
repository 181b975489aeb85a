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
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from aiohttp import web
from prometheus_client import Counter, Gauge, Histogram

from ledger.api.admission import Admission, AdmissionMetrics, Limits
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


@dataclass(frozen=True)
class _Document:
    """A kind of sealed document an ISP reads (an invoice, a credit note): its table and id, the
    columns of its listing and of itself, and its lines' table, columns and CSV columns. The
    answers' keys are the tables' names (`invoices`, `invoice_lines`, ...)."""

    table: str
    id_column: str
    ids: re.Pattern[str]
    what: str  # "an invoice id": the 400's words for a bad `after`
    listed: str  # the columns of the period's listing
    columns: str  # the columns of one document
    lines_table: str
    line_columns: tuple[str, ...]
    csv_columns: tuple[str, ...]


INVOICES = _Document(
    "invoices", "invoice_id", INVOICE_ID, "an invoice id",
    "invoice_id, account_id, account_kind, company_name, lines, net_cents, vat_cents, gross_cents,"
    " gross_cents_by_user, seal, vat_by_rate",
    "invoice_id, isp_id, period, account_id, account_kind, company_name, lines, net_cents,"
    " vat_cents, gross_cents, gross_cents_by_user, seal, vat_by_rate, number",
    "invoice_lines", (*CSV_COLUMNS, "event_id"), CSV_COLUMNS,
)  # fmt: skip
CREDIT_NOTES = _Document(
    "credit_notes", "credit_note_id", CREDIT_NOTE_ID, "a credit note id",
    CREDIT_NOTE_COLUMNS, CREDIT_NOTE_COLUMNS, "credit_note_lines", CREDIT_NOTE_CSV_COLUMNS,
    CREDIT_NOTE_CSV_COLUMNS,
)  # fmt: skip


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

    async def document_and_lines(
        self, request: web.Request, document: _Document
    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """One of the caller's invoices or credit notes, with its lines in order; else a 404."""
        isp_id = await self.isp_of(request)
        doc_id = path_value(request, document.id_column, document.ids, "resource")
        found = await self.query(
            f"SELECT {document.columns} FROM {document.table}"
            f" WHERE isp_id = %s AND {document.id_column} = %s",
            (isp_id, doc_id),
        )
        if not found:
            raise not_found()
        lines = await self.query(
            f"SELECT {', '.join(document.line_columns)} FROM {document.lines_table}"
            f" WHERE isp_id = %s AND {document.id_column} = %s ORDER BY line_no",
            (isp_id, doc_id),
        )
        return found[0], lines

    async def page(self, request: web.Request, document: _Document) -> dict[str, Any]:
        """A page of the caller's invoices or credit notes of a period, in id order."""
        isp_id = await self.isp_of(request)
        period, after, limit = _invoices_page(request, document.ids, document.what)
        rows = await self.query(
            f"SELECT {document.listed} FROM {document.table} WHERE isp_id = %s AND period = %s"
            f" AND {document.id_column} > %s ORDER BY {document.id_column} LIMIT %s",
            (isp_id, period, after, limit),
        )
        body: dict[str, Any] = {"isp_id": isp_id, "period": period, document.table: rows}
        if len(rows) == limit:
            body["next_after"] = rows[-1][document.id_column]
        return body

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

    for path, document in (("credit-notes", CREDIT_NOTES), ("invoices", INVOICES)):
        _document_routes(api, table, f"/v1/isps/{{isp_id}}/{path}", document)

    @table.get("/v1/isps/openapi.json")
    async def openapi(_request: web.Request) -> web.Response:
        from ledger.api.openapi import isp_openapi_document

        return web.json_response(isp_openapi_document())

    return table


def _document_routes(api: IspApi, table: web.RouteTableDef, base: str, document: _Document) -> None:
    """A period's page of documents, one as JSON, and one's lines as CSV."""

    @table.get(base)
    async def page(request: web.Request) -> web.Response:
        return web.json_response(await api.page(request, document))

    # Before the JSON route: an id has dots, and "{id}" would take ".csv" too.
    @table.get(f"{base}/{{{document.id_column}}}.csv")
    async def lines_csv(request: web.Request) -> web.Response:
        found, lines = await api.document_and_lines(request, document)
        return _csv_response(found[document.id_column], lines, document.csv_columns)

    @table.get(f"{base}/{{{document.id_column}}}")
    async def one(request: web.Request) -> web.Response:
        found, lines = await api.document_and_lines(request, document)
        return web.json_response(
            {**_clean(found), document.lines_table: [_clean(x) for x in lines]}
        )


ADMISSION = AdmissionMetrics(
    Counter("ledger_isp_api_shed_total", "requests shed (429/503 with Retry-After)", ["reason"]),
    Gauge("ledger_isp_api_in_flight", "requests being handled"),
)


def create_isp_app(api: IspApi, limits: Limits | None = None) -> web.Application:
    admission = Admission(limits or Limits(), ADMISSION)
    return create_app(routes(api), METRICS, log, api.start, api.stop, admission=admission)


def run_isp_api(dsn: str, port: int, limits: Limits | None = None) -> None:
    web.run_app(create_isp_app(IspApi(dsn), limits), host=listen_host(), port=port, print=None)
