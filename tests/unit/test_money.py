"""Money: the VAT split, the postings of a purchase and of its refunds, exact to the cent."""

from __future__ import annotations

from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ledger.core import money

amounts = st.integers(min_value=0, max_value=10_000_000)
rates = st.sampled_from([0, 210, 550, 1960, 2000]) | st.integers(min_value=0, max_value=10_000)
commissions = st.integers(min_value=0, max_value=3_000)
shares = st.integers(min_value=0, max_value=7_000)


def _net_by_fraction(gross: int, rate_bp: int) -> int:
    """An independent statement of the rule: round half up of gross / (1 + rate)."""
    exact = Fraction(gross * 10_000, 10_000 + rate_bp)
    floor = exact.numerator // exact.denominator
    return floor + 1 if exact - floor >= Fraction(1, 2) else floor


@pytest.mark.parametrize(
    ("gross", "rate", "net", "vat"),
    [
        (266, 1960, 222, 44),  # the seed's average basket at 2006's standard rate
        (1500, 1960, 1254, 246),
        (15, 1960, 13, 2),
        (1000, 2000, 833, 167),
        (1000, 210, 979, 21),
        (0, 1960, 0, 0),
        (1196, 1960, 1000, 196),  # exact: no rounding
    ],
)
def test_split_vat_examples(gross: int, rate: int, net: int, vat: int) -> None:
    assert money.split_vat(gross, rate) == (net, vat)


@given(amounts, rates)
def test_split_vat_is_half_up_and_exact(gross: int, rate: int) -> None:
    net, vat = money.split_vat(gross, rate)
    assert net == _net_by_fraction(gross, rate)
    assert net + vat == gross
    assert vat >= 0


@pytest.mark.parametrize(("gross", "rate"), [(-1, 1960), (100, -1), (100, 10_001)])
def test_split_vat_refuses_nonsense(gross: int, rate: int) -> None:
    with pytest.raises(ValueError, match="cannot split"):
        money.split_vat(gross, rate)


@given(amounts.filter(lambda a: a > 0), rates, commissions, shares)
def test_purchase_postings_sum_to_zero_and_go_where_they_should(
    gross: int, rate: int, commission_bp: int, share_bp: int
) -> None:
    split = money.split_amount(gross, rate, commission_bp, share_bp)
    postings = money.purchase_postings(split, "acct", "isp", "pub")
    assert sum(p.amount_cents for p in postings) == 0
    by_party = {p.party: p.amount_cents for p in postings}
    assert by_party["account"] == gross
    assert -by_party["tax"] == split.vat_cents
    assert -by_party["isp"] == split.net_cents * commission_bp // 10_000
    assert -by_party["publisher"] == split.net_cents * share_bp // 10_000
    assert -by_party["platform"] >= 0


@given(
    st.integers(min_value=1, max_value=100_000),
    rates,
    commissions,
    shares,
    st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=8),
)
def test_refunds_in_parts_add_up_to_the_purchase_exactly(
    gross: int, rate: int, commission_bp: int, share_bp: int, cuts: list[int]
) -> None:
    # Cut the purchase into parts; refund them one after the other.
    total = sum(cuts)
    parts = [gross * c // total for c in cuts]
    parts[-1] += gross - sum(parts)
    parts = [p for p in parts if p > 0]
    before = 0
    summed: dict[str, int] = {}
    for part in parts:
        split = money.refund_split(before, part, rate, commission_bp, share_bp)
        postings = money.refund_postings(split, "acct", "isp", "pub")
        assert sum(p.amount_cents for p in postings) == 0
        for posting in postings:
            summed[posting.party] = summed.get(posting.party, 0) + posting.amount_cents
        before += part
    purchase = money.purchase_postings(
        money.split_amount(gross, rate, commission_bp, share_bp), "acct", "isp", "pub"
    )
    assert summed == {p.party: -p.amount_cents for p in purchase}


def test_unbalanced_postings_stop_the_worker() -> None:
    from schemas.facts import Posting

    with pytest.raises(AssertionError, match="sum to 1"):
        money.assert_balanced((Posting("account", "a", 1),))


def test_money_invariants_hold_under_python_optimize() -> None:
    """`python -O` strips bare asserts; the core's invariants (ledger.core.invariant) stay."""
    import subprocess
    import sys

    probe = (
        "from ledger.core import money\n"
        "from ledger.core.invariant import InvariantBroken\n"
        "from schemas.facts import Posting\n"
        "try:\n"
        "    money.assert_balanced((Posting('account', 'a', 1),))\n"
        "except InvariantBroken as broken:\n"
        "    print('stopped:', broken)\n"
    )
    done = subprocess.run(
        [sys.executable, "-O", "-c", probe], capture_output=True, text=True, check=True
    )
    assert done.stdout.startswith("stopped: postings sum to 1"), done
