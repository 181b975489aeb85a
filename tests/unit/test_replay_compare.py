"""`ledger replay`'s comparison, its pure parts (projections.compare, projections.diffreport): the
tables and columns it compares from a catalog, its keys, its SQL, the pairing of differing rows
and the report, text and JSON. The SQL itself runs in tests/integration/test_replay_compare.py."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from importlib import resources

from ledger.cli import build_parser
from projections import compare
from projections.diffreport import (
    Comparison,
    RowDifference,
    TableDifference,
    TableSummary,
    differing_columns,
    pair_rows,
    report_lines,
    shown,
    to_json,
)

LINES = (
    ("invoice_id", "text"), ("line_no", "integer"), ("isp_id", "text"),
    ("description", "text"), ("vat_rate_bp", "integer"), ("gross_cents", "bigint"),
)  # fmt: skip
CATALOG: compare.Catalog = {
    "invoice_lines": (True, LINES),
    "journal": (True, (("event_id", "text"), ("leg", "smallint"), ("amount_cents", "bigint"))),
    "applied_events": (True, (("event_id", "text"), ("applied_at", "timestamp with time zone"),
                              ("fingerprint", "bytea"), ("type", "text"))),
    "isp_secrets": (True, (("isp_id", "text"), ("secret", "bytea"))),
    "isp_invoice_lines": (False, LINES),
    "later": (True, (("a", "numeric"), ("b", "json"))),
}  # fmt: skip
KEYS = {"invoice_lines": ("invoice_id", "line_no"), "applied_events": ("event_id",)}


def _plans(replay: compare.Catalog | None = None) -> dict[str, compare.TablePlan]:
    return {p.table: p for p in compare.plan_tables(CATALOG, replay or CATALOG, KEYS)}


def test_every_table_and_column_is_compared_but_the_exclusions() -> None:
    plans = _plans()
    # Views and the API's own tables are not; a table the code never named is.
    assert set(plans) == {"invoice_lines", "journal", "applied_events", "later"}
    assert plans["invoice_lines"].columns == LINES
    assert plans["applied_events"].names == ("event_id", "fingerprint", "type")
    legacy = {("applied_events", "fingerprint"), ("applied_events", "type")}
    assert compare.plan_tables(CATALOG, CATALOG, KEYS, legacy)[0].names == ("event_id",)
    only_excluded: compare.Catalog = {"projection_offsets": (True, (("updated_at", "date"),))}
    assert compare.plan_tables(only_excluded, only_excluded, {}) == []
    assert plans["invoice_lines"].money == ("gross_cents",)


def test_keys_primary_then_unique_then_logical_then_the_whole_row() -> None:
    plans = _plans()
    assert plans["invoice_lines"].key == ("invoice_id", "line_no")
    assert plans["journal"].key == ("event_id", "leg")  # LOGICAL_KEYS: no key since 0007
    assert plans["later"].key == ("a", "b")
    found = compare.choose_keys([
        ("t", False, "t_b_c", ("b", "c")), ("t", False, "t_a", ("a",)),
        ("t", True, "t_pkey", ("x", "y")), ("u", False, "u_b", ("b",)), ("u", False, "u_a", ("a",)),
    ])  # fmt: skip
    assert found == {"t": ("x", "y"), "u": ("a",)}


def test_a_column_replay_lacks_is_a_schema_difference_and_not_compared() -> None:
    replay = dict(CATALOG)
    replay["invoice_lines"] = (True, tuple(c for c in LINES if c[0] != "description"))
    replay["journal"] = (True, (("event_id", "text"), ("leg", "integer"),
                                ("amount_cents", "bigint")))  # fmt: skip
    replay["credit_notes"] = (True, (("credit_note_id", "text"),))
    del replay["later"]
    assert compare.schema_differences(CATALOG, replay) == [
        "credit_notes: in replay only",
        "invoice_lines.description: live text, replay missing",
        "journal.leg: live smallint, replay integer",
        "later: in live only",
    ]
    plans = _plans(replay)
    assert "description" not in plans["invoice_lines"].names
    assert plans["journal"].names == ("event_id", "amount_cents")
    assert plans["journal"].key == ("event_id", "amount_cents")  # its key is not all there
    assert compare.schema_differences(CATALOG, CATALOG) == []


def test_the_summary_hashes_every_column_by_value() -> None:
    plan = _plans()["later"]
    query, params = compare.summary_query(plan, "ledger_replay")
    text = query.as_string(None)
    assert 'md5(ROW(trim_scale("a"), "b"::jsonb)::text)' in text
    assert 'FROM "ledger_replay"."later"' in text and params == ()
    lines = _plans()["invoice_lines"]
    text = compare.summary_query(lines, "ledger")[0].as_string(None)
    for name, _ in LINES:
        assert f'"{name}"' in text
    assert 'coalesce(sum("gross_cents"), 0)::bigint' in text


def test_a_left_out_period_is_left_out_of_the_billed_tables_only() -> None:
    left_out = [("orange", "2006-01")]
    query, params = compare.summary_query(_plans()["invoice_lines"], "ledger", left_out)
    assert "WHERE (isp_id, substr(invoice_id" in query.as_string(None)
    assert params == (["orange"], ["2006-01"])
    assert compare.summary_query(_plans()["journal"], "ledger", left_out)[1] == ()
    _, row_params = compare.rows_query(_plans()["invoice_lines"], "a", "b", left_out, 3)
    assert row_params == (["orange"], ["2006-01"], ["orange"], ["2006-01"], 3)


def test_the_rows_query_compares_both_ways_in_key_order() -> None:
    query, params = compare.rows_query(_plans()["later"], "ledger", "ledger_replay", limit=4)
    text = query.as_string(None)
    assert '"b"::jsonb AS "b"' in text  # json has no equality: compared as jsonb
    assert "SELECT * FROM l EXCEPT ALL SELECT * FROM r" in text
    assert "SELECT * FROM r EXCEPT ALL SELECT * FROM l" in text
    assert re.search(r'ORDER BY "a", "b" LIMIT %s', text) and params == (4,)


def test_rows_are_grouped_by_key_and_paired() -> None:
    plan = _plans()["journal"]
    rows = [
        (1, "live", 3, 2, "e1", 0, 100),
        (1, "replay", 3, 2, "e1", 0, 101),
        (2, "live", 3, 2, "e2", 1, 5),
        (3, "live", 3, 2, "e3", 0, 7),
        (3, "live", 3, 2, "e3", 0, 7),  # no key in the catalog: a leg twice
        (3, "replay", 3, 2, "e3", 0, 7),
    ]
    only_live, only_replay, by_key = compare.group_rows(plan, rows)
    assert (only_live, only_replay) == (3, 2)
    found = pair_rows(plan.key, by_key)
    assert [(r.key, r.what, r.columns) for r in found] == [
        ({"event_id": "e1", "leg": 0}, "changed", ("amount_cents",)),
        ({"event_id": "e2", "leg": 1}, "only in live", ()),
        ({"event_id": "e3", "leg": 0}, "changed", ()),
        ({"event_id": "e3", "leg": 0}, "only in live", ()),
    ]
    assert compare.group_rows(plan, []) == (0, 0, [])


def test_columns_differ_by_value_not_by_text() -> None:
    paris = timezone(timedelta(hours=1))
    live = {"n": Decimal("1.0"), "j": {"a": 1, "b": [1, 2]},
            "t": datetime(2006, 3, 1, 12, tzinfo=UTC), "x": [Decimal("2.50")]}  # fmt: skip
    replay = {"n": Decimal("1.00"), "j": {"b": [1, 2], "a": 1},
              "t": datetime(2006, 3, 1, 13, tzinfo=paris), "x": [Decimal("2.5")]}  # fmt: skip
    assert differing_columns(live, replay) == ()
    assert differing_columns(live, {**replay, "j": {"a": 1, "b": [2, 1]}}) == ("j",)
    assert differing_columns(live, None) == ()


def _difference() -> TableDifference:
    key = {"invoice_id": "orange.2006-03.acc-1", "line_no": 1}
    live = {**key, "description": "forged", "vat_rate_bp": 1234, "gross_cents": 500}
    replay = {**key, "description": "film", "vat_rate_bp": 1960, "gross_cents": 500}
    missing = {"invoice_id": "orange.2006-03.acc-1", "line_no": 2, "description": "film",
               "vat_rate_bp": 1960, "gross_cents": -200}  # fmt: skip
    return TableDifference(
        "invoice_lines",
        TableSummary("invoice_lines", 2, (300,), "1.2"),
        TableSummary("invoice_lines", 1, (500,), "3.4"),
        ("gross_cents",), 3, 1,
        (RowDifference(key, live, replay, ("description", "vat_rate_bp")),
         RowDifference({"invoice_id": "orange.2006-03.acc-1", "line_no": 2}, missing, None, ())),
    )  # fmt: skip


def test_the_report_names_table_key_columns_and_both_values() -> None:
    comparison = Comparison("ledger", "ledger_replay", schema_differences=["x.y: live text,"
                            " replay missing"], differences=[_difference()])  # fmt: skip
    assert not comparison.equal
    assert report_lines(comparison) == [
        "schema: x.y: live text, replay missing",
        "invoice_lines: rows 2 live vs 1 replay; totals (gross_cents) (300,) vs (500,);"
        " 3 live row(s) not in replay, 1 replay row(s) not in live",
        '  key invoice_id="orange.2006-03.acc-1", line_no=1: changed',
        '    description: live "forged" | replay "film"',
        "    vat_rate_bp: live 1234 | replay 1960",
        '  key invoice_id="orange.2006-03.acc-1", line_no=2: only in live',
        '    invoice_id="orange.2006-03.acc-1", line_no=2, description="film",'
        " vat_rate_bp=1960, gross_cents=-200",
        "  ... and 1 more differing row(s), after these in key order",
    ]
    assert Comparison("ledger", "r").equal and report_lines(Comparison("ledger", "r")) == []


def test_the_json_report_carries_every_value() -> None:
    diff = _difference()
    comparison = Comparison("ledger", "ledger_replay", {"invoice_lines": diff.replay}, [], [diff])
    document = json.loads(json.dumps(to_json(comparison)))
    assert document["equal"] is False and document["tables"] == {"invoice_lines": {"rows": 1}}
    (table,) = document["differences"]
    assert table["rows"] == {"live": 2, "replay": 1}
    assert (table["live_rows_not_in_replay"], table["replay_rows_not_in_live"]) == (3, 1)
    changed, missing = table["first_rows"]
    assert changed["key"] == {"invoice_id": "orange.2006-03.acc-1", "line_no": 1}
    assert changed["columns"] == ["description", "vat_rate_bp"]
    assert (changed["live"]["description"], changed["replay"]["description"]) == ("forged", "film")
    assert missing["what"] == "only in live" and missing["replay"] is None


def test_values_are_shown_as_json() -> None:
    assert shown(datetime(2006, 3, 1, 10, 30, tzinfo=UTC)) == '"2006-03-01T10:30:00+00:00"'
    assert shown(Decimal("1.50")) == '"1.5"' and shown(Decimal("10.0")) == '"10"'
    assert shown({"b": 1, "a": [Decimal("2")]}) == '{"a": ["2"], "b": 1}'
    assert shown(b"\x01\x02") == '"0x0102"'
    assert shown(bytes(40)).endswith('... (8 more bytes)"')
    assert shown(None) == "null"


def test_every_exclusion_names_a_table_or_column_of_the_migrations() -> None:
    migrations = "\n".join(
        entry.read_text() for entry in resources.files("projections.migrations").iterdir()
        if entry.name.endswith(".sql")
    )  # fmt: skip
    for table in compare.EXCLUDED_TABLES:
        assert f"CREATE TABLE {table} (" in migrations, table
    for table, column in compare.EXCLUDED_COLUMNS:
        if table != "schema_migrations":  # projections.migrate's own
            assert re.search(rf"\b{column}\b", migrations), (table, column)
    for table, column in compare.ADDED_WITHOUT_BACKFILL:
        assert re.search(rf"ALTER TABLE {table}\b[^;]*ADD COLUMN {column}\b", migrations), column
    for table in compare.LOGICAL_KEYS:
        assert f"CREATE TABLE {table} (" in migrations


def test_replay_takes_json() -> None:
    args = build_parser().parse_args(["replay", "--json"])
    assert args.json and not args.keep
