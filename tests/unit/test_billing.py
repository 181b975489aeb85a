"""Billing: invoices, the ISP's summary and publisher statements of a closed period."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.core import billing
from ledger.core.runner import LocalAuthorizer
from schemas.facts import MoneyFact, PurchaseAuthorized, PurchaseRefunded
from tests import builders as b
from tests.builders import REFERENCE, at


def _money(facts: list[object]) -> list[MoneyFact]:
    return [f for f in facts if isinstance(f, PurchaseAuthorized | PurchaseRefunded)]


@pytest.fixture
def march() -> list[MoneyFact]:
    ledger = LocalAuthorizer(REFERENCE)
    commands = [
        b.open_account("home"),
        b.open_account("acme", kind="enterprise"),
        b.open_account("other", isp_id="alice"),
        b.authorise("acme", "alice"),
        b.authorise("acme", "bob"),
        b.purchase("home", 266, at(1), purchase_id="h1"),
        b.purchase("home", 999, at(2), purchase_id="h2", publisher_id="lemonde-archives"),
        b.refund("home", "h1", 266, at(3), refund_id="hr1"),
        b.purchase("acme", 1_500, at(4), purchase_id="a1", user_id="alice"),
        b.purchase("acme", 500, at(5), purchase_id="a2", user_id="bob"),
        b.purchase("acme", 250, at(6), purchase_id="a3", user_id="alice"),
        b.purchase("other", 400, at(7), purchase_id="o1"),
        b.purchase("home", 300, at(days=31), purchase_id="april"),
    ]
    return _money([fact for command in commands for fact in ledger.handle(command)])


def test_one_invoice_per_account_with_refund_lines_negative(march: list[MoneyFact]) -> None:
    invoices = {i.account_id: i for i in billing.build_invoices("orange", "2006-03", march)}
    assert sorted(invoices) == ["acme", "home"]
    home = invoices["home"]
    assert [(line.kind, line.gross_cents) for line in home.lines] == [
        ("purchase", 266),
        ("purchase", 999),
        ("refund", -266),
    ]
    assert home.gross_cents == 999
    assert home.net_cents + home.vat_cents == home.gross_cents
    assert home.invoice_id == "orange.2006-03.home"
    assert home.gross_cents_by_user == {}


def test_company_invoice_shows_each_employee(march: list[MoneyFact]) -> None:
    (acme,) = [
        i for i in billing.build_invoices("orange", "2006-03", march) if i.account_id == "acme"
    ]
    assert acme.account_kind == "enterprise"
    assert acme.gross_cents_by_user == {"alice": 1_750, "bob": 500}
    assert acme.gross_cents == 2_250


def test_summary_and_statements_reconcile(march: list[MoneyFact]) -> None:
    summary = billing.summarize("orange", "2006-03", march)
    invoices = billing.build_invoices("orange", "2006-03", march)
    statements = billing.build_statements("orange", "2006-03", march)
    assert summary.invoices == 2
    assert summary.gross_cents == sum(i.gross_cents for i in invoices) == 999 + 2_250
    assert summary.owed_to_platform_cents == summary.gross_cents - summary.commission_cents
    assert {s.publisher_id for s in statements} == {"canalplay", "lemonde-archives"}
    canalplay = next(s for s in statements if s.publisher_id == "canalplay")
    assert (canalplay.purchases, canalplay.refunds) == (4, 1)
    billed = [f for f in march if f.isp_id == "orange" and f.billing_period == "2006-03"]
    platform = -sum(p.amount_cents for f in billed for p in f.postings if p.party == "platform")
    owed = sum(s.owed_cents for s in statements)
    assert owed + summary.commission_cents + platform + summary.vat_cents == summary.gross_cents


def test_seal_changes_with_any_line(march: list[MoneyFact]) -> None:
    (home, _) = sorted(
        billing.build_invoices("orange", "2006-03", march), key=lambda i: i.account_id != "home"
    )
    again = billing.seal(("orange", "2006-03", "home"), home.lines)
    assert again == home.seal
    tampered = (msgspec.structs.replace(home.lines[0], gross_cents=267), *home.lines[1:])
    assert billing.seal(("orange", "2006-03", "home"), tampered) != home.seal
    assert billing.seal(("orange", "2006-04", "home"), home.lines) != home.seal


def test_other_isps_and_periods_are_left_out(march: list[MoneyFact]) -> None:
    assert [i.account_id for i in billing.build_invoices("alice", "2006-02", march)] == ["other"]
    assert [i.account_id for i in billing.build_invoices("orange", "2006-04", march)] == ["home"]
    assert billing.build_invoices("orange", "2006-05", march) == []


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(["h", "k"]), st.integers(15, 1_500), st.integers(0, 400)),
        max_size=40,
    )
)
def test_invoice_totals_reconcile_for_any_month(buys: list[tuple[str, int, int]]) -> None:
    ledger = LocalAuthorizer(REFERENCE)
    facts: list[object] = []
    for account in ("h", "k"):
        facts += ledger.handle(b.set_limits(account, at(0)))
        facts += ledger.handle(b.open_account(account))
        facts += ledger.handle(
            b.set_limits(
                account,
                at(0),
                daily_cap_cents=10**6,
                monthly_cap_cents=10**7,
                velocity_max_purchases=1000,
            )
        )
    for index, (account, amount, refund) in enumerate(buys):
        pid = f"p{index}"
        facts += ledger.handle(b.purchase(account, amount, at(index), purchase_id=pid))
        if refund:
            facts += ledger.handle(b.refund(account, pid, min(refund, amount), at(index + 0.5)))
    money = _money(facts)
    summary = billing.summarize("orange", "2006-03", money)
    statements = billing.build_statements("orange", "2006-03", money)
    platform = -sum(p.amount_cents for f in money for p in f.postings if p.party == "platform")
    assert summary.gross_cents == sum(
        f.amount_cents if isinstance(f, PurchaseAuthorized) else -f.amount_cents for f in money
    )
    assert (
        sum(s.owed_cents for s in statements)
        + summary.commission_cents
        + platform
        + summary.vat_cents
        == summary.gross_cents
    )
