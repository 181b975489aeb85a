"""Values from outside checked before they reach PostgreSQL or Kafka (issue 12, part 2): the
command line's argument types, the APIs' whole-string patterns, and which decision of a purchase
id the API answers with."""

from __future__ import annotations

import argparse

import msgspec
import pytest

from ledger.api.bodies import AccountBody
from ledger.api.purchases import Purchase, replaces
from ledger.cli import argtypes as cli_types
from ledger.cli import main
from ledger.core.runner import LocalAuthorizer
from ledger.patterns import ID, INVOICE_ID, PERIOD, WHOLE_NUMBER
from tests import builders as b
from tests.builders import REFERENCE


@pytest.mark.parametrize(
    ("argv", "named"),
    [
        (["close-period", "--isp", "a\x00b", "--period", "2006-03"], "--isp"),
        (["close-period", "--isp", "orange", "--period", "2006-03\n"], "--period"),
        (["isp-access", "--isp", "x" * 65], "--isp"),
        (["balances", "account", "\u202eacct"], "id"),
        (["worker", "--name", "w1/../../etc"], "--name"),
        (["project", "--metrics-port", "0"], "--metrics-port"),
        (["project", "--nice", "20"], "--nice"),
        (["reconcile", "--wait-seconds", "-1"], "--wait-seconds"),
        (["close-period", "--isp", "o", "--period", "2006-03", "--wait-seconds", "inf"], "--wait"),
        (["replay", "--schema", "ledger"], "--schema"),
    ],
)
def test_a_bad_argument_is_a_usage_error_that_names_it(
    argv: list[str], named: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {named}" in err and "Traceback" not in err, err


def test_argument_types_take_what_the_ledger_takes() -> None:
    assert cli_types.identifier("orange") == "orange"
    assert cli_types.identifier("acct.42:x@y-z") == "acct.42:x@y-z"
    assert cli_types.period("2006-12") == "2006-12"
    assert cli_types.port("18080") == 18080
    assert cli_types.seconds("0") == 0.0
    assert cli_types.niceness("10") == 10
    assert cli_types.scratch_schema("ledger_replay") == "ledger_replay"
    for parse, bad in ((cli_types.port, "65536"), (cli_types.port, "\u0661\u0662"),
                       (cli_types.seconds, "nan"), (cli_types.period, "2006-13"),
                       (cli_types.identifier, ""), (cli_types.niceness, "-5")):  # fmt: skip
        with pytest.raises(argparse.ArgumentTypeError):
            parse(bad)


def test_patterns_match_whole_strings_only() -> None:
    for pattern, good in ((ID, "p-1"), (INVOICE_ID, "orange.2006-03.a1"), (PERIOD, "2006-03"),
                          (WHOLE_NUMBER, "12")):  # fmt: skip
        assert pattern.fullmatch(good)
        for bad in (f"{good}\n", f"{good}\x00", f" {good}", ""):
            assert not pattern.fullmatch(bad), (pattern.pattern, bad)
    assert not ID.fullmatch("x" * 65) and not WHOLE_NUMBER.fullmatch("\u0661\u0662")


def test_the_decision_that_stands_for_a_purchase_id() -> None:
    ledger = LocalAuthorizer(REFERENCE)
    (unknown,) = ledger.handle(b.purchase("acct", 266, purchase_id="p1"), origin=1)
    assert unknown.reason == "account_unknown"  # type: ignore[union-attr]
    ledger.handle(b.open_account("acct"))
    (authorized,) = ledger.handle(b.purchase("acct", 266, purchase_id="p1"), origin=2)
    (conflict,) = ledger.handle(b.purchase("acct", 267, purchase_id="p1"), origin=3)
    unknown_, authorized_, conflict_ = (
        Purchase.of_fact(f)  # type: ignore[arg-type]
        for f in (unknown, authorized, conflict)
    )
    assert replaces(unknown_, None)
    assert replaces(authorized_, unknown_)  # unremembered: gives way
    assert not replaces(conflict_, authorized_)  # another body's answer
    assert not replaces(conflict_, None)
    view = authorized_.view(refunded_cents=100)
    assert (view["status"], view["refunded_cents"], view["amount_cents"]) == (
        "authorized",
        100,
        266,
    )
    rejected = Purchase.of_fact(unknown).view()  # type: ignore[arg-type]
    assert (rejected["status"], rejected["reason"]) == ("rejected", "account_unknown")


def test_a_body_id_is_matched_whole() -> None:
    # A Python `$` matches before a final newline: the patterns say `$(?!\n)` (schemas/types.py).
    with pytest.raises(msgspec.ValidationError, match="account_id"):
        msgspec.json.decode(b'{"account_id": "a1\\n", "isp_id": "i", "kind": "consumer"}',
                            type=AccountBody)  # fmt: skip
    fine = msgspec.json.decode(b'{"account_id": "a1", "isp_id": "i", "kind": "consumer",'
                               b' "company_name": "Probe\\nSARL"}', type=AccountBody)  # fmt: skip
    assert fine.company_name == "Probe\nSARL"  # a text may hold a line break
