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


# --- VAT by rate (issue 12, part 3) ----------------------------------------------------------

FEBRUARY_2014 = b.T0.replace(year=2014, month=2, day=3)  # standard 20 %, online press 2.1 %


def _february(extra: list[object] | None = None) -> list[MoneyFact]:
    ledger = LocalAuthorizer(REFERENCE)
    day = FEBRUARY_2014
    commands = [
        b.open_account("home", when=day),
        b.purchase("home", 1_200, at(1, base=day), purchase_id="film"),
        b.purchase(
            "home", 1_021, at(2, base=day), purchase_id="paper", publisher_id="lemonde-archives"
        ),
        b.refund("home", "film", 300, at(3, base=day), refund_id="film-r"),
        b.refund("home", "paper", 1_021, at(4, base=day), refund_id="paper-r"),
        *(extra or []),
    ]
    return _money([fact for command in commands for fact in ledger.handle(command)])


def test_a_refund_line_carries_the_vat_rate_of_the_purchase_it_reverses() -> None:
    """Issue 12: a refund line said `vat_rate_bp 0` while it carried VAT."""
    (invoice,) = billing.build_invoices("orange", "2014-02", _february())
    rates = {(line.kind, line.purchase_id): line.vat_rate_bp for line in invoice.lines}
    assert rates == {
        ("purchase", "film"): 2_000, ("purchase", "paper"): 210,
        ("refund", "film"): 2_000, ("refund", "paper"): 210,
    }  # fmt: skip
    refund = next(line for line in invoice.lines if line.refund_id == "film-r")
    assert (refund.net_cents, refund.vat_cents, refund.gross_cents) == (-250, -50, -300)


def test_an_invoice_and_the_period_show_their_vat_totals_per_rate() -> None:
    # Another ISP's account and purchase are not in orange's period.
    other = [b.open_account("other", "alice", when=FEBRUARY_2014),
             b.purchase("other", 500, at(5, base=FEBRUARY_2014))]  # fmt: skip
    facts = _february(other)
    (invoice,) = billing.build_invoices("orange", "2014-02", facts)
    assert invoice.vat_by_rate == (
        billing.VatTotal(vat_rate_bp=210, net_cents=0, vat_cents=0, gross_cents=0),
        billing.VatTotal(vat_rate_bp=2_000, net_cents=750, vat_cents=150, gross_cents=900),
    )
    assert sum(t.vat_cents for t in invoice.vat_by_rate) == invoice.vat_cents
    assert sum(t.net_cents for t in invoice.vat_by_rate) == invoice.net_cents
    summary = billing.summarize("orange", "2014-02", facts)
    assert summary.vat_by_rate == invoice.vat_by_rate


def test_a_refund_of_a_purchase_billed_earlier_takes_the_rate_it_is_given() -> None:
    """The purchase is in an earlier, sealed period: the caller passes its rate (the projection
    writer reads it from the money facts of that period)."""
    ledger = LocalAuthorizer(REFERENCE)
    day = FEBRUARY_2014
    facts = _money([
        f for c in (b.open_account("home", when=day),
                    b.purchase("home", 1_021, at(1, base=day), purchase_id="paper",
                               publisher_id="lemonde-archives"),
                    b.refund("home", "paper", 1_021, at(days=30, base=day), refund_id="late-r"))
        for f in ledger.handle(c)
    ])  # fmt: skip
    purchase, refund = facts
    assert isinstance(refund, PurchaseRefunded) and refund.billing_period == "2014-03"
    with pytest.raises(billing.PurchaseNotGiven, match="late-r"):
        billing.build_invoices("orange", "2014-03", [refund])
    rates = billing.purchase_vat_rates([purchase])
    (invoice,) = billing.build_invoices("orange", "2014-03", [refund], rates)
    assert [line.vat_rate_bp for line in invoice.lines] == [210]
    assert invoice.vat_by_rate == (billing.VatTotal(210, -1_000, -21, -1_021),)
