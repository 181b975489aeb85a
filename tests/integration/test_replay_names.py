"""`ledger replay` on the real stack names the difference (issue 15, part 5): after a sealed month,
replay equals live; then a line description, a line's VAT rate and a refund's time, columns the
replay used to leave out, are changed in the live schema behind the ledger's back (as the
superuser, past the sealed rows' triggers), and `ledger replay` exits non-zero naming each table,
key, column and both values, in text and in JSON. The changes are undone at the end, and replay
equals live again."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from ledger.cli.exits import EXIT_MISMATCH
from ledger.stack.state import StackState
from tests import builders as b
from tests.harness import Projector, Worker, produce, wait_for
from tests.integration.test_projections import ledger_cli
from tests.world import World

pytestmark = pytest.mark.integration
MAY = "2007-05"
MAY_3 = datetime(2007, 5, 3, 20, tzinfo=UTC)


@dataclass(frozen=True)
class Month:
    dsn: str
    invoice_id: str
    refund_event_id: str


def _row(dsn: str, query: str, *params: Any) -> tuple[Any, ...]:
    with psycopg.connect(dsn, options="-c search_path=ledger") as db:
        row = db.execute(query.encode(), params).fetchone()
    assert row is not None, query
    return tuple(row)


@pytest.fixture(scope="module")
def sealed_may(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Month]:
    """May 2007 of one account: two purchases and a refund, sealed."""
    assert stack.kafka is not None and stack.postgres is not None
    bootstrap, dsn = stack.kafka.bootstrap_servers, stack.postgres.dsn
    tmp = tmp_path_factory.mktemp("replay-names")
    world = World()
    isp, account = world.isp.isp_id, world.account("home")
    film = b.purchase(account, 1_200, MAY_3, publisher_id=world.vod.publisher_id)
    commands = [
        b.open_account(account, isp, when=MAY_3.replace(day=1)),
        film,
        b.purchase(account, 450, MAY_3.replace(hour=21), publisher_id=world.press.publisher_id),
        b.refund(account, film.purchase_id, 300, MAY_3.replace(day=4)),
    ]
    processes = [
        Worker("names-worker", tmp / "worker").start(),
        Projector("names-writer", tmp).start(),
    ]
    try:
        produce(bootstrap, stack.topic_partitions or 4, world.records, commands)

        def decided() -> bool:
            found = _row(dsn, "SELECT (SELECT count(*) FROM purchases WHERE account_id = %s)"
                         " + (SELECT count(*) FROM refunds WHERE account_id = %s)",
                         account, account)  # fmt: skip
            return int(found[0]) >= 3

        wait_for(decided, 180, "the month's facts in PostgreSQL")
        done = ledger_cli("close-period", "--isp", isp, "--period", MAY)
        assert done.returncode == 0 and "is sealed" in done.stdout, done.stdout + done.stderr
        (refund_event_id,) = _row(dsn, "SELECT event_id FROM refunds WHERE account_id = %s",
                                  account)  # fmt: skip
        yield Month(dsn, f"{isp}.{MAY}.{account}", refund_event_id)
    finally:
        for process in processes:
            process.stop()


def _replay(*flags: str) -> tuple[int, str]:
    done = ledger_cli("replay", *flags, timeout=600)
    assert done.returncode in (0, EXIT_MISMATCH), done.stdout + done.stderr
    return done.returncode, done.stdout


def _behind_the_back(dsn: str, *statements: tuple[str, tuple[Any, ...]]) -> None:
    """As the superuser, past the sealed rows' triggers."""
    with psycopg.connect(dsn, options="-c search_path=ledger") as db:
        db.execute("SET LOCAL session_replication_role = replica")
        for statement, params in statements:
            db.execute(statement.encode(), params)


def test_replay_names_columns_changed_behind_the_ledgers_back(sealed_may: Month) -> None:
    dsn, invoice_id, refund_id = sealed_may.dsn, sealed_may.invoice_id, sealed_may.refund_event_id
    code, out = _replay("--json")
    assert code == 0 and json.loads(out)["equal"] is True, out
    assert json.loads(out)["tables"]["invoice_lines"]["rows"] >= 3
    line = (
        "SELECT description, vat_rate_bp FROM invoice_lines WHERE invoice_id = %s AND line_no = %s"
    )
    description, _ = _row(dsn, line, invoice_id, 1)
    _, rate = _row(dsn, line, invoice_id, 2)
    (refunded_at,) = _row(dsn, "SELECT occurred_at FROM refunds WHERE event_id = %s", refund_id)
    _behind_the_back(
        dsn,
        ("UPDATE invoice_lines SET description = 'forged' WHERE invoice_id = %s AND line_no = 1",
         (invoice_id,)),
        ("UPDATE invoice_lines SET vat_rate_bp = 1234 WHERE invoice_id = %s AND line_no = 2",
         (invoice_id,)),
        ("UPDATE refunds SET occurred_at = occurred_at + interval '1 minute' WHERE event_id = %s",
         (refund_id,)),
    )  # fmt: skip
    try:
        code, out = _replay("--json")
        assert code == EXIT_MISMATCH, out
        document = json.loads(out)
        assert document["equal"] is False and document["schema_differences"] == []
        by_table = {d["table"]: d for d in document["differences"]}
        assert set(by_table) == {"invoice_lines", "refunds"}
        rows = {(r["key"]["invoice_id"], r["key"]["line_no"]): r
                for r in by_table["invoice_lines"]["first_rows"]}  # fmt: skip
        first, second = rows[(invoice_id, 1)], rows[(invoice_id, 2)]
        assert first["columns"] == ["description"]
        assert (first["live"]["description"], first["replay"]["description"]) == (
            "forged", description,
        )  # fmt: skip
        assert second["columns"] == ["vat_rate_bp"]
        assert (second["live"]["vat_rate_bp"], second["replay"]["vat_rate_bp"]) == (1234, rate)
        (refund,) = by_table["refunds"]["first_rows"]
        assert refund["key"] == {"event_id": refund_id} and refund["columns"] == ["occurred_at"]
        assert refund["replay"]["occurred_at"] == refunded_at.astimezone(UTC).isoformat()
        code, out = _replay()
        assert code == EXIT_MISMATCH and "replay DIFFERS from live:" in out, out
        assert f'key invoice_id="{invoice_id}", line_no=1: changed' in out
        assert f'description: live "forged" | replay "{description}"' in out
        assert f"vat_rate_bp: live 1234 | replay {rate}" in out
        assert "refunds: rows" in out and f'key event_id="{refund_id}": changed' in out
    finally:
        _behind_the_back(
            dsn,
            ("UPDATE invoice_lines SET description = %s WHERE invoice_id = %s AND line_no = 1",
             (description, invoice_id)),
            ("UPDATE invoice_lines SET vat_rate_bp = %s WHERE invoice_id = %s AND line_no = 2",
             (rate, invoice_id)),
            ("UPDATE refunds SET occurred_at = %s WHERE event_id = %s", (refunded_at, refund_id)),
        )  # fmt: skip
    code, out = _replay()
    assert code == 0 and "replay equals live" in out, out
