"""Argument types of the `ledger` command line: a value that would reach PostgreSQL or Kafka (an
id, a period, a schema name) or the operating system (a port, a duration) is checked while the
command line is parsed, so that a bad one gets a usage message that says what to fix, never a
traceback, and nothing is sent."""

from __future__ import annotations

import argparse
import math
import re
from datetime import datetime

from ledger.patterns import ID, ID_FORM, PERIOD, WHOLE_NUMBER

PORT_MAX = 65_535
NICENESS_MAX = 19  # the lowest CPU priority on Linux
# projections.migrate's schema names; the live schema is never a scratch one.
_SCHEMA = re.compile(r"[a-z_][a-z0-9_]{0,62}")
LIVE_SCHEMA = "ledger"


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:80] + "...")


def identifier(text: str) -> str:
    if not ID.fullmatch(text):
        raise argparse.ArgumentTypeError(f"an id is {ID_FORM}; got {_shown(text)}")
    return text


def period(text: str) -> str:
    if not PERIOD.fullmatch(text):
        raise argparse.ArgumentTypeError(f"a period is YYYY-MM, got {_shown(text)}")
    return text


def port(text: str) -> int:
    if not WHOLE_NUMBER.fullmatch(text) or not 1 <= int(text) <= PORT_MAX:
        raise argparse.ArgumentTypeError(f"a port is 1 to {PORT_MAX}, got {_shown(text)}")
    return int(text)


def niceness(text: str) -> int:
    if not WHOLE_NUMBER.fullmatch(text) or not 0 <= int(text) <= NICENESS_MAX:
        raise argparse.ArgumentTypeError(f"a niceness is 0 to {NICENESS_MAX}, got {_shown(text)}")
    return int(text)


def seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0:
        raise argparse.ArgumentTypeError(f"a number of seconds, 0 or more; got {_shown(text)}")
    return value


def scratch_schema(text: str) -> str:
    if not _SCHEMA.fullmatch(text) or text == LIVE_SCHEMA:
        raise argparse.ArgumentTypeError(
            "a schema of its own: lower-case letters, digits and _, not the live schema "
            f"{LIVE_SCHEMA!r}; got {_shown(text)}"
        )
    return text


def timestamp(text: str) -> datetime:
    """An RFC 3339 time with its UTC offset (`Z` or `+01:00`): a naive time is ambiguous."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        value = None
    if value is None or value.tzinfo is None or not 1970 <= value.year <= 2099:
        raise argparse.ArgumentTypeError(
            f"a time with its UTC offset, like 2026-12-01T02:00:00Z; got {_shown(text)}"
        )
    return value
