"""The projections on the real stack: a worker decides, the projection writer writes PostgreSQL,
`ledger close-period` seals a month of two ISPs; then invoices are checked against the facts on
the topic, late events land in the next period, a second close changes nothing, ISP logins see
their own rows only, the ISP API authenticates and isolates, and the books reconcile."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import psycopg
import pytest

from ledger.core import billing
from ledger.kafka import topics
from ledger.kafka.groups import ACCOUNTS_TABLE
from ledger.produce import close_commands
from ledger.stack.state import StackState
from ledger.tables import read_balances
from projections.access import IspCredentials, grant
from projections.reconcile import stream_balances_equal
from schemas.facts import Fact, PurchaseAuthorized, PurchaseRefunded
from schemas.reference import IspRegistered
from schemas.types import Party
from tests import builders as b
from tests.harness import (
    PROJECT_ROOT,
    LedgerProcess,
    Projector,
    Worker,
    distinct_facts,
    end_offsets,
    free_port,
    produce,
    read_until,
    wait_for,
)
from tests.world import T0, World

pytestmark = pytest.mark.integration
MARCH = "2006-03"
APRIL = "2006-04"


def ledger_cli(*args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ledger.cli", *args], cwd=PROJECT_ROOT, capture_output=True,
        text=True, timeout=timeout, check=False,
    )  # fmt: skip


@dataclass
class Sealed:
    stack: StackState
    world: World
    isp2: IspRegistered
    accounts: list[str]
    facts: dict[str, Fact]  # ours, read back from ledger.events before the late purchase
    late_purchase_id: str
    invoices_before_late: list[tuple[Any, ...]]
    dsn: str


def _db(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, options="-c search_path=ledger", autocommit=True)


def _count(dsn: str, query: str, *params: Any) -> int:
    with _db(dsn) as db:
        row = db.execute(query.encode(), params).fetchone()
        return int(row[0]) if row else 0


def _commands(world: World, isp2: IspRegistered) -> tuple[list[str], list[Any]]:
    isp = world.isp.isp_id
    c1, c2, ent, c3 = (world.account(n) for n in ("c1", "c2", "ent", "c3"))
    vod, press = world.vod.publisher_id, world.press.publisher_id
    day = timedelta(days=1)
    p1 = b.purchase(c1, 499, T0 + 2 * day, publisher_id=vod)
    commands: list[Any] = [
        b.open_account(c1, isp), b.open_account(c2, isp),
        b.open_account(ent, isp, kind="enterprise"), b.open_account(c3, isp2.isp_id),
        b.authorise(ent, "emp-1", T0), b.authorise(ent, "emp-2", T0),
        p1,
        b.purchase(c1, 266, T0 + 3 * day, publisher_id=press),
        b.purchase(c2, 1200, T0 + 4 * day, publisher_id=vod),
        b.purchase(c2, 99_999, T0 + 5 * day, publisher_id=vod),  # above the band: rejected
        b.purchase(ent, 1500, T0 + 6 * day, publisher_id=press, user_id="emp-1"),
        b.purchase(ent, 750, T0 + 7 * day, publisher_id=vod, user_id="emp-2"),
        b.purchase(ent, 300, T0 + 8 * day, publisher_id=vod, user_id="intruder"),  # rejected
        b.purchase(c3, 650, T0 + 20 * day, publisher_id=vod),
        b.refund(c1, p1.purchase_id, 200, T0 + 9 * day),
        # April for the first ISP: not in the closed period
        b.purchase(c2, 333, T0 + 35 * day, publisher_id=press),
    ]  # fmt: skip
    return [c1, c2, ent, c3], commands


def _ours(facts: dict[str, Fact], accounts: list[str]) -> dict[str, Fact]:
    return {k: f for k, f in facts.items() if getattr(f, "account_id", None) in accounts}


def _decided(dsn: str, accounts: list[str]) -> int:
    """Rows of the accounts' facts in PostgreSQL: one per fact of this scenario."""
    tables = ("purchases", "refunds", "accounts", "account_facts")
    return sum(
        _count(dsn, f"SELECT count(*) FROM {table} WHERE account_id = ANY(%s)", accounts)
        for table in tables
    )


@pytest.fixture(scope="module")
def sealed(stack: StackState, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sealed]:
    assert stack.kafka is not None and stack.postgres is not None
    bootstrap, dsn = stack.kafka.bootstrap_servers, stack.postgres.dsn
    partitions = stack.topic_partitions or 4
    tmp = tmp_path_factory.mktemp("projections")
    world = World()
    isp2 = IspRegistered(
        isp_id=f"isp2-{world.run}", name="Alice", billing_day=15, commission_bp=1200,
        occurred_at=T0,
    )  # fmt: skip
    accounts, commands = _commands(world, isp2)
    processes: list[LedgerProcess] = [
        Worker("proj-worker", tmp / "worker").start(),
        Projector("proj-writer", tmp).start(),
    ]
    try:
        start = end_offsets(bootstrap, topics.EVENTS)
        produce(bootstrap, partitions, [*world.records, isp2], commands)
        expected_decisions = len(commands)  # one fact per command in this scenario
        wait_for(
            lambda: _decided(dsn, accounts) >= expected_decisions,
            180,
            "the scenario's facts in PostgreSQL",
        )
        records = read_until(
            bootstrap, topics.EVENTS, start,
            lambda r: len(_ours(distinct_facts(r), accounts)) >= expected_decisions, 60,
        )  # fmt: skip
        facts = _ours(distinct_facts(records), accounts)
        assert len(facts) == expected_decisions
        for isp_id in (world.isp.isp_id, isp2.isp_id):
            done = ledger_cli("close-period", "--isp", isp_id, "--period", MARCH)
            assert done.returncode == 0, done.stdout + done.stderr
            assert "is sealed" in done.stdout, done.stdout
        with _db(dsn) as db:
            before = db.execute(
                "SELECT invoice_id, gross_cents, seal FROM invoices WHERE isp_id = ANY(%s)"
                " ORDER BY invoice_id",
                ([world.isp.isp_id, isp2.isp_id],),
            ).fetchall()
        late = b.purchase(
            accounts[0], 410, T0 + timedelta(days=19), publisher_id=world.vod.publisher_id
        )
        produce(bootstrap, partitions, [], [late])
        # By account too: builders' purchase ids repeat from one test process to the next, and
        # the stack keeps every run's purchases.
        wait_for(
            lambda: _count(dsn, "SELECT count(*) FROM purchases WHERE purchase_id = %s"
                           " AND account_id = %s", late.purchase_id, late.account_id) == 1,
            120, "the late purchase in PostgreSQL",
        )  # fmt: skip
        yield Sealed(stack, world, isp2, accounts, facts, late.purchase_id, before, dsn)
    finally:
        for process in processes:
            process.stop()


def test_invoices_are_the_core_billing_of_the_facts_on_the_topic(sealed: Sealed) -> None:
    money = [
        f for f in sealed.facts.values() if isinstance(f, PurchaseAuthorized | PurchaseRefunded)
    ]
    for isp_id in (sealed.world.isp.isp_id, sealed.isp2.isp_id):
        expected = billing.build_invoices(isp_id, MARCH, money)
        summary = billing.summarize(isp_id, MARCH, money)
        with _db(sealed.dsn) as db:
            found = db.execute(
                "SELECT invoice_id, account_kind, lines, net_cents, vat_cents, gross_cents, seal,"
                " gross_cents_by_user, company_name FROM invoices WHERE isp_id = %s AND period = %s"
                " ORDER BY invoice_id",
                (isp_id, MARCH),
            ).fetchall()
            period = db.execute(
                "SELECT state, invoices, net_cents, vat_cents, gross_cents, commission_cents,"
                " owed_to_platform_cents FROM billing_periods WHERE isp_id = %s AND period = %s",
                (isp_id, MARCH),
            ).fetchone()
        assert [(r[0], r[1], r[2], r[3], r[4], r[5], r[6]) for r in found] == [
            (i.invoice_id, i.account_kind, len(i.lines), i.net_cents, i.vat_cents, i.gross_cents,
             i.seal) for i in expected
        ]  # fmt: skip
        assert period == (
            "closed", summary.invoices, summary.net_cents, summary.vat_cents,
            summary.gross_cents, summary.commission_cents, summary.owed_to_platform_cents,
        )  # fmt: skip
    # Figures worked out by hand from the commands, not by the billing code:
    c1, c2, ent, c3 = sealed.accounts
    isp = sealed.world.isp.isp_id
    with _db(sealed.dsn) as db:
        gross = dict(db.execute(
            "SELECT account_id, gross_cents FROM invoices"
            " WHERE period = %s AND account_id = ANY(%s)",
            (MARCH, sealed.accounts),
        ).fetchall())  # fmt: skip
        enterprise = db.execute(
            "SELECT gross_cents_by_user, company_name FROM invoices WHERE invoice_id = %s",
            (f"{isp}.{MARCH}.{ent}",),
        ).fetchone()
    assert gross == {c1: 499 + 266 - 200, c2: 1200, ent: 1500 + 750, c3: 650}
    assert enterprise == ({"emp-1": 1500, "emp-2": 750}, "ACME SA")


def test_a_late_purchase_lands_in_the_next_period_and_sealed_invoices_never_change(
    sealed: Sealed,
) -> None:
    with _db(sealed.dsn) as db:
        late = db.execute(
            "SELECT decision, billing_period, late_for_period FROM purchases"
            " WHERE purchase_id = %s AND account_id = %s",
            (sealed.late_purchase_id, sealed.accounts[0]),
        ).fetchone()
        after = db.execute(
            "SELECT invoice_id, gross_cents, seal FROM invoices WHERE isp_id = ANY(%s)"
            " ORDER BY invoice_id",
            ([sealed.world.isp.isp_id, sealed.isp2.isp_id],),
        ).fetchall()
        assert late == ("authorized", APRIL, MARCH)
        assert after == sealed.invoices_before_late
        with pytest.raises(psycopg.errors.RaiseException, match="sealed"):
            db.execute("UPDATE invoices SET gross_cents = 0 WHERE isp_id = %s",
                       (sealed.world.isp.isp_id,))  # fmt: skip


def test_a_close_requested_twice_changes_nothing(sealed: Sealed) -> None:
    isp = sealed.world.isp.isp_id
    again = ledger_cli("close-period", "--isp", isp, "--period", MARCH)
    assert again.returncode == 0 and "already sealed" in again.stdout, again.stdout
    # The same through the stream: every partition refuses it, as a fact.
    assert sealed.stack.kafka is not None
    partitions = sealed.stack.topic_partitions or 4
    command_id = f"close-again-{sealed.world.run}"
    again_later = close_commands(isp, MARCH, partitions, command_id, T0 + timedelta(days=400))
    produce(sealed.stack.kafka.bootstrap_servers, partitions, [], again_later)
    refused = (
        "SELECT count(*) FROM account_facts WHERE type = 'command.rejected.v1'"
        " AND fact->>'command_id' = %s AND fact->>'reason' = 'period_already_closed'"
    )
    wait_for(lambda: _count(sealed.dsn, refused, command_id) == partitions, 120,
             "the second close refused on every partition")  # fmt: skip
    with _db(sealed.dsn) as db:
        after = db.execute(
            "SELECT invoice_id, gross_cents, seal FROM invoices WHERE isp_id = ANY(%s)"
            " ORDER BY invoice_id",
            ([isp, sealed.isp2.isp_id],),
        ).fetchall()
    assert after == sealed.invoices_before_late


def _login(sealed: Sealed, creds: IspCredentials) -> psycopg.Connection[Any]:
    assert sealed.stack.postgres is not None
    return psycopg.connect(
        host="127.0.0.1", port=sealed.stack.postgres.port, dbname="ledger",
        user=creds.sql_login, password=creds.sql_password, autocommit=True,
    )  # fmt: skip


@pytest.fixture(scope="module")
def credentials(sealed: Sealed) -> dict[str, IspCredentials]:
    with psycopg.connect(sealed.dsn) as db:
        return {isp: grant(db, isp) for isp in (sealed.world.isp.isp_id, sealed.isp2.isp_id)}


def test_an_isp_login_reads_its_own_rows_only(
    sealed: Sealed, credentials: dict[str, IspCredentials]
) -> None:
    mine, theirs = sealed.world.isp.isp_id, sealed.isp2.isp_id
    with _login(sealed, credentials[mine]) as db:
        isps = {r[0] for r in db.execute("SELECT isp_id FROM ledger.isp_invoices").fetchall()}
        lines = {r[0] for r in db.execute("SELECT isp_id FROM ledger.isp_invoice_lines").fetchall()}
        periods = db.execute("SELECT isp_id, period FROM ledger.isp_periods").fetchall()
        assert isps == {mine} and lines == {mine}
        assert periods == [(mine, MARCH)]
        for table in ("invoices", "invoice_lines", "purchases", "journal", "isp_api_keys"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                db.execute(f"SELECT * FROM ledger.{table} LIMIT 1")
    with _login(sealed, credentials[theirs]) as db:
        isps = {r[0] for r in db.execute("SELECT isp_id FROM ledger.isp_invoices").fetchall()}
        assert isps == {theirs}


class IspApi(LedgerProcess):
    def __init__(self, log_dir: Path) -> None:
        super().__init__("isp-api", log_dir)
        self.port = free_port()

    def arguments(self) -> list[str]:
        return ["isp-api", "--port", str(self.port)]

    def get(self, path: str, key: str | None) -> tuple[int, bytes, str]:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, response.read(), response.headers.get("Content-Type", "")
        except urllib.error.HTTPError as error:
            return error.code, error.read(), error.headers.get("Content-Type", "")


@pytest.fixture(scope="module")
def isp_api(sealed: Sealed, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IspApi]:
    api = IspApi(tmp_path_factory.mktemp("isp-api"))
    api.start()
    try:
        wait_for(lambda: _answers(api), 60, "the ISP API")
        yield api
    finally:
        api.stop()


def _answers(api: IspApi) -> bool:
    try:
        return api.get("/v1/isps/openapi.json", None)[0] == 200
    except OSError:
        return False


def test_the_isp_api_authenticates_isolates_and_its_csv_equals_the_database(
    sealed: Sealed, credentials: dict[str, IspCredentials], isp_api: IspApi
) -> None:
    mine, theirs = sealed.world.isp.isp_id, sealed.isp2.isp_id
    key = credentials[mine].api_key
    status, body, _ = isp_api.get(f"/v1/isps/{mine}/periods", key)
    assert status == 200 and [p["period"] for p in json.loads(body)["periods"]] == [MARCH]
    status, body, _ = isp_api.get(f"/v1/isps/{mine}/invoices?period={MARCH}", key)
    listed = json.loads(body)["invoices"]
    assert status == 200 and {i["account_id"] for i in listed} == set(sealed.accounts[:3])
    # No key, a wrong key: 401. Another ISP's path or invoice: 404, the body naming nothing.
    assert isp_api.get(f"/v1/isps/{mine}/periods", None)[0] == 401
    assert isp_api.get(f"/v1/isps/{mine}/periods", "isp_not-a-key")[0] == 401
    other_invoice = f"{theirs}.{MARCH}.{sealed.accounts[3]}"
    for path in (f"/v1/isps/{theirs}/periods", f"/v1/isps/{theirs}/invoices?period={MARCH}",
                 f"/v1/isps/{mine}/invoices/{other_invoice}",
                 f"/v1/isps/{mine}/invoices/{other_invoice}.csv"):  # fmt: skip
        status, body, _ = isp_api.get(path, key)
        assert status == 404 and theirs.encode() not in body and b"c3" not in body, path
    assert isp_api.get(f"/v1/isps/{mine}/invoices?period=2006-13", key)[0] == 400
    # The CSV of an invoice is its lines in the database, cent for cent.
    invoice_id = f"{mine}.{MARCH}.{sealed.accounts[2]}"
    status, body, content_type = isp_api.get(f"/v1/isps/{mine}/invoices/{invoice_id}.csv", key)
    assert status == 200 and content_type.startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    with _db(sealed.dsn) as db:
        lines = db.execute(
            "SELECT line_no, user_id, net_cents, vat_cents, gross_cents, event_id"
            " FROM invoice_lines WHERE invoice_id = %s ORDER BY line_no",
            (invoice_id,),
        ).fetchall()
    assert [(int(r["line_no"]), r["user_id"], int(r["net_cents"]), int(r["vat_cents"]),
             int(r["gross_cents"])) for r in rows] == [line[:5] for line in lines]  # fmt: skip
    status, body, _ = isp_api.get(f"/v1/isps/{mine}/invoices/{invoice_id}", key)
    assert status == 200 and len(json.loads(body)["invoice_lines"]) == len(lines) == 2


def test_the_books_reconcile_and_replay_equals_live(sealed: Sealed) -> None:
    # The workers fold the balances as they decide (ledger/core/batch.py), and other tests of the
    # session write facts of their own straight to ledger.events (test_projection_kills), which no
    # worker decided: `ledger reconcile` compares the stream with the books on a stack where only
    # the workers write facts. Here: the books, then the stream for this world's parties.
    done = ledger_cli("reconcile", "--skip-stream", "--wait-seconds", "180", timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the books reconcile" in done.stdout
    _stream_balances_equal_for(sealed)
    replayed = ledger_cli("replay", timeout=600)
    assert replayed.returncode == 0, replayed.stdout + replayed.stderr
    assert "replay equals live" in replayed.stdout


def _stream_balances_equal_for(sealed: Sealed) -> None:
    assert sealed.stack.kafka is not None
    bootstrap = sealed.stack.kafka.bootstrap_servers
    partitions = sealed.stack.topic_partitions or 4
    isps = {sealed.world.isp.isp_id, sealed.isp2.isp_id}
    publishers = {fact.publisher_id for fact in sealed.facts.values()
                  if isinstance(fact, PurchaseAuthorized | PurchaseRefunded)}  # fmt: skip

    def equal() -> bool:
        parties: tuple[tuple[Party, set[str]], ...] = (("publisher", publishers), ("isp", isps))
        with psycopg.connect(sealed.dsn, options="-c search_path=ledger") as db:
            for party, ids in parties:
                stream = read_balances(bootstrap, ACCOUNTS_TABLE, party, partitions)
                ours = {k: stream[k] for k in ids if k in stream}
                check = stream_balances_equal(db, party, ours)
                # "<party> <id>: faust ... PostgreSQL ...", for this world's ids only
                if any(m.split(":")[0].split()[1] in ids for m in check.mismatches):
                    return False
        return True

    wait_for(equal, 120, "the workers' balances of this world's parties to equal PostgreSQL's")


def test_reconcile_names_a_mismatch(sealed: Sealed) -> None:
    """A posting set that does not sum to zero, slipped into the database by hand, is found."""
    bad = f"forged-{sealed.world.run}"
    with _db(sealed.dsn) as db:
        db.execute(
            "INSERT INTO journal VALUES (%s, 0, 'account', %s, 100, %s, %s, %s, now())",
            (bad, sealed.accounts[0], sealed.accounts[0], sealed.world.isp.isp_id, "2099-01"),
        )
    try:
        done = ledger_cli("reconcile", "--wait-seconds", "0", "--skip-stream")
        assert done.returncode == 4
        assert f"event {bad}: postings sum to 100" in done.stdout
    finally:
        with _db(sealed.dsn) as db:
            db.execute("DELETE FROM journal WHERE event_id = %s", (bad,))


def _dlq_size(bootstrap: str) -> int:
    from kafka import KafkaConsumer, TopicPartition

    from ledger.kafka.settings import consumer_config

    consumer = KafkaConsumer(**consumer_config(bootstrap, "ledger-tests", group_id=None))
    try:
        tps = [TopicPartition(topics.DLQ, p) for p in consumer.partitions_for_topic(topics.DLQ)]
        ends, begins = consumer.end_offsets(tps), consumer.beginning_offsets(tps)
        return sum(ends[tp] - begins[tp] for tp in tps)
    finally:
        consumer.close()


def test_status_shows_lag_periods_dead_letters_and_the_last_decision(sealed: Sealed) -> None:
    assert sealed.stack.kafka is not None
    bootstrap = sealed.stack.kafka.bootstrap_servers
    isp = sealed.world.isp.isp_id

    seen: list[dict[str, Any]] = []

    def caught_up() -> bool:
        done = ledger_cli("status", "--json", timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr
        seen.append(json.loads(done.stdout))
        return all(lag["lag"] == 0 for lag in seen[-1]["lags"] if lag["reader"] == "projections")

    wait_for(caught_up, 120, "the projection writer's lag at zero in `ledger status`")
    found = seen[-1]
    ends = end_offsets(bootstrap, topics.EVENTS)
    projections = {lag["partition"]: lag for lag in found["lags"] if lag["reader"] == "projections"}
    assert {p: lag["end_offset"] for p, lag in projections.items()} == ends
    assert {p: lag["position"] for p, lag in projections.items()} == ends
    assert sorted(
        lag["partition"] for lag in found["lags"] if lag["reader"] == "workers"
    ) == sorted(ends)
    assert found["dead_letters"] == _dlq_size(bootstrap)
    assert found["last_decision"] is not None
    periods = {(p["isp_id"], p["period"]): p for p in found["periods"]}
    march, april = periods[(isp, MARCH)], periods[(isp, APRIL)]
    assert march["state"] == "closed"
    assert march["invoices"] == _count(
        sealed.dsn, "SELECT count(*) FROM invoices WHERE isp_id = %s AND period = %s", isp, MARCH
    )
    assert april["state"] == "open" and april["invoices"] is None
    assert april["purchases"] == _count(
        sealed.dsn,
        "SELECT count(*) FROM purchases WHERE isp_id = %s AND billing_period = %s"
        " AND decision = 'authorized'",
        isp,
        APRIL,
    )
    screen = ledger_cli("status", timeout=60)
    assert screen.returncode == 0, screen.stderr
    assert f"{isp:<16} {MARCH}  closed" in screen.stdout
    assert "total lag: workers" in screen.stdout


def test_the_isp_api_fuzzed_from_its_openapi_document_answers_no_5xx_and_leaks_nothing(
    sealed: Sealed, credentials: dict[str, IspCredentials], isp_api: IspApi
) -> None:
    from tests.fuzz import fuzz

    mine, theirs = sealed.world.isp.isp_id, sealed.isp2.isp_id
    key = credentials[mine].api_key
    invoices_before = _count(sealed.dsn, "SELECT count(*) FROM invoices")

    def before(case: Any) -> str:
        if case.path_parameters and "isp_id" in case.path_parameters:
            case.path_parameters["isp_id"] = mine  # past the 404 of others' paths
        return key

    def after(case: Any, response: Any) -> None:
        assert theirs.encode() not in response.content, f"{case.path} leaked {theirs}"

    seen = fuzz(f"http://127.0.0.1:{isp_api.port}", "/v1/isps/openapi.json", 15, before, after)
    print(f"ISP API fuzzed; answers by status: {dict(sorted(seen.items()))}")
    assert 200 in seen, seen
    assert _count(sealed.dsn, "SELECT count(*) FROM invoices") == invoices_before
