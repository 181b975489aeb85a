"""Invariants of the ledger that hold whatever the interpreter's flags.

A bare `assert` vanishes under `python -O`: a worker run that way would post a split that does
not balance, or count a fact for one party only, and carry on. `invariant` and `present` always
check, and raise `InvariantBroken`, which stops the worker (STYLE.md §6: expected outcomes are
values, broken invariants crash; a restart and idempotency recover). The message is formatted
only when the check fails: these run once per decision.
"""

from __future__ import annotations

from typing import TypeVar

T = TypeVar("T")


class InvariantBroken(AssertionError):
    """A programmer's error, never an outcome. An AssertionError, as the asserts it replaces were,
    so that whatever treated those treats it the same."""


def invariant(holds: bool, message: str, *args: object) -> None:
    if not holds:
        raise InvariantBroken(message % args if args else message)


def present(value: T | None, message: str, *args: object) -> T:
    """`value`, which must be there: what `assert value is not None` said, always checked."""
    if value is None:
        raise InvariantBroken(message % args if args else message)
    return value
