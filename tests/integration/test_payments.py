"""Held payments on the real stack (issue 14): a worker decides holds, captures and voids, `ledger
expire-holds` sends the expiry barrier to every partition, the projection writer keeps the
`payments` rows and the `holds` view, and the billing close invoices the captured money only;
ISP logins see their own payments; the fact check accounts for every new fact."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import psycopg
import pytest

from ledger.kafka import topics
from ledger.kafka.partitioning import partition_for
from ledger.stack.state import StackState
from projections.access import grant
from schemas import codec
from schemas.reference import IspRegistered
from tests import builders as b
from tests.harness import (
    PROJECT_ROOT,
    LedgerProcess,
    Projector,
    Worker,
    end_offsets,
    metric,
    produce,
    read_until,
    wait_for,
)
from tests.world import T0, World

pytestmark = pytest.mark.integration
DAY = timedelta(days=1)
MARCH = "2006-03"


def ledger_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args], cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip


def _db(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, options="-c search_path=ledger", autocommit=True)


def _rows(dsn: str, query: str, *params: Any) -> list[tuple[Any, ...]]:
    with _db(dsn) as db:
        return db.execute(query.encode(), params).fetchall()


def _payment(dsn: str, account: str, payment_id: str) -> tuple[Any, ...] | None:
    found = _rows(
        dsn,
        "SELECT status, amount_held_cents, amount_captured_cents, finished_at FROM payments"
        " WHERE account_id = %s AND payment_id = %s",
        account, payment_id,
    )  # fmt: skip
    return found[0] if found else None


def _status_of(dsn: str, account: str, payment_id: str) -> str | None:
    found = _payment(dsn, account, payment_id)
    return None if found is None else str(found[0])


def _rejections(dsn: str, account: str, payment_id: str) -> list[str]:
    query = (
        "SELECT fact->>'reason' FROM account_facts WHERE type = 'payment.command_rejected.v1'"
        " AND account_id = %s AND fact->>'payment_id' = %s ORDER BY fact->>'reason'"
    )
    return [str(row[0]) for row in _rows(dsn, query, account, payment_id)]


@dataclass
class Payments:
    stack: StackState
    world: World
    isp2: IspRegistered
    dsn: str
    c1: str
    c2: str
    c3: str
    expire_output: str
    worker_metrics: dict[str, float]


@pytest.fixture(scope="module")
def payments(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Payments]:
    assert stack.kafka is not None and stack.postgres is not None
    bootstrap, dsn = stack.kafka.bootstrap_servers, stack.postgres.dsn
    partitions = stack.topic_partitions or 4
    tmp = tmp_path_factory.mktemp("payments")
    world = World()
    isp2 = IspRegistered(
        isp_id=f"isp2-{world.run}", name="Alice", billing_day=1, commission_bp=1200,
        occurred_at=T0,
    )  # fmt: skip
    c1, c2, c3 = world.account("c1"), world.account("c2"), world.account("c3")
    vod = world.vod.publisher_id
    run = world.run
    commands: list[Any] = [
        b.open_account(c1, world.isp.isp_id), b.open_account(c2, world.isp.isp_id),
        b.open_account(c3, isp2.isp_id),
        # c1: held 15.00, captured 10.00; held 7.00, voided.
        b.hold(c1, 1_500, T0 + 2 * DAY, payment_id=f"h1-{run}", publisher_id=vod, hold_for=DAY),
        b.capture(c1, f"h1-{run}", 1_000, T0 + 2 * DAY + timedelta(hours=1), publisher_id=vod),
        b.hold(c1, 700, T0 + 3 * DAY, payment_id=f"h2-{run}", publisher_id=vod),
        b.void(c1, f"h2-{run}", T0 + 3 * DAY + timedelta(minutes=5), publisher_id=vod),
        # c2: a hold of 10 minutes, left to expire; and one of a week, left open.
        b.hold(c2, 500, T0 + 4 * DAY, payment_id=f"h3-{run}", publisher_id=vod,
               hold_for=timedelta(minutes=10)),
        b.hold(c2, 400, T0 + 4 * DAY, payment_id=f"h4-{run}", publisher_id=vod,
               hold_for=timedelta(days=7)),
        # c3, of another ISP: an open hold.
        b.hold(c3, 300, T0 + 4 * DAY, payment_id=f"h5-{run}", publisher_id=vod,
               hold_for=timedelta(days=7)),
    ]  # fmt: skip
    processes: list[LedgerProcess] = [
        Worker("pay-worker", tmp / "worker").start(),
        Projector("pay-writer", tmp).start(),
    ]
    try:
        produce(bootstrap, partitions, [*world.records, isp2], commands)
        wait_for(
            lambda: _status_of(dsn, c1, f"h1-{run}") == "captured"
            and _status_of(dsn, c1, f"h2-{run}") == "voided"
            and _status_of(dsn, c2, f"h4-{run}") == "reserved"
            and _status_of(dsn, c3, f"h5-{run}") == "reserved",
            180, "the holds, the capture and the void in PostgreSQL",
        )  # fmt: skip
        # The barrier, at the end of h3 (10 minutes after it), to every partition.
        as_of = (T0 + 4 * DAY + timedelta(minutes=10)).isoformat()
        done = ledger_cli("expire-holds", "--as-of", as_of)
        assert done.returncode == 0, done.stdout + done.stderr
        wait_for(lambda: _status_of(dsn, c2, f"h3-{run}") == "expired", 120, "h3 expired")
        # Too late: captures and a void of finished payments, and one above its hold.
        produce(bootstrap, partitions, [], [
            b.capture(c2, f"h3-{run}", 500, T0 + 4 * DAY + timedelta(minutes=11),
                      publisher_id=vod),
            b.capture(c1, f"h2-{run}", 100, T0 + 4 * DAY, publisher_id=vod),
            b.capture(c2, f"h4-{run}", 401, T0 + 4 * DAY, publisher_id=vod),
            b.capture(c2, f"h4-{run}", 100, T0 + 4 * DAY, publisher_id=world.press.publisher_id),
        ])  # fmt: skip
        wait_for(
            lambda: len(_rejections(dsn, c2, f"h4-{run}")) == 2
            and _rejections(dsn, c2, f"h3-{run}") != []
            and _rejections(dsn, c1, f"h2-{run}") != [],
            120, "the refused captures in PostgreSQL",
        )  # fmt: skip
        for isp_id in (world.isp.isp_id, isp2.isp_id):
            closed = ledger_cli("close-period", "--isp", isp_id, "--period", MARCH)
            assert closed.returncode == 0, closed.stdout + closed.stderr
        samples = processes[0].metrics()
        yield Payments(stack, world, isp2, dsn, c1, c2, c3, done.stdout, samples)
    finally:
        for process in processes:
            process.stop()


def test_a_partial_capture_is_invoiced_for_the_captured_amount_only(payments: Payments) -> None:
    p, run = payments, payments.world.run
    assert _payment(p.dsn, p.c1, f"h1-{run}")[:3] == ("captured", 1_500, 1_000)  # type: ignore[index]
    lines = _rows(
        p.dsn,
        "SELECT l.purchase_id, l.gross_cents, l.occurred_at FROM invoice_lines l"
        " JOIN invoices i USING (invoice_id) WHERE i.account_id = %s ORDER BY l.line_no",
        p.c1,
    )  # fmt: skip
    # One line: the capture, at the subscriber's confirmation time; nothing of the voided hold.
    assert lines == [(f"h1-{run}", 1_000, T0 + 2 * DAY)]
    invoices = _rows(p.dsn, "SELECT account_id, gross_cents FROM invoices WHERE isp_id = %s"
                     " ORDER BY account_id", p.world.isp.isp_id)  # fmt: skip
    assert invoices == [(p.c1, 1_000)]  # c2's holds, expired or open, are not money
    purchases = _rows(p.dsn, "SELECT purchase_id, decision, amount_cents FROM purchases"
                      " WHERE account_id = ANY(%s) AND decision = 'authorized'",
                      [p.c1, p.c2, p.c3])  # fmt: skip
    assert purchases == [(f"h1-{run}", "authorized", 1_000)]


def test_a_void_and_an_expiry_finish_their_holds_and_later_captures_are_refused(
    payments: Payments,
) -> None:
    p, run = payments, payments.world.run
    voided = _payment(p.dsn, p.c1, f"h2-{run}")
    assert voided == ("voided", 700, None, T0 + 3 * DAY + timedelta(minutes=5))
    expired = _payment(p.dsn, p.c2, f"h3-{run}")
    assert expired == ("expired", 500, None, T0 + 4 * DAY + timedelta(minutes=10))
    assert "barrier sent to" in p.expire_output
    assert _rejections(p.dsn, p.c2, f"h3-{run}") == ["reservation_expired"]
    assert _rejections(p.dsn, p.c1, f"h2-{run}") == ["reservation_voided"]
    # Above the hold; another publisher's capture is told nothing of the payment.
    assert _rejections(p.dsn, p.c2, f"h4-{run}") == ["capture_exceeds_hold", "payment_unknown"]
    assert _status_of(p.dsn, p.c2, f"h4-{run}") == "reserved"


def test_the_holds_view_shows_the_open_holds_per_account(payments: Payments) -> None:
    p, run = payments, payments.world.run
    held = _rows(
        p.dsn,
        "SELECT account_id, payment_id, amount_held_cents FROM holds WHERE account_id = ANY(%s)"
        " ORDER BY account_id",
        [p.c1, p.c2, p.c3],
    )  # fmt: skip
    assert held == [(p.c2, f"h4-{run}", 400), (p.c3, f"h5-{run}", 300)]
    status = ledger_cli("status")
    assert status.returncode == 0, status.stderr
    assert "open holds" in status.stdout and p.isp2.isp_id in status.stdout


def test_an_isp_login_sees_its_own_payments_only(payments: Payments) -> None:
    p = payments
    assert p.stack.postgres is not None
    with psycopg.connect(p.dsn) as db:
        creds = grant(db, p.isp2.isp_id)
    with psycopg.connect(
        host="127.0.0.1", port=p.stack.postgres.port, dbname="ledger", user=creds.sql_login,
        password=creds.sql_password, autocommit=True,
    ) as db:  # fmt: skip
        seen = db.execute("SELECT isp_id, account_id FROM ledger.isp_payments").fetchall()
        assert seen == [(p.isp2.isp_id, p.c3)]
        assert db.execute("SELECT count(*) FROM ledger.isp_holds").fetchone() == (1,)
        for table in ("payments", "holds"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                db.execute(f"SELECT * FROM ledger.{table} LIMIT 1")


def test_the_fact_check_accounts_for_every_payment_fact(payments: Payments) -> None:
    done = ledger_cli("reconcile", "--skip-stream", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "MISMATCH" not in done.stdout


def test_the_worker_counts_held_payments_by_outcome(payments: Payments) -> None:
    samples = payments.worker_metrics

    def count(labels: str) -> float:
        return metric(samples, f"ledger_payments_total{{{labels}")

    assert count("outcome=reserved") == 5
    assert count("outcome=captured") == 1
    assert count("outcome=voided") == 1
    assert count("outcome=expired") == 1
    assert count("outcome=capture_rejected,reason=reservation_expired") == 1
    assert count("outcome=capture_rejected,reason=capture_exceeds_hold") == 1
    # Every command read is one decision, the expiry barrier too (one per partition).
    consumed = metric(samples, "ledger_commands_consumed_total")
    assert consumed == metric(samples, "ledger_decisions_total")


def test_a_barrier_on_the_wrong_partition_and_an_overlong_hold_are_dead_lettered(
    payments: Payments,
) -> None:
    p = payments
    assert p.stack.kafka is not None
    bootstrap, partitions = p.stack.kafka.bootstrap_servers, p.stack.topic_partitions or 4
    dlq_start = end_offsets(bootstrap, topics.DLQ)
    elsewhere = b.expire(T0, partition=1, partitions=partitions, command_id=f"x-{p.world.run}")
    hold = b.hold(p.c1, 100, T0, payment_id=f"long-{p.world.run}")
    overlong = codec.encode(hold).replace(
        b'"hold_expires_at":"2006-03-01T10:00:00Z"', b'"hold_expires_at":"2006-03-09T09:00:00Z"'
    )
    poison = [
        (b"x", codec.encode(elsewhere), 0),
        (p.c1.encode(), overlong, partition_for(p.c1, partitions)),
    ]
    produced = produce(bootstrap, partitions, [], [], poison)
    letters = read_until(bootstrap, topics.DLQ, dlq_start, lambda r: len(r) >= 2, 60)
    dead = {(d.partition, d.offset): d for d in map(codec.decode_dead_letter,
                                                    (r.value for r in letters))}  # fmt: skip
    assert set(dead) == set(produced.poison)
    reasons = {dead[where].reason for where in produced.poison}
    assert reasons == {"wrong_partition", "invalid_field"}
    assert any("at most 7 days" in d.detail for d in dead.values())
