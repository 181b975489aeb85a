"""The ISP's billing calendar in Europe/Paris, and VAT rates by date."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ledger.core import calendar
from ledger.core.reference import vat_rate_bp


def _s(text: str) -> int:
    return calendar.epoch_seconds(datetime.fromisoformat(text))


@pytest.mark.parametrize(
    ("moment", "billing_day", "period"),
    [
        ("2006-03-31T21:59:59+00:00", 1, "2006-03"),  # 23:59:59 in Paris (CEST from 26 March)
        ("2006-03-31T22:00:00+00:00", 1, "2006-04"),  # midnight in Paris
        ("2006-01-14T22:59:59+00:00", 15, "2005-12"),  # 14 Jan 23:59 Paris: December's period
        ("2006-01-14T23:00:00+00:00", 15, "2006-01"),  # 15 Jan 00:00 Paris (CET)
        ("2006-12-31T23:00:00+00:00", 1, "2007-01"),
        ("2006-10-29T00:30:00+00:00", 28, "2006-10"),
    ],
)
def test_period_of_follows_paris_midnight(moment: str, billing_day: int, period: str) -> None:
    assert calendar.period_of(_s(moment), billing_day) == period


def test_day_key_is_the_paris_day() -> None:
    assert calendar.day_key(_s("2006-06-30T22:30:00+00:00")) == "2006-07-01"
    assert calendar.day_key(_s("2006-12-31T22:30:00+00:00")) == "2006-12-31"


def test_period_bounds_cover_a_month_in_paris_time() -> None:
    start, end = calendar.period_bounds("2006-03", 1)
    assert start == datetime(2006, 2, 28, 23, tzinfo=UTC)  # CET
    assert end == datetime(2006, 3, 31, 22, tzinfo=UTC)  # CEST
    start, end = calendar.period_bounds("2006-12", 15)
    assert (start.date().isoformat(), end.date().isoformat()) == ("2006-12-14", "2007-01-14")


def test_periods_step_over_years() -> None:
    assert calendar.next_period("2006-12") == "2007-01"
    assert calendar.previous_period("2007-01") == "2006-12"
    assert calendar.next_period("2006-05") == "2006-06"
    with pytest.raises(ValueError, match="YYYY-MM"):
        calendar.parse_period("2006-13")


def test_billing_day_is_bounded() -> None:
    with pytest.raises(ValueError, match="billing day"):
        calendar.period_bounds("2006-01", 29)


def test_timestamps_need_a_timezone() -> None:
    with pytest.raises(ValueError, match="timezone"):
        calendar.epoch_seconds(datetime(2006, 1, 1))


@pytest.mark.parametrize(
    ("category", "moment", "rate"),
    [
        ("standard", "2006-06-01T12:00:00+02:00", 1960),
        ("standard", "2013-12-31T23:59:59+01:00", 1960),
        ("standard", "2014-01-01T00:00:00+01:00", 2000),
        ("press_online", "2006-06-01T12:00:00+02:00", 1960),
        ("press_online", "2014-01-15T12:00:00+01:00", 2000),
        ("press_online", "2014-01-31T23:59:59+01:00", 2000),
        ("press_online", "2014-02-01T00:00:00+01:00", 210),
    ],
)
def test_vat_rates_by_effective_date(category: str, moment: str, rate: int) -> None:
    assert vat_rate_bp(category, _s(moment)) == rate  # type: ignore[arg-type]


def test_no_vat_rate_before_the_schedule() -> None:
    with pytest.raises(ValueError, match="no VAT rate"):
        vat_rate_bp("standard", _s("1990-01-01T00:00:00+00:00"))
