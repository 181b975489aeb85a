"""The OpenAPI document of the HTTP APIs, with the request bodies' schemas generated from the same
types that decode them."""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from ledger.api.bodies import REQUEST_BODIES
from ledger.api.purchases import REFUND_AGE_MAX_SECONDS
from ledger.api.validation import CREDIT_NOTE_ID, ID, INVOICE_ID
from ledger.core.calendar import SECONDS_PER_DAY

_ERROR = {"$ref": "#/components/schemas/Error"}
REFUND_POLICY = (
    "Refund policy: a purchase can be refunded, in one or more parts up to its amount, until the "
    "billing period after the one it was billed in is closed for its ISP, and for at most "
    f"{REFUND_AGE_MAX_SECONDS // SECONDS_PER_DAY} days after it occurred. After that the answer "
    "is a 409 refund_window_closed: the purchase is on a sealed invoice and is corrected by a "
    "credit note. A refund already accepted is answered again (same refund_id, same body) "
    "whatever the date."
)

REFERENCE_CHANGE = (
    "Fields left out keep their values. The change goes to every partition of the ledger's "
    "commands, in their order: the decisions of commands dated at or after effective_at (absent: "
    "now) and taken after the change arrived use the new values; those dated before it keep the "
    "old ones. effective_at in the past is refused (422): decisions already taken would have "
    "been different."
)


def _response(description: str, schema: dict[str, Any] | None = None) -> dict[str, Any]:
    body = {"content": {"application/json": {"schema": schema or {"type": "object"}}}}
    return {"description": description, **body}


# A 422 is either a body the API refused (an Error) or a command the ledger decided against (the
# rejection fact, with its typed reason).
_REJECTED_OR_ERROR: dict[str, Any] = {"anyOf": [
    {"$ref": "#/components/schemas/Error"},
    {"type": "object", "required": ["type", "reason"],
     "properties": {"type": {"type": "string"}, "reason": {"type": "string"}}},
]}  # fmt: skip


def _errors(*statuses: int) -> dict[str, Any]:
    words = {400: "bad request", 401: "no or wrong API key", 403: "not yours", 404: "not found",
             409: "a conflict: the same id with another body; for a refund, the refund window is"
                  " over (refund_window_closed); for a payment, its Idempotency-Key used for"
                  " another request (idempotency_key_reused)",
             410: "gone: a publisher alone can no longer charge; prepare a payment with POST"
                  " /v1/payments",
             413: "body too large", 422: "invalid body or rejected",
             429: "more requests/s than this key's rate (rate_limited): send it again after"
                  " Retry-After seconds",
             503: "the API is overloaded (overloaded) or the ledger (its broker or database) is"
                  " unreachable: send it again after Retry-After seconds"}  # fmt: skip
    return {str(code): _response(words[code], _REJECTED_OR_ERROR if code == 422 else _ERROR)
            for code in statuses}  # fmt: skip


def _body(name: str, required: bool = True) -> dict[str, Any]:
    schema = {"$ref": f"#/components/schemas/{name}"}
    return {"required": required, "content": {"application/json": {"schema": schema}}}


def _op(
    summary: str, body: str | None, ok: dict[str, Any], errors: tuple[int, ...], admin: bool,
    body_required: bool = True, description: str | None = None,
) -> dict[str, Any]:  # fmt: skip
    op: dict[str, Any] = {
        "summary": summary,
        "security": [{"adminKey": []}] if admin else [{"publisherKey": []}],
        # Admission control (ledger.api.admission) may answer any operation 429 or 503.
        "responses": {**ok, **_errors(*sorted({*errors, 429, 503}))},
    }
    if description:
        op["description"] = description
    if body:
        op["requestBody"] = _body(body, body_required)
    return op


def _path_param(name: str, pattern: str = ID.pattern) -> dict[str, Any]:
    """A path id; one that does not match its pattern names nothing, and is answered 404."""
    schema = {"type": "string", "pattern": f"^{pattern}$"}
    return {"name": name, "in": "path", "required": True, "schema": schema}


@cache
def openapi_document() -> dict[str, Any]:
    # Longer than a screen on purpose: the document is one literal that reads in the order of the
    # API's routes; split, each path's contract would be away from its neighbours'.
    _, components = msgspec.json.schema_components(
        REQUEST_BODIES, ref_template="#/components/schemas/{name}"
    )
    components["Error"] = {
        "type": "object", "required": ["error"],
        "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": {"type": "string"}, "message": {"type": "string"}}}},
    }  # fmt: skip
    decision = _response("the decision (authorized; 402: rejected, with its reason)")
    pending = {"202": _response("not decided within the timeout: send the same request again")}
    fact = {"200": _response("the fact the ledger recorded")}
    admin_errors = (401, 413, 422, 503)
    # A path id that no account or employee can have is a 404 (ledger.api.validation).
    account_errors = (401, 404, 413, 422, 503)
    account = [_path_param("account_id")]
    paths: dict[str, Any] = {
        "/v1/purchases": {
            "post": _op(
                "Gone: a publisher alone cannot charge an account (use POST /v1/payments)",
                None,
                {},
                (401, 410),
                admin=False,
                description="Answered 410 to a publisher: a purchase needs the subscriber's "
                "consent, given on the payment's confirmation page after identifying with their "
                "ISP. Prepare the payment with POST /v1/payments.",
            )
        },
        **_checkout_paths(),
        "/v1/purchases/{purchase_id}": {
            "parameters": [_path_param("purchase_id")],
            "get": _op(
                "A purchase of yours, with what was refunded of it",
                None,
                {"200": decision},
                (401, 404, 503),
                admin=False,
                description="Any purchase ever decided: the recent ones from the stream, the older "
                "ones from the ledger's database.",
            ),
        },
        "/v1/purchases/{purchase_id}/refunds": {
            "parameters": [_path_param("purchase_id")],
            "post": _op(
                "Refund (part of) a purchase of yours",
                "RefundBody",
                {**fact, **pending},
                (401, 404, 409, 413, 422, 503),
                admin=False,
                description=REFUND_POLICY,
            ),
        },
        "/v1/admin/isps": {
            "post": _op(
                "Register or update an ISP",
                "IspBody",
                {"201": _response("registered")},
                admin_errors,
                admin=True,
            )
        },
        "/v1/admin/isps/{isp_id}": {
            "parameters": [_path_param("isp_id")],
            "put": _op(
                "Change an ISP's commission, billing day, limits or lateness, from a given time",
                "IspChangeBody",
                {"200": _response("changed: the record sent, with its effective_at")},
                (401, 404, 413, 422, 503),
                admin=True,
                description=REFERENCE_CHANGE,
            ),
        },
        "/v1/admin/publishers": {
            "post": _op(
                "Register a publisher, or give it a new API key; returns the key once",
                "PublisherBody",
                {"201": _response("registered")},
                admin_errors,
                admin=True,
                description="Each call makes a new key (the previous one stops working): to "
                "change a publisher's share or block it, use PUT /v1/admin/publishers/{id}, "
                "which keeps its key.",
            )
        },
        "/v1/admin/publishers/{publisher_id}": {
            "parameters": [_path_param("publisher_id")],
            "put": _op(
                "Change a publisher's share, VAT category, category, name or block, from a given"
                " time; its API key is kept",
                "PublisherChangeBody",
                {"200": _response("changed: the record sent, with its effective_at")},
                (401, 404, 413, 422, 503),
                admin=True,
                description=REFERENCE_CHANGE,
            ),
        },
        "/v1/admin/accounts": {
            "post": _op(
                "Open an account", "AccountBody", {**fact, **pending}, admin_errors, admin=True
            )
        },
        "/v1/admin/isps/{isp_id}/secret": {
            "parameters": [_path_param("isp_id")],
            "post": _op(
                "Register or rotate an ISP's signing secret (checkout with consent)",
                None,
                {"201": _response("rotated: when, and until when the previous one verifies")},
                (401, 404, 503),
                admin=True,
                description="The secret is kept in the ledger's database and read by the ISPs' "
                "identity component; it is never shown. The previous one verifies for 10 more "
                "minutes.",
            ),
        },
        "/v1/admin/accounts/{account_id}/credentials": {
            "parameters": account,
            "post": _op(
                "Issue a subscriber's (or an employee's) credentials at the account's ISP",
                "CredentialsBody",
                {"201": _response("the login and password, shown once")},
                (401, 404, 413, 422, 503),
                admin=True,
                description="Forwarded to the ISPs' identity component, which keeps only a "
                "scrypt hash of the password.",
            ),
        },
        "/v1/admin/accounts/{account_id}/block": {
            "parameters": account,
            "post": _op(
                "Block an account", "BlockBody", {**fact, **pending}, account_errors, admin=True
            ),
        },
        "/v1/admin/accounts/{account_id}/unblock": {
            "parameters": account,
            "post": _op(
                "Unblock an account",
                "CommandBody",
                {**fact, **pending},
                account_errors,
                admin=True,
            ),
        },
        "/v1/admin/accounts/{account_id}/limits": {
            "parameters": account,
            "put": _op(
                "Set an account's fraud limits",
                "LimitsBody",
                {**fact, **pending},
                account_errors,
                admin=True,
            ),
        },
        "/v1/admin/accounts/{account_id}/employees": {
            "parameters": account,
            "post": _op(
                "Authorise an employee (Internet Plus Pro)",
                "EmployeeBody",
                {**fact, **pending},
                account_errors,
                admin=True,
            ),
        },
        "/v1/admin/accounts/{account_id}/employees/{user_id}": {
            "parameters": [*account, _path_param("user_id")],
            "delete": _op(
                "Revoke an employee",
                "CommandBody",
                {**fact, **pending},
                account_errors,
                admin=True,
                body_required=False,
                description="The body is optional: its occurred_at records a revocation that "
                "took effect earlier (default: now), and a command_id with it makes a resend "
                "the same fact.",
            ),
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {"title": "Internet Plus ledger", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "publisherKey": {"type": "http", "scheme": "bearer"},
                "adminKey": {"type": "http", "scheme": "bearer"},
            },
        },
    }


def _html(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/html": {"schema": {"type": "string"}}}}


def _page(summary: str, statuses: dict[int, str], **extra: Any) -> dict[str, Any]:
    """A page of the subscriber's (no API key: the payment id is the capability). A path that
    names no page at all (a payment id of "../x" is another path) is aiohttp's JSON 404."""
    responses = {str(code): _html(text) for code, text in statuses.items()}
    responses["404"]["content"]["application/json"] = {"schema": _ERROR}
    return {"summary": summary, "security": [], "responses": responses, **extra}


def _form(*fields: str) -> dict[str, Any]:
    properties = {name: {"type": "string"} for name in fields}
    schema = {"type": "object", "properties": properties}
    return {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": schema}}}


def _checkout_paths() -> dict[str, Any]:
    """Checkout with consent (issue 14, ledger.api.checkout)."""
    payment = [_path_param("payment_id")]
    pending = {"202": _response("not decided within the timeout: send the same request again")}
    idempotency = {
        "name": "Idempotency-Key",
        "in": "header",
        "required": True,
        "schema": {"type": "string", "pattern": f"^{ID.pattern}$"},
        "description": "yours: the same key and body is the same payment",
    }
    prepared = _response(
        "prepared: payment_id, confirm_url (send the subscriber there), expires_at"
    )
    gone = "this payment expired"
    refused = "refused, with the reason (the page says why); nothing was sent to the ledger"
    return {
        "/v1/payments": {
            "post": {
                **_op(
                    "Prepare a payment; the subscriber confirms it on its confirm_url",
                    "PaymentBody",
                    {"201": prepared},
                    (400, 401, 409, 413, 422, 503),
                    admin=False,
                    description='capture "immediate" (the default) charges at confirmation;'
                    ' "hold" reserves the amount for hold_seconds (60 to 604800, default 3600)'
                    " until you capture or void it. A prepared payment expires after 15 "
                    "minutes if nobody confirms it.",
                ),
                "parameters": [idempotency],
            }
        },
        "/v1/payments/{payment_id}": {
            "parameters": payment,
            "get": _op(
                "A payment of yours: prepared, confirmed, cancelled or expired, and the "
                "decision once confirmed",
                None,
                {"200": _response("the payment")},
                (401, 404, 503),
                admin=False,
            ),
        },
        "/v1/payments/{payment_id}/capture": {
            "parameters": payment,
            "post": _op(
                "Capture a held payment of yours: all of it (no amount) or part, once; the rest"
                " is released. The same request again is answered with the same fact",
                "CaptureBody",
                {"200": _response("captured: the purchase billed"), **pending},
                (401, 404, 409, 413, 422, 503),
                admin=False,
                body_required=False,
                description="409: not a held payment (not_held), not confirmed, or refused by"
                " the ledger (reservation_expired, reservation_voided, reservation_captured,"
                " payment_unknown: its hold was refused); 422: capture_exceeds_hold.",
            ),
        },
        "/v1/payments/{payment_id}/void": {
            "parameters": payment,
            "post": _op(
                "Void a held payment of yours: its whole amount is released, nothing is billed",
                "VoidBody",
                {"200": _response("voided"), **pending},
                (401, 404, 409, 413, 422, 503),
                admin=False,
                body_required=False,
            ),
        },
        "/pay/{payment_id}": {
            "parameters": [*payment, _query("lang")],
            "get": _page(
                "The confirmation page (French or English)",
                {
                    200: "the payment, or its decision",
                    202: "confirmed, not decided yet: reload",
                    404: "no such payment",
                    410: gone,
                },
            ),
        },
        "/pay/{payment_id}/identify": {
            "parameters": payment,
            "post": _page(
                "Identify with your ISP: a 303 to its sign-in page",
                {
                    303: "to the ISP's identity component",
                    400: "no such ISP",
                    404: "no such payment",
                    409: refused,
                    410: gone,
                },
                requestBody=_form("isp_id", "lang"),
            ),
        },
        "/pay/{payment_id}/cancel": {
            "parameters": payment,
            "post": _page(
                "Cancel the payment",
                {200: "cancelled", 404: "no such payment", 409: refused, 410: gone},
                requestBody=_form("lang"),
            ),
        },
        "/pay/{payment_id}/return": {
            "parameters": [*payment, _query("assertion"), _query("lang")],
            "get": _page(
                "Back from the ISP: the assertion checked, the purchase decided",
                {
                    200: "the decision",
                    202: "not decided yet: reload the payment's page",
                    403: f"{refused} (forged, wrong_isp)",
                    404: "no such payment",
                    409: f"{refused} (mismatch, reused, cancelled)",
                    410: f"{refused} (expired)",
                },
            ),
        },
    }


def _query(name: str) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}


_ERROR_SCHEMA = {
    "type": "object", "required": ["error"],
    "properties": {"error": {"type": "object", "required": ["code", "message"], "properties": {
        "code": {"type": "string"}, "message": {"type": "string"}}}},
}  # fmt: skip


def _isp_op(summary: str, ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    return {
        "summary": summary,
        "security": [{"ispKey": []}],
        # Admission control (ledger.api.admission) may answer any operation 429 or 503.
        "responses": {**ok, **_errors(*sorted({*errors, 429, 503}))},
    }


@cache
def isp_openapi_document() -> dict[str, Any]:
    """The ISPs' read API (`ledger isp-api`)."""
    isp = _path_param("isp_id")
    invoice = _path_param("invoice_id", INVOICE_ID.pattern)
    csv_ok = {"200": {"description": "the invoice's lines as CSV, with a header row",
                      "content": {"text/csv": {"schema": {"type": "string"}}}}}  # fmt: skip
    period_schema = {"type": "string", "pattern": "^[0-9]{4}-(0[1-9]|1[0-2])$"}
    period_param = {"name": "period", "in": "query", "required": True, "schema": period_schema}
    page = [
        {"name": "after", "in": "query", "required": False,
         "schema": {"type": "string", "pattern": f"^{INVOICE_ID.pattern}$"},
         "description": "the next_after of the previous page"},
        {"name": "limit", "in": "query", "required": False,
         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}},
    ]  # fmt: skip
    note = _path_param("credit_note_id", CREDIT_NOTE_ID.pattern)
    credit_page = [
        {"name": "after", "in": "query", "required": False,
         "schema": {"type": "string", "pattern": f"^{CREDIT_NOTE_ID.pattern}$"},
         "description": "the next_after of the previous page"},
        page[1],
    ]  # fmt: skip
    paths = {
        "/v1/isps/{isp_id}/periods": {
            "parameters": [isp],
            "get": _isp_op(
                "Your sealed billing periods with their totals",
                {"200": _response("the periods")},
                401,
                404,
                503,
            ),
        },
        "/v1/isps/{isp_id}/invoices": {
            "parameters": [isp, period_param, *page],
            "get": _isp_op(
                "Your invoices of a sealed period, by invoice id",
                {"200": _response("a page of invoices")},
                400,
                401,
                404,
                503,
            ),
        },
        "/v1/isps/{isp_id}/invoices/{invoice_id}": {
            "parameters": [isp, invoice],
            "get": _isp_op(
                "One invoice with its lines", {"200": _response("the invoice")}, 401, 404, 503
            ),
        },
        "/v1/isps/{isp_id}/invoices/{invoice_id}.csv": {
            "parameters": [isp, invoice],
            "get": _isp_op("One invoice's lines as CSV", csv_ok, 401, 404, 503),
        },
        # Issue 15: a period's seal with what it covers, and the credit notes.
        "/v1/isps/{isp_id}/periods/{period}": {
            "parameters": [isp, {"name": "period", "in": "path", "required": True,
                                 "schema": period_schema}],
            "get": _isp_op(
                "One sealed period: its seal, the previous seal in your chain and the id,"
                " number and seal of each invoice, credit note and statement it covers",
                {"200": _response("the period")}, 401, 404, 503,
            ),
        },
        "/v1/isps/{isp_id}/credit-notes": {
            "parameters": [isp, period_param, *credit_page],
            "get": _isp_op(
                "Your credit notes of a sealed period, by credit note id",
                {"200": _response("a page of credit notes")}, 400, 401, 404, 503,
            ),
        },
        "/v1/isps/{isp_id}/credit-notes/{credit_note_id}": {
            "parameters": [isp, note],
            "get": _isp_op(
                "One credit note with its lines, each naming the invoice line it corrects",
                {"200": _response("the credit note")}, 401, 404, 503,
            ),
        },
        "/v1/isps/{isp_id}/credit-notes/{credit_note_id}.csv": {
            "parameters": [isp, note],
            "get": _isp_op("One credit note's lines as CSV", csv_ok, 401, 404, 503),
        },
    }  # fmt: skip
    return {
        "openapi": "3.1.0",
        "info": {"title": "Internet Plus ledger: ISP invoices", "version": "1"},
        "paths": paths,
        "components": {
            "schemas": {"Error": _ERROR_SCHEMA},
            "securitySchemes": {"ispKey": {"type": "http", "scheme": "bearer"}},
        },
    }
