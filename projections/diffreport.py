"""What `ledger replay` found, as values, and their report: the pure part of the comparison
(projections.compare runs the SQL).

A table that differs is reported with its first differing rows in the order of its key, each
with its key, the columns that differ and both versions, live and replay. Values are shown as
JSON (a timestamp in ISO 8601, a number as its digits, bytes as 0x and their first
32 in hex), the same in the text report
and in `ledger replay --json`.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

# Bytes shown in a report: the first 32 (a fact's encoding can be long); the rest is counted.
BYTES_SHOWN_MAX = 32
# A table's differing rows shown in a report: the first few, by key. The rest are counted.
ROWS_SHOWN_MAX = 5

Row = dict[str, Any]


@dataclass(frozen=True)
class TableSummary:
    """A table's rows in one schema: count, money totals (its *_cents columns) and checksum."""

    table: str
    rows: int
    totals: tuple[int, ...]
    checksum: str


@dataclass(frozen=True)
class RowDifference:
    """One key's rows: both versions when the key is in both (`columns`: those that differ);
    only one when the other schema has no row under that key."""

    key: Row
    live: Row | None
    replay: Row | None
    columns: tuple[str, ...]

    @property
    def what(self) -> str:
        if self.live is None:
            return "only in replay"
        if self.replay is None:
            return "only in live"
        return "changed"


@dataclass(frozen=True)
class TableDifference:
    table: str
    live: TableSummary
    replay: TableSummary
    money: tuple[str, ...]  # the columns of the totals
    rows_only_live: int  # rows of live that replay lacks (counted as a multiset)
    rows_only_replay: int
    first: tuple[RowDifference, ...]


@dataclass
class Comparison:
    live_schema: str
    replay_schema: str
    summaries: dict[str, TableSummary] = field(default_factory=dict)  # the replay's
    schema_differences: list[str] = field(default_factory=list)
    differences: list[TableDifference] = field(default_factory=list)
    # Columns left out of this comparison ("table.column" → why), the live schema having rows
    # written before the migration that added them (compare.ADDED_WITHOUT_BACKFILL).
    columns_not_compared: dict[str, str] = field(default_factory=dict)

    @property
    def equal(self) -> bool:
        return not self.schema_differences and not self.differences


def pair_rows(
    key: tuple[str, ...], by_key: list[tuple[list[Row], list[Row]]]
) -> list[RowDifference]:
    """The rows of each key that differ (live's, replay's) as differences: rows under one key in
    both schemas are paired (the columns that differ named), the unpaired ones stand alone."""
    found: list[RowDifference] = []
    for live_rows, replay_rows in by_key:
        for i in range(max(len(live_rows), len(replay_rows))):
            live = live_rows[i] if i < len(live_rows) else None
            replay = replay_rows[i] if i < len(replay_rows) else None
            some = live if live is not None else replay
            assert some is not None
            found.append(RowDifference(
                {k: some[k] for k in key}, live, replay, differing_columns(live, replay),
            ))  # fmt: skip
    return found


def differing_columns(live: Row | None, replay: Row | None) -> tuple[str, ...]:
    """The columns whose values differ, by value (a Decimal 1.0 equals 1.00, a dict whatever its
    keys' order, datetimes whatever their zone); none when one side has no row (the whole row
    differs)."""
    if live is None or replay is None:
        return ()
    return tuple(c for c in live if c not in replay or not _same(live[c], replay[c]))


def _same(a: Any, b: Any) -> bool:
    # psycopg reads both sides' columns of one type into the same Python type, whose equality is
    # by value: Decimal, dict (jsonb), list (arrays), aware datetime.
    return bool(a == b)


def _plain(value: Any) -> Any:
    """A value as JSON can carry it."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Decimal):
        # By value: 1.0 and 1.00 read the same.
        if not value.is_finite():
            return str(value)
        return str(int(value)) if value == value.to_integral_value() else f"{value.normalize():f}"
    if isinstance(value, datetime | date | time):
        return value.isoformat()
    if isinstance(value, timedelta):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        data = bytes(value)
        shown = data[:BYTES_SHOWN_MAX].hex()
        more = len(data) - BYTES_SHOWN_MAX
        return f"0x{shown}" + (f"... ({more} more bytes)" if more > 0 else "")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return str(value)


def shown(value: Any) -> str:
    """A value in a text report: its JSON (keys sorted)."""
    return json.dumps(_plain(value), ensure_ascii=False, sort_keys=True)


def _key_text(key: Row) -> str:
    return ", ".join(f"{k}={shown(v)}" for k, v in key.items())


def _row_text(row: Row) -> str:
    return ", ".join(f"{k}={shown(v)}" for k, v in row.items())


def table_lines(diff: TableDifference) -> list[str]:
    """A differing table: what its counts say, then its first differing rows."""
    a, b = diff.live, diff.replay
    what = [f"rows {a.rows:,} live vs {b.rows:,} replay"]
    if a.totals != b.totals:
        what.append(f"totals ({', '.join(diff.money)}) {a.totals} vs {b.totals}")
    what.append(f"{diff.rows_only_live:,} live row(s) not in replay, {diff.rows_only_replay:,}"
                " replay row(s) not in live")  # fmt: skip
    lines = [f"{diff.table}: {'; '.join(what)}"]
    for row in diff.first:
        lines.append(f"  key {_key_text(row.key)}: {row.what}")
        if row.live is not None and row.replay is not None:
            for column in row.columns:
                lines.append(f"    {column}: live {shown(row.live[column])}"
                             f" | replay {shown(row.replay[column])}")  # fmt: skip
        else:
            lines.append(f"    {_row_text(row.live if row.live is not None else row.replay or {})}")
    sides = sum((r.live is not None) + (r.replay is not None) for r in diff.first)
    more = diff.rows_only_live + diff.rows_only_replay - sides
    if more > 0:
        lines.append(f"  ... and {more:,} more differing row(s), after these in key order")
    return lines


def report_lines(comparison: Comparison) -> list[str]:
    """The text report of the differences (none when equal)."""
    lines = [f"schema: {line}" for line in comparison.schema_differences]
    for diff in comparison.differences:
        lines.extend(table_lines(diff))
    return lines


def _row_json(row: RowDifference) -> dict[str, Any]:
    return {
        "what": row.what,
        "key": _plain(row.key),
        "columns": list(row.columns),
        "live": _plain(row.live),
        "replay": _plain(row.replay),
    }


def to_json(comparison: Comparison) -> dict[str, Any]:
    """The comparison, machine-readable (`ledger replay --json`)."""
    return {
        "equal": comparison.equal,
        "live_schema": comparison.live_schema,
        "replay_schema": comparison.replay_schema,
        "tables": {t: {"rows": s.rows} for t, s in comparison.summaries.items()},
        "columns_not_compared": dict(comparison.columns_not_compared),
        "schema_differences": list(comparison.schema_differences),
        "differences": [
            {
                "table": d.table,
                "rows": {"live": d.live.rows, "replay": d.replay.rows},
                "totals": {
                    "columns": list(d.money), "live": list(d.live.totals),
                    "replay": list(d.replay.totals),
                },
                "checksum": {"live": d.live.checksum, "replay": d.replay.checksum},
                "live_rows_not_in_replay": d.rows_only_live,
                "replay_rows_not_in_live": d.rows_only_replay,
                "first_rows": [_row_json(r) for r in d.first],
            }
            for d in comparison.differences
        ],
    }  # fmt: skip
