"""`ledger replay`'s comparison (projections.compare) on the real database, between two schemas
loaded with the same facts by the writer's batch code: equal; then a column changed behind the
ledger's back in one (columns the comparison used to leave out: a line description, a VAT rate, a
refund's time, a seal's VAT per rate), a row missing, a journal leg changed, a column added; each
is named with its table, key, column and both values. Values compare by their type's equality:
a numeric's trailing zeros, a jsonb's formatting, a timestamp's zone are not differences."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest

from ledger.core.runner import LocalAuthorizer
from ledger.stack.state import StackState
from projections import compare, store
from projections.diffreport import report_lines, to_json
from projections.replay import drop_schema, fresh_schema
from schemas import codec
from tests import builders as b

pytestmark = pytest.mark.integration
MARCH = "2006-03"


def _facts() -> list[Any]:
    ledger = LocalAuthorizer(b.REFERENCE)
    bought = b.purchase("acc-1", 500, b.at(10), publisher_id="canalplay")
    press = b.purchase("acc-1", 300, b.at(11), publisher_id="lemonde-archives")
    commands = [
        b.open_account("acc-1"),
        bought,
        press,
        b.refund("acc-1", bought.purchase_id, 200, b.at(30)),
        b.block("acc-1", b.at(40)),
        b.close("orange", MARCH, datetime(2006, 4, 1, 0, 5, tzinfo=UTC)),
    ]
    return [f for origin, c in enumerate(commands, 1) for f in ledger.handle(c, origin=origin)]


def _load(dsn: str, schema: str, facts: list[Any]) -> None:
    incoming = [store.Incoming(0, n, f, codec.encode(f)) for n, f in enumerate(facts)]

    async def apply() -> None:
        conn = await store.connect(dsn, schema)
        try:
            await store.apply_batch(conn, "t", incoming, {0: len(incoming)})
        finally:
            await conn.close()

    asyncio.run(apply())


@pytest.fixture
def schemas(stack: StackState) -> Iterator[tuple[str, str, str]]:
    """(dsn, "live", "replay"): two scratch schemas holding the same facts."""
    assert stack.postgres is not None
    run = uuid.uuid4().hex[:8]
    live, replay = f"test_live_{run}", f"test_replay_{run}"
    facts = _facts()  # once: the builders' ids are new at each call
    for name in (live, replay):
        fresh_schema(stack.postgres.dsn, name)
        _load(stack.postgres.dsn, name, facts)
    try:
        yield stack.postgres.dsn, live, replay
    finally:
        for name in (live, replay):
            drop_schema(stack.postgres.dsn, name)


def _compare(dsn: str, live: str, replay: str) -> compare.Comparison:
    with psycopg.connect(dsn) as db:
        db.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        return compare.compare(db, live, replay)


def _behind_the_back(dsn: str, *statements: str) -> None:
    """As the superuser, past the sealed rows' triggers."""
    with psycopg.connect(dsn, autocommit=True) as db, db.transaction():
        db.execute("SET LOCAL session_replication_role = replica")
        for statement in statements:
            db.execute(statement.encode())


def _one(dsn: str, query: str) -> Any:
    with psycopg.connect(dsn) as db:
        row = db.execute(query.encode()).fetchone()
        assert row is not None
        return row[0]


def test_the_same_facts_compare_equal_in_every_table(schemas: tuple[str, str, str]) -> None:
    dsn, live, replay = schemas
    found = _compare(dsn, live, replay)
    assert found.equal, report_lines(found)
    # Every projection table is compared, the API's own state is not.
    assert {"invoice_lines", "invoices", "billing_periods", "refunds", "payments", "journal",
            "statements", "applied_events"} <= found.summaries.keys()  # fmt: skip
    assert not found.summaries.keys() & compare.EXCLUDED_TABLES.keys()
    assert found.summaries["invoice_lines"].rows == 3
    assert found.summaries["refunds"].rows == 1


def test_columns_once_left_out_are_named_with_both_values(schemas: tuple[str, str, str]) -> None:
    dsn, live, replay = schemas
    line = f"(SELECT min(invoice_id) FROM {live}.invoice_lines)"
    _behind_the_back(
        dsn,
        f"UPDATE {live}.invoice_lines SET description = 'forged'"
        f" WHERE invoice_id = {line} AND line_no = 1",
        f"UPDATE {live}.invoice_lines SET vat_rate_bp = 1234"
        f" WHERE invoice_id = {line} AND line_no = 2",
        f"UPDATE {live}.refunds SET occurred_at = occurred_at + interval '1 second'",
        f"UPDATE {live}.billing_periods SET vat_by_rate = '[]'",
    )
    invoice_id = _one(dsn, f"SELECT {line}")
    refund_event = _one(dsn, f"SELECT event_id FROM {live}.refunds")
    refund_at = _one(dsn, f"SELECT occurred_at FROM {replay}.refunds").astimezone(UTC)
    rate = _one(dsn, f"SELECT vat_rate_bp FROM {replay}.invoice_lines"
                     f" WHERE invoice_id = {line} AND line_no = 2")  # fmt: skip
    found = _compare(dsn, live, replay)
    assert not found.equal
    by_table = {d.table: d for d in found.differences}
    assert set(by_table) == {"invoice_lines", "refunds", "billing_periods"}
    lines = by_table["invoice_lines"]
    assert (lines.rows_only_live, lines.rows_only_replay) == (2, 2)
    changed = {(r.key["invoice_id"], r.key["line_no"]): r for r in lines.first}
    first, second = changed[(invoice_id, 1)], changed[(invoice_id, 2)]
    assert first.what == "changed" and first.columns == ("description",)
    assert first.live is not None and first.replay is not None
    assert first.live["description"] == "forged" and first.replay["description"] != "forged"
    assert second.columns == ("vat_rate_bp",)
    assert second.live is not None and second.replay is not None
    assert (second.live["vat_rate_bp"], second.replay["vat_rate_bp"]) == (1234, rate)
    (refund,) = by_table["refunds"].first
    assert refund.key == {"event_id": refund_event} and refund.columns == ("occurred_at",)
    assert refund.replay is not None and refund.replay["occurred_at"] == refund_at
    (period,) = by_table["billing_periods"].first
    assert period.key == {"isp_id": "orange", "period": MARCH}
    assert period.columns == ("vat_by_rate",)
    assert period.live is not None and period.live["vat_by_rate"] == []
    text = "\n".join(report_lines(found))
    assert f'key invoice_id="{invoice_id}", line_no=1: changed' in text
    assert 'description: live "forged" | replay ' in text
    assert f"vat_rate_bp: live 1234 | replay {rate}" in text
    moved = (refund_at + timedelta(seconds=1)).isoformat()
    assert f'occurred_at: live "{moved}" | replay "{refund_at.isoformat()}"' in text
    document = to_json(found)
    assert document["equal"] is False
    refunds = next(d for d in document["differences"] if d["table"] == "refunds")
    assert refunds["first_rows"][0]["columns"] == ["occurred_at"]
    assert refunds["first_rows"][0]["replay"]["occurred_at"] == refund_at.isoformat()


def test_missing_rows_journal_legs_and_columns_are_named(schemas: tuple[str, str, str]) -> None:
    dsn, live, replay = schemas
    event = _one(dsn, f"SELECT min(event_id) FROM {live}.journal")
    _behind_the_back(
        dsn,
        f"DELETE FROM {live}.account_facts",
        f"UPDATE {live}.journal SET party_id = 'someone' WHERE event_id = '{event}' AND leg = 0",
        f"ALTER TABLE {replay}.statements ADD COLUMN extra integer",
    )
    found = _compare(dsn, live, replay)
    assert found.schema_differences == ["statements.extra: live missing, replay integer"]
    by_table = {d.table: d for d in found.differences}
    assert set(by_table) == {"account_facts", "journal"}
    facts = by_table["account_facts"]
    assert facts.live.rows == 0 and facts.rows_only_replay == facts.replay.rows > 0
    assert all(r.what == "only in replay" and r.live is None for r in facts.first)
    # The journal has no key since migration 0007: its rows are keyed by (event_id, leg).
    (leg,) = by_table["journal"].first
    assert leg.key == {"event_id": event, "leg": 0} and leg.columns == ("party_id",)
    text = "\n".join(report_lines(found))
    assert "schema: statements.extra: live missing, replay integer" in text
    assert "account_facts: rows 0 live vs " in text and ": only in replay" in text


def test_values_compare_by_value_not_by_their_text(schemas: tuple[str, str, str]) -> None:
    """A table a later migration adds is compared with no change to the comparison, by value."""
    dsn, live, replay = schemas
    for schema, (amount, doc, stamp, parts) in {
        live: ("1.50", '{"a": 1.0, "b": [1, 2]}', "2006-03-01 12:00:00+00", "{1.0,2.50}"),
        replay: ("1.5000", '{"b": [1, 2], "a": 1.00}', "2006-03-01 13:00:00+01", "{1,2.5}"),
    }.items():
        _behind_the_back(
            dsn,
            f"CREATE TABLE {schema}.later (id text PRIMARY KEY, amount numeric, doc jsonb,"
            " raw json, at timestamptz, parts numeric[])",
            f"INSERT INTO {schema}.later VALUES ('x', {amount}, '{doc}', '{doc}', '{stamp}',"
            f" '{parts}')",
        )
    found = _compare(dsn, live, replay)
    assert found.equal, report_lines(found)
    assert found.summaries["later"].rows == 1
    _behind_the_back(dsn, f"UPDATE {replay}.later SET parts = '{{1,2.51}}'")
    (diff,) = _compare(dsn, live, replay).differences
    (row,) = diff.first
    assert diff.table == "later" and row.key == {"id": "x"} and row.columns == ("parts",)


def test_a_column_added_without_backfill_is_compared_unless_live_lacks_it(
    schemas: tuple[str, str, str],
) -> None:
    dsn, live, replay = schemas
    event = _one(dsn, f"SELECT min(event_id) FROM {live}.applied_events")
    _behind_the_back(dsn, f"UPDATE {live}.applied_events SET type = 'forged'"
                          f" WHERE event_id = '{event}'")  # fmt: skip
    found = _compare(dsn, live, replay)
    assert found.columns_not_compared == {}
    (diff,) = found.differences
    (row,) = diff.first
    assert (diff.table, row.key, row.columns) == ("applied_events", {"event_id": event}, ("type",))
    # Ids applied before migration 0004 have neither: both columns are left out, and named.
    _behind_the_back(dsn, f"UPDATE {live}.applied_events SET fingerprint = NULL, type = NULL"
                          f" WHERE event_id = '{event}'")  # fmt: skip
    found = _compare(dsn, live, replay)
    assert found.equal, report_lines(found)
    assert set(found.columns_not_compared) == {"applied_events.fingerprint", "applied_events.type"}
    assert to_json(found)["columns_not_compared"]["applied_events.type"].startswith("0004")
