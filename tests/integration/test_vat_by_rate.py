"""VAT by rate on the real stack, through the ISP API (issue 12, part 3): a refund line carries
the VAT rate of the purchase it reverses (it said 0), and an invoice and an ISP's period show their
totals per rate. The month of February 2014 has three rates: 20 % (standard since January), 2.1 %
(online press since February 1st) and, on the refund of a purchase of December 2013, 19.6 %: the
issue's own refund of 3.00 EUR, net -2.51, VAT -0.49."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from ledger.stack.state import StackState
from projections.access import grant
from tests import builders as b
from tests.harness import Projector, Worker, produce, wait_for
from tests.integration.test_projections import IspApi, ledger_cli
from tests.world import World

pytestmark = pytest.mark.integration
FEBRUARY = "2014-02"
DECEMBER_10 = datetime(2013, 12, 10, 20, tzinfo=UTC)
FEBRUARY_3 = datetime(2014, 2, 3, 20, tzinfo=UTC)


def _vat(rate: int, net: int, vat: int, gross: int) -> dict[str, int]:
    return {"vat_rate_bp": rate, "net_cents": net, "vat_cents": vat, "gross_cents": gross}


# Worked out by hand from the rates of the day, not by the billing code.
EXPECTED_BY_RATE = [
    _vat(210, 1_000, 21, 1_021),  # online press, 10.21 EUR
    _vat(1_960, -251, -49, -300),  # the refund of December's film: 3.00 EUR at 19.6 %
    _vat(2_000, 1_000 - 250, 200 - 50, 1_200 - 300),  # a film, 12.00 EUR, 3.00 refunded
]


@pytest.fixture(scope="module")
def sealed_february(
    stack: StackState, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[World, str, str]]:
    """February 2014 of one account, sealed; the ISP's API key."""
    assert stack.kafka is not None and stack.postgres is not None
    bootstrap, dsn = stack.kafka.bootstrap_servers, stack.postgres.dsn
    tmp = tmp_path_factory.mktemp("vat-by-rate")
    world = World()
    isp, account = world.isp.isp_id, world.account("home")
    vod, press = world.vod.publisher_id, world.press.publisher_id
    december = b.purchase(account, 1_000, DECEMBER_10, publisher_id=vod)
    film = b.purchase(account, 1_200, FEBRUARY_3, publisher_id=vod)
    commands = [
        b.open_account(account, isp, when=DECEMBER_10.replace(day=1)),
        december, film,
        b.purchase(account, 1_021, FEBRUARY_3.replace(hour=21), publisher_id=press),
        b.refund(account, december.purchase_id, 300, FEBRUARY_3.replace(day=4)),
        b.refund(account, film.purchase_id, 300, FEBRUARY_3.replace(day=5)),
    ]  # fmt: skip
    processes = [Worker("vat-worker", tmp / "worker").start(), Projector("vat-writer", tmp).start()]
    try:
        produce(bootstrap, stack.topic_partitions or 4, world.records, commands)

        def decided() -> bool:
            with psycopg.connect(dsn, options="-c search_path=ledger") as db:
                row = db.execute(
                    "SELECT (SELECT count(*) FROM purchases WHERE account_id = %s)"
                    " + (SELECT count(*) FROM refunds WHERE account_id = %s)",
                    (account, account),
                ).fetchone()
            return row is not None and row[0] >= 5

        wait_for(decided, 180, "the month's facts in PostgreSQL")
        done = ledger_cli("close-period", "--isp", isp, "--period", FEBRUARY)
        assert done.returncode == 0 and "is sealed" in done.stdout, done.stdout + done.stderr
        with psycopg.connect(dsn) as db:
            key = grant(db, isp).api_key
        yield world, account, key
    finally:
        for process in processes:
            process.stop()


@pytest.fixture(scope="module")
def isp_api(sealed_february: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[IspApi]:
    api = IspApi(tmp_path_factory.mktemp("vat-isp-api"))
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


def test_refund_lines_carry_their_purchase_rate_and_totals_are_per_rate(
    sealed_february: tuple[World, str, str], isp_api: IspApi
) -> None:
    world, account, key = sealed_february
    isp = world.isp.isp_id
    invoice_id = f"{isp}.{FEBRUARY}.{account}"
    status, body, _ = isp_api.get(f"/v1/isps/{isp}/invoices/{invoice_id}", key)
    assert status == 200, body
    invoice = json.loads(body)
    lines = invoice["invoice_lines"]
    assert sorted((line["kind"], line["gross_cents"], line["vat_rate_bp"]) for line in lines) == [
        ("purchase", 1_021, 210), ("purchase", 1_200, 2_000),
        ("refund", -300, 1_960),  # December's film: the rate it was bought at
        ("refund", -300, 2_000),
    ]  # fmt: skip
    refunds = [line for line in invoice["invoice_lines"] if line["kind"] == "refund"]
    assert sorted((r["vat_rate_bp"], r["net_cents"], r["vat_cents"]) for r in refunds) == [
        (1_960, -251, -49), (2_000, -250, -50),
    ]  # fmt: skip
    assert invoice["vat_by_rate"] == EXPECTED_BY_RATE
    assert (invoice["net_cents"], invoice["vat_cents"], invoice["gross_cents"]) == (
        1_499,
        122,
        1_621,
    )
    status, body, _ = isp_api.get(f"/v1/isps/{isp}/invoices?period={FEBRUARY}", key)
    assert status == 200 and json.loads(body)["invoices"][0]["vat_by_rate"] == EXPECTED_BY_RATE
    status, body, _ = isp_api.get(f"/v1/isps/{isp}/periods", key)
    (period,) = [p for p in json.loads(body)["periods"] if p["period"] == FEBRUARY]
    assert period["vat_by_rate"] == EXPECTED_BY_RATE
    # The CSV states the same rates, line by line.
    status, body, _ = isp_api.get(f"/v1/isps/{isp}/invoices/{invoice_id}.csv", key)
    rows = list(csv.DictReader(io.StringIO(body.decode())))
    assert sorted((r["kind"], int(r["vat_rate_bp"])) for r in rows) == [
        ("purchase", 210), ("purchase", 2_000), ("refund", 1_960), ("refund", 2_000),
    ]  # fmt: skip


def test_reconcile_finds_the_vat_by_rate_equal_to_the_lines(sealed_february: Any) -> None:
    done = ledger_cli("reconcile", "--wait-seconds", "0", "--skip-stream", "--skip-facts")
    assert "VAT by rate" not in done.stdout, done.stdout
