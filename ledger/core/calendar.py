"""Time in the ISP's billing calendar: days and billing periods in Europe/Paris.

Timestamps inside the core are whole seconds since the epoch (UTC). A billing period is named
`YYYY-MM` after the month it starts in and runs [billing day of that month 00:00 Paris, billing
day of the next month 00:00 Paris).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from functools import lru_cache
from zoneinfo import ZoneInfo

PARIS = ZoneInfo("Europe/Paris")
SECONDS_PER_HOUR = 3600
SECONDS_PER_DAY = 86_400
BILLING_DAY_MAX = 28  # every month has a 28th: a period always starts on its billing day


def epoch_seconds(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise ValueError("a timestamp needs a timezone")
    return int(moment.timestamp())


@lru_cache(maxsize=1 << 16)
def _paris_date_of_hour(hour: int) -> date:
    # Paris changes its UTC offset only on whole UTC hours, so one answer holds for the hour.
    return datetime.fromtimestamp(hour * SECONDS_PER_HOUR, tz=PARIS).date()


def paris_date(seconds: int) -> date:
    return _paris_date_of_hour(seconds // SECONDS_PER_HOUR)


@lru_cache(maxsize=1 << 16)
def _day_key_of_hour(hour: int) -> str:
    return _paris_date_of_hour(hour).isoformat()


def day_key(seconds: int) -> str:
    return _day_key_of_hour(seconds // SECONDS_PER_HOUR)


def check_billing_day(billing_day: int) -> None:
    if not 1 <= billing_day <= BILLING_DAY_MAX:
        raise ValueError(f"a billing day is from 1 to {BILLING_DAY_MAX}, got {billing_day}")


def _period_of_date(day: date, billing_day: int) -> tuple[int, int]:
    if day.day >= billing_day:
        return day.year, day.month
    return (day.year - 1, 12) if day.month == 1 else (day.year, day.month - 1)


def period_key(year: int, month: int) -> str:
    return f"{year:04d}-{month:02d}"


def parse_period(key: str) -> tuple[int, int]:
    year, month = int(key[:4]), int(key[5:7])
    if len(key) != 7 or key[4] != "-" or not 1 <= month <= 12:
        raise ValueError(f"a period is YYYY-MM, got {key!r}")
    return year, month


@lru_cache(maxsize=1 << 14)
def _period_of_hour(hour: int, billing_day: int) -> str:
    return period_key(*_period_of_date(_paris_date_of_hour(hour), billing_day))


def period_of(seconds: int, billing_day: int) -> str:
    """The billing period (YYYY-MM) an instant falls in, for an ISP with this billing day."""
    return _period_of_hour(seconds // SECONDS_PER_HOUR, billing_day)


def next_period(key: str) -> str:
    year, month = parse_period(key)
    return period_key(year + 1, 1) if month == 12 else period_key(year, month + 1)


def previous_period(key: str) -> str:
    year, month = parse_period(key)
    return period_key(year - 1, 12) if month == 1 else period_key(year, month - 1)


def _paris_midnight(day: date) -> datetime:
    return datetime(day.year, day.month, day.day, tzinfo=PARIS).astimezone(UTC)


def period_bounds(key: str, billing_day: int) -> tuple[datetime, datetime]:
    """[start, end) of a period, as UTC datetimes."""
    check_billing_day(billing_day)
    year, month = parse_period(key)
    next_year, next_month = parse_period(next_period(key))
    return (
        _paris_midnight(date(year, month, billing_day)),
        _paris_midnight(date(next_year, next_month, billing_day)),
    )
