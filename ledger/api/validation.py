"""What a path or query value of the HTTP APIs may be, checked before it reaches PostgreSQL or
Kafka (issue 12: a NUL in an invoice id reached psycopg, which refused it with a 500).

A path id that no id can equal is a 404, like an id that does not exist; a malformed query value
is a 400 that says what is expected. The forms are those of ledger.patterns, matched whole.
"""

from __future__ import annotations

import re

from aiohttp import web

from ledger.api.errors import ApiError
from ledger.patterns import CREDIT_NOTE_ID, ID, INVOICE_ID, PERIOD, WHOLE_NUMBER

__all__ = [
    "CREDIT_NOTE_ID",
    "ID",
    "INVOICE_ID",
    "PERIOD",
    "WHOLE_NUMBER",
    "bearer_key",
    "path_value",
    "query_value",
]


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


def path_value(request: web.Request, name: str, pattern: re.Pattern[str], what: str) -> str:
    """A path parameter that could name something, else a 404 (nothing can have that name)."""
    value = request.match_info[name]
    if not pattern.fullmatch(value):
        raise not_found(what)
    return value


def query_value(
    request: web.Request, name: str, pattern: re.Pattern[str], expected: str, default: str
) -> str:
    """A query parameter that has the expected form, else a 400 saying what is expected."""
    value = request.query.get(name, default)
    if value != default and not pattern.fullmatch(value):
        raise ApiError(400, "bad_request", f"{name} is {expected}")
    return value


def bearer_key(request: web.Request) -> str | None:
    """The API key of an `Authorization: Bearer <key>` header; None when there is none or it is
    not printable ASCII (a key is; a header of other bytes reached hashing as a 500)."""
    header = request.headers.get("Authorization", "")
    key = header[len("Bearer ") :].strip() if header.startswith("Bearer ") else ""
    if not key or not key.isascii() or not key.isprintable():
        return None
    return key
