"""Fuzzing an HTTP API from its own OpenAPI document with schemathesis, driven by hypothesis
directly (schemathesis' pytest plugin does not run under pytest 9)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.specs.openapi.checks import positive_data_acceptance


def fuzz(
    base: str, document: str, examples: int, before: Callable[[Any], str],
    after: Callable[[Any, Any], None] = lambda case, response: None,
) -> dict[int, int]:  # fmt: skip
    """Every operation of the document, `examples` cases each. `before(case)` may adjust the
    case and returns the API key to send; `after(case, response)` asserts what must hold. Every
    response is validated against the document (no 5xx, documented statuses, content types and
    bodies, forbidden data refused), except the acceptance of schema-valid data: JSON Schema's
    integer admits 266.0, which the ledger refuses for money on purpose, and business rules (an
    occurred_at too far from now) refuse schema-valid data with a clear 422. Returns the answers
    by status."""
    schema = schemathesis.openapi.from_url(f"{base}{document}")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert operations, "the document has no operation"
    seen: dict[int, int] = {}

    def one(case: Any) -> None:
        key = before(case)
        response = case.call(base_url=base, headers={"Authorization": f"Bearer {key}"},
                             timeout=30)  # fmt: skip
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, excluded_checks=[positive_data_acceptance])
        after(case, response)

    for operation in operations:
        settings(
            max_examples=examples, deadline=None, database=None,
            suppress_health_check=list(HealthCheck),
        )(given(case=operation.as_strategy())(one))()  # fmt: skip
    return seen
