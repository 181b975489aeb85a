"""What `ledger replay` compares: every column of every projection table, live and replay, in one
snapshot; and the two schemas' columns.

The tables and columns come from the live schema's catalog, so that a table or a column added by
a later migration is compared with no change here. Only what cannot be equal is left out, each in
one place with its reason: EXCLUDED_TABLES (not projections of the facts), EXCLUDED_COLUMNS (when
something was written), ADDED_WITHOUT_BACKFILL (left out only while live rows lack the column),
and the billed rows of the periods sealed before migration 0006, or of an ISP whose chain of
seals began live after its first period (migration 0010) (`sealed_before_vat_by_rate`).

Per table, first a summary computed in SQL the same way in both schemas: its row count, the
totals of its money columns (`*_cents`) and a checksum of its rows (a sum of each row's MD5 as two
60-bit numbers: the same whatever order the rows are read in, so no sort of a large table; any
changed, missing or extra row changes it). Only a table whose summaries differ is compared row
by row, by value: its rows EXCEPT ALL the other side's, both ways, and the first few keys (primary
key, else a unique index, else LOGICAL_KEYS, else the whole row) of either side's leftovers,
ordered by key, are read with both versions. The row comparison is by the types' own equality
(jsonb, timestamptz, numeric, arrays compare by value), and is the verdict: a checksum that
differs only by a formatting accident of the text the rows were hashed from finds no differing
row, and the table counts as equal.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql

from projections.diffreport import (
    ROWS_SHOWN_MAX,
    Comparison,
    Row,
    TableDifference,
    TableSummary,
    pair_rows,
)

# Tables that are not projections of ledger.events, each read in migrations 0001-0009: written by
# the APIs and the operators' commands, which a replay does not run, so a replay leaves them empty.
# Their columns are still compared as schema (a migration difference is a difference).
EXCLUDED_TABLES: dict[str, str] = {
    "isp_logins": "0003: the ISPs' SQL login roles, written by `ledger isp-access`, not by a fact",
    "isp_api_keys": "0003: the ISPs' API key hashes, written by `ledger isp-access` at now()",
    "isp_secrets": "0008: the ISPs' signing secrets, written by the admin API",
    "prepared_payments": "0008: payments prepared by publishers through the checkout API, before"
    " any command exists",
    "confirmations_used": "0008: the checkout API's used assertion nonces",
    "idp_credentials": "0008: the identity component's subscriber logins and password hashes",
}
# Columns of compared tables that cannot be equal.
EXCLUDED_COLUMNS: dict[tuple[str, str], str] = {
    # Its versions and names are compared: a migration applied on one side only is a difference.
    ("schema_migrations", "applied_at"): "projections.migrate: when the migration ran (now())",
    ("projection_offsets", "updated_at"): "0001: when the writer stored the offset (now())",
    ("applied_events", "applied_at"): "0001: when the writer applied the event (now())",
}
# Columns a migration added without filling the rows already there: null live for those rows, a
# value in a rebuild. Each is compared when no live row lacks it (a ledger born after the
# migration), else left out and named (Comparison.columns_not_compared).
ADDED_WITHOUT_BACKFILL: dict[tuple[str, str], str] = {
    # `ledger reconcile` compares each applied fingerprint with the fact on the topic instead.
    ("applied_events", "fingerprint"): "0004: null live for the ids applied before 0004",
    ("applied_events", "type"): "0004: null live for the ids applied before 0004",
}
# Tables with no key in the catalog, by the key their rows have all the same: the order of their
# differing rows and the pairing of their two versions.
LOGICAL_KEYS: dict[str, tuple[str, ...]] = {
    # 0007 dropped the primary key for the writer's speed; a leg is still written once.
    "journal": ("event_id", "leg"),
}

# The billed tables, by the ISP period of each row. A period sealed before invoices showed their
# VAT per rate (migration 0006, issue 12) was billed with its refund lines at rate 0 and stays so
# (sealed rows never change), while a rebuild bills it right: such periods are left out of the
# comparison on both sides (`sealed_before_vat_by_rate`), and named apart.
_BY_PERIOD = sql.SQL("(isp_id, period)")
_PERIOD_OF = {
    "billing_periods": _BY_PERIOD,
    "invoices": _BY_PERIOD,
    "statements": _BY_PERIOD,
    # An invoice id is `{isp_id}.{period}.{account_id}`.
    "invoice_lines": sql.SQL("(isp_id, substr(invoice_id, length(isp_id) + 2, 7))"),
    "credit_notes": _BY_PERIOD,
    # A credit note id is `{isp_id}.{period}.{account_id}.credit.{period}`.
    "credit_note_lines": sql.SQL("(isp_id, substr(credit_note_id, length(isp_id) + 2, 7))"),
}
Periods = list[tuple[str, str]]
# The catalog of a schema: relation → its columns (name, type) in order, and whether a table.
Catalog = dict[str, tuple[bool, tuple[tuple[str, str], ...]]]


@dataclass(frozen=True)
class TablePlan:
    """How a table is compared: the columns (with their types), the key, the money columns."""

    table: str
    columns: tuple[tuple[str, str], ...]
    key: tuple[str, ...]
    money: tuple[str, ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.columns)


def sealed_before_vat_by_rate(db: psycopg.Connection[Any], schema: str) -> Periods:
    """Also every sealed period of an ISP that has one sealed before the chain of seals
    (migration 0010: prev_seal null): its chain and its numbers start there live, and from its
    first period in a rebuild (docs/design/seals.md)."""
    rows = db.execute(
        sql.SQL(
            "SELECT isp_id, period FROM {t} WHERE state = 'closed' AND (vat_by_rate IS NULL"
            " OR isp_id IN (SELECT isp_id FROM {t} WHERE state = 'closed' AND prev_seal IS NULL))"
            " ORDER BY isp_id, period"
        ).format(t=sql.Identifier(schema, "billing_periods"))
    ).fetchall()
    return [(str(isp), str(period)) for isp, period in rows]


def read_catalog(db: psycopg.Connection[Any], schema: str) -> Catalog:
    """Every table and view of `schema` with its columns, in their order."""
    rows = db.execute(
        "SELECT c.relname, c.relkind IN ('r', 'p'), a.attname,"
        " format_type(a.atttypid, a.atttypmod)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped"
        " WHERE n.nspname = %s AND c.relkind IN ('r', 'p', 'v', 'm') AND NOT c.relispartition"
        " ORDER BY c.relname, a.attnum",
        (schema,),
    ).fetchall()
    found: dict[str, tuple[bool, list[tuple[str, str]]]] = {}
    for relation, is_table, column, type_name in rows:
        found.setdefault(str(relation), (bool(is_table), []))[1].append(
            (str(column), str(type_name))
        )
    return {name: (is_table, tuple(columns)) for name, (is_table, columns) in found.items()}


def read_keys(db: psycopg.Connection[Any], schema: str) -> dict[str, tuple[str, ...]]:
    """Each table's key: its primary key, else its unique index of fewest columns (no
    expression, no predicate)."""
    rows = db.execute(
        "SELECT c.relname, i.indisprimary, ic.relname,"
        " array_agg(a.attname::text ORDER BY k.ord)"
        " FROM pg_index i JOIN pg_class c ON c.oid = i.indrelid"
        " JOIN pg_class ic ON ic.oid = i.indexrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " CROSS JOIN LATERAL unnest(i.indkey::int2[]) WITH ORDINALITY AS k(attnum, ord)"
        " JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = k.attnum"
        " WHERE n.nspname = %s AND i.indisunique AND i.indpred IS NULL AND i.indexprs IS NULL"
        " GROUP BY c.relname, i.indisprimary, ic.relname",
        (schema,),
    ).fetchall()
    return choose_keys([(str(t), bool(p), str(i), tuple(cols)) for t, p, i, cols in rows])


Index = tuple[str, bool, str, tuple[str, ...]]  # table, primary, index name, columns


def choose_keys(indexes: list[Index]) -> dict[str, tuple[str, ...]]:
    """(table, primary, index name, columns) → each table's key: the primary key first, then
    the unique index of fewest columns (by name when as many)."""
    best: dict[str, tuple[int, int, str, tuple[str, ...]]] = {}
    for table, primary, index, columns in indexes:
        rank = (0 if primary else 1, len(columns), index, columns)
        if table not in best or rank < best[table]:
            best[table] = rank
    return {table: rank[3] for table, rank in best.items()}


def schema_differences(live: Catalog, replay: Catalog) -> list[str]:
    """The relations and columns (with their types) that the two schemas do not share."""
    found: list[str] = []
    for relation in sorted(live.keys() | replay.keys()):
        if relation not in replay:
            found.append(f"{relation}: in live only")
            continue
        if relation not in live:
            found.append(f"{relation}: in replay only")
            continue
        a, b = dict(live[relation][1]), dict(replay[relation][1])
        for column in [c for c, _ in live[relation][1]] + [c for c in b if c not in a]:
            if a.get(column) != b.get(column):
                found.append(f"{relation}.{column}: live {a.get(column) or 'missing'},"
                             f" replay {b.get(column) or 'missing'}")  # fmt: skip
    return found


def plan_tables(
    live: Catalog, replay: Catalog, keys: dict[str, tuple[str, ...]],
    left_out: Collection[tuple[str, str]] = (),
) -> list[TablePlan]:  # fmt: skip
    """Every table of both schemas but EXCLUDED_TABLES, with its columns but EXCLUDED_COLUMNS
    and `left_out` (those of live that replay has, of the same type), and its key."""
    plans = []
    for table, (is_table, columns) in sorted(live.items()):
        if not is_table or table in EXCLUDED_TABLES or table not in replay:
            continue
        theirs = dict(replay[table][1])
        compared = tuple(
            (name, kind) for name, kind in columns
            if (table, name) not in EXCLUDED_COLUMNS and (table, name) not in left_out
            and theirs.get(name) == kind
        )  # fmt: skip
        if not compared:
            continue  # nothing of it can be equal (its columns are named in the schema check)
        names = [name for name, _ in compared]
        key = keys.get(table) or LOGICAL_KEYS.get(table) or tuple(names)
        if not set(key) <= set(names):
            key = tuple(names)
        money = tuple(
            name for name, kind in compared
            if name.endswith("_cents") and kind in ("bigint", "integer", "smallint")
        )  # fmt: skip
        plans.append(TablePlan(table, compared, key, money))
    return plans


def unfilled_columns(
    db: psycopg.Connection[Any], live: str, catalog: Catalog
) -> dict[tuple[str, str], str]:
    """The columns of ADDED_WITHOUT_BACKFILL that some live row lacks, with why."""
    found = {}
    for (table, column), why in ADDED_WITHOUT_BACKFILL.items():
        if column not in dict(catalog.get(table, (False, ()))[1]):
            continue
        lacking = db.execute(
            sql.SQL("SELECT EXISTS (SELECT FROM {} WHERE {} IS NULL)").format(
                sql.Identifier(live, table), sql.Identifier(column)
            )
        ).fetchone()
        if lacking is not None and lacking[0]:
            found[(table, column)] = why
    return found


def _hashed(name: str, kind: str) -> sql.Composable:
    """A column as hashed into the checksum: by value where its text could differ for one value
    (trailing zeros of a numeric; json is made jsonb). The row comparison does not rely on it."""
    column = sql.Identifier(name)
    if kind.startswith("numeric") and not kind.endswith("[]"):
        return sql.SQL("trim_scale({})").format(column)
    if kind == "json":
        return sql.SQL("{}::jsonb").format(column)
    return column


def _selected(name: str, kind: str) -> sql.Composable:
    """A column as compared row by row: by its type's equality (json has none: as jsonb)."""
    column = sql.Identifier(name)
    if kind in ("json", "json[]"):
        target = sql.SQL("jsonb[]" if kind.endswith("[]") else "jsonb")
        return sql.SQL("{}::{} AS {}").format(column, target, column)
    return column


def _where(plan: TablePlan, left_out: Periods | None) -> tuple[sql.Composable, tuple[Any, ...]]:
    if not left_out or plan.table not in _PERIOD_OF:
        return sql.SQL(""), ()
    where = sql.SQL(" WHERE {} NOT IN (SELECT * FROM unnest(%s::text[], %s::text[]))").format(
        _PERIOD_OF[plan.table]
    )
    return where, ([isp for isp, _ in left_out], [period for _, period in left_out])


def summary_query(
    plan: TablePlan, schema: str, left_out: Periods | None = None
) -> tuple[sql.Composed, tuple[Any, ...]]:
    """Count, checksum (two 60-bit sums of the rows' MD5) and money totals of a table."""
    row = sql.SQL("md5(ROW({})::text)").format(
        sql.SQL(", ").join(_hashed(name, kind) for name, kind in plan.columns)
    )
    sums = [sql.SQL(", coalesce(sum({}), 0)::bigint").format(sql.Identifier(c)) for c in plan.money]
    where, params = _where(plan, left_out)
    query = sql.SQL(
        "SELECT count(*),"
        " coalesce(sum(('x' || substr(h, 1, 15))::bit(60)::bigint), 0)::text || '.' ||"
        " coalesce(sum(('x' || substr(h, 16, 15))::bit(60)::bigint), 0)::text{sums}"
        " FROM (SELECT {row} AS h{money} FROM {table}{where}) AS t"
    ).format(
        sums=sql.SQL("").join(sums),
        row=row,
        money=sql.SQL("").join(sql.SQL(", ") + sql.Identifier(c) for c in plan.money),
        table=sql.Identifier(schema, plan.table),
        where=where,
    )
    return query, params


def summarize_table(
    db: psycopg.Connection[Any], schema: str, plan: TablePlan, left_out: Periods | None = None
) -> TableSummary:
    query, params = summary_query(plan, schema, left_out)
    found = db.execute(query, params).fetchone()
    assert found is not None
    return TableSummary(plan.table, int(found[0]), tuple(int(v) for v in found[2:]), str(found[1]))


def rows_query(
    plan: TablePlan, live: str, replay: str, left_out: Periods | None = None,
    limit: int = ROWS_SHOWN_MAX,
) -> tuple[sql.Composed, tuple[Any, ...]]:  # fmt: skip
    """The rows of either side that the other lacks (EXCEPT ALL: as multisets, by value), for
    the first `limit` keys in key order: (key's rank, side, rows only live, rows only replay,
    the columns...)."""
    columns = sql.SQL(", ").join(_selected(name, kind) for name, kind in plan.columns)
    names = sql.SQL(", ").join(map(sql.Identifier, plan.names))
    key = sql.SQL(", ").join(map(sql.Identifier, plan.key))
    on = sql.SQL("({}) IS NOT DISTINCT FROM ({})").format(
        sql.SQL(", ").join(sql.Identifier("d", k) for k in plan.key),
        sql.SQL(", ").join(sql.Identifier("k", k) for k in plan.key),
    )
    where, params = _where(plan, left_out)
    query = sql.SQL(
        "WITH l AS (SELECT {columns} FROM {live}{where}),"
        " r AS (SELECT {columns} FROM {replay}{where}),"
        " only_live AS (SELECT * FROM l EXCEPT ALL SELECT * FROM r),"
        " only_replay AS (SELECT * FROM r EXCEPT ALL SELECT * FROM l),"
        " k AS (SELECT {key}, row_number() OVER (ORDER BY {key}) AS key_rank__"
        " FROM (SELECT {key} FROM only_live UNION SELECT {key} FROM only_replay) AS u"
        " ORDER BY {key} LIMIT %s)"
        " SELECT k.key_rank__, d.side__, (SELECT count(*) FROM only_live),"
        " (SELECT count(*) FROM only_replay), {d_names}"
        " FROM (SELECT 'live' AS side__, {names} FROM only_live"
        " UNION ALL SELECT 'replay', {names} FROM only_replay) AS d"
        " JOIN k ON {on} ORDER BY k.key_rank__, d.side__"
    ).format(
        columns=columns, live=sql.Identifier(live, plan.table),
        replay=sql.Identifier(replay, plan.table), where=where, key=key, names=names, on=on,
        d_names=sql.SQL(", ").join(sql.Identifier("d", n) for n in plan.names),
    )  # fmt: skip
    return query, (*params, *params, limit)


def group_rows(
    plan: TablePlan, rows: list[tuple[Any, ...]]
) -> tuple[int, int, list[tuple[list[Row], list[Row]]]]:
    """rows_query's rows → (rows only live, rows only replay, each key's (live, replay) rows)."""
    by_rank: dict[int, tuple[list[Row], list[Row]]] = {}
    only_live = only_replay = 0
    for rank, side, live_count, replay_count, *values in rows:
        only_live, only_replay = int(live_count), int(replay_count)
        pair = by_rank.setdefault(int(rank), ([], []))
        pair[0 if side == "live" else 1].append(dict(zip(plan.names, values, strict=True)))
    return only_live, only_replay, [by_rank[rank] for rank in sorted(by_rank)]


def compare_table(
    db: psycopg.Connection[Any], plan: TablePlan, live: str, replay: str,
    left_out: Periods | None = None, limit: int = ROWS_SHOWN_MAX,
) -> tuple[TableSummary, TableDifference | None]:  # fmt: skip
    """The replay's summary of a table, and how it differs from live (None: equal)."""
    a = summarize_table(db, live, plan, left_out)
    b = summarize_table(db, replay, plan, left_out)
    if a == TableSummary(plan.table, b.rows, b.totals, b.checksum):
        return b, None
    query, params = rows_query(plan, live, replay, left_out, limit)
    only_live, only_replay, by_key = group_rows(plan, db.execute(query, params).fetchall())
    if not by_key:
        # Equal by value (in one snapshot, rows that differ in count always leave some): the
        # checksum's text differed, not a value.
        return b, None
    first = tuple(pair_rows(plan.key, by_key))
    return b, TableDifference(plan.table, a, b, plan.money, only_live, only_replay, first)


def compare(
    db: psycopg.Connection[Any], live: str, replay: str, left_out: Periods | None = None,
    limit: int = ROWS_SHOWN_MAX,
) -> Comparison:  # fmt: skip
    """Compare `replay` with `live` in the connection's transaction (one snapshot for both)."""
    # Timestamps as text (the checksum) in one zone whatever the session's.
    db.execute("SET LOCAL TimeZone = 'UTC'")
    live_catalog, replay_catalog = read_catalog(db, live), read_catalog(db, replay)
    comparison = Comparison(live, replay)
    comparison.schema_differences = schema_differences(live_catalog, replay_catalog)
    unfilled = unfilled_columns(db, live, live_catalog)
    comparison.columns_not_compared = {f"{t}.{c}": why for (t, c), why in unfilled.items()}
    keys = read_keys(db, live)
    for plan in plan_tables(live_catalog, replay_catalog, keys, unfilled):
        summary, difference = compare_table(db, plan, live, replay, left_out, limit)
        comparison.summaries[plan.table] = summary
        if difference is not None:
            comparison.differences.append(difference)
    return comparison
