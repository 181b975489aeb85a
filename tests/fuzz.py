"""Fuzzing an HTTP API from its own OpenAPI document with schemathesis, driven by hypothesis
directly (schemathesis' pytest plugin does not run under pytest 9).

Cases generated from the document rarely hold the values that break a service below the API: a
NUL (PostgreSQL refuses it in text: issue 12's 500), other control characters, strings far
longer than any id, odd unicode, digits of other scripts, a trailing newline that Python's `$`
lets through. Every generated case is therefore sent a second time per path and query parameter
and per top-level string field of its body, with that value replaced by one of HOSTILE, in
turn."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance

# Within aiohttp's request line of 8190 bytes once percent-encoded: a longer line is refused by
# its HTTP parser (a plain-text 400) before any handler, and is tested on its own.
HUGE_CHARS = 2_000
HOSTILE: tuple[str, ...] = (
    "x\x00y",  # NUL
    "\x00",
    "a\x01\x1b[31m\x7fb",  # control characters, an ANSI escape, DEL
    "x" * HUGE_CHARS,
    "2013-12\n",  # a period with a trailing newline
    "\u202eevil\u200b\ufeff",  # right-to-left override, zero-width space, byte order mark
    "\uff12\uff10\uff11\uff13-\uff11\uff12",  # 2013-12 in fullwidth digits
    "\u0661\u0662",  # 12 in Arabic-Indic digits, which int() reads
    " 12 ",
    "1_0",
    "e\u0301\U0001f4b6",  # a combining accent, an emoji
    "../../etc/passwd",
    "%00",
    "' OR '1'='1",
    "",
)


def _string_fields(case: Any) -> list[tuple[str, str]]:
    """(where, name) of what a hostile value can replace in this case."""
    places = [("path", name) for name in (case.path_parameters or {})]
    places += [("query", name) for name in (case.query or {})]
    if isinstance(case.body, dict):
        places += [("body", name) for name, v in case.body.items() if isinstance(v, str)]
    return places


def _copy(case: Any) -> Any:
    """The same request as a new case (a Case cannot be copied with copy.copy)."""
    return case.operation.Case(
        method=case.method, path_parameters=dict(case.path_parameters or {}),
        headers=dict(case.headers or {}), query=dict(case.query or {}),
        body=copy.deepcopy(case.body) if isinstance(case.body, dict | list) else case.body,
        media_type=case.media_type,
    )  # fmt: skip


def _replace(case: Any, where: str, name: str, value: str) -> None:
    if where == "path":
        case.path_parameters = {**case.path_parameters, name: value}
    elif where == "query":
        case.query = {**case.query, name: value}
    else:
        case.body = {**case.body, name: value}


def fuzz(
    base: str, document: str, examples: int, before: Callable[[Any], str],
    after: Callable[[Any, Any], None] = lambda case, response: None,
) -> dict[int, int]:  # fmt: skip
    """Every operation of the document, `examples` cases each, and each case again with hostile
    values (see above). `before(case)` may adjust the case and returns the API key to send;
    `after(case, response)` asserts what must hold. Every response is validated against the
    document (no 5xx, documented statuses, content types and bodies, forbidden data refused),
    except the acceptance of schema-valid data: JSON Schema's integer admits 266.0, which the
    ledger refuses for money on purpose, and business rules (an occurred_at too far from now)
    refuse schema-valid data with a clear 422. Returns the answers by status."""
    schema = schemathesis.openapi.from_url(f"{base}{document}")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the document has no operation"
    seen: dict[int, int] = {}
    sent = [0]

    def send(case: Any, key: str) -> None:
        response = case.call(base_url=base, headers={"Authorization": f"Bearer {key}"},
                             timeout=30)  # fmt: skip
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
        after(case, response)

    def one(case: Any) -> None:
        original = _copy(case)
        send(case, before(case))
        for where, name in _string_fields(case):
            value = HOSTILE[sent[0] % len(HOSTILE)]
            sent[0] += 1
            if where == "path" and not value:
                # An empty segment is no value of the parameter: the client collapses "//", and
                # the URL names another resource (POST /v1/purchases//refunds: a 405).
                value = HOSTILE[0]
            hostile = _copy(original)
            key = before(hostile)  # then the value: before() may set a parameter itself
            _replace(hostile, where, name, value)
            try:
                send(hostile, key)
            except Exception as failure:
                failure.add_note(f"with {where} {name}={value[:40]!r}")
                raise

    for operation in operations:
        settings(
            max_examples=examples, deadline=None, database=None,
            suppress_health_check=list(HealthCheck),
        )(given(case=operation.as_strategy())(one))()  # fmt: skip
    return seen
