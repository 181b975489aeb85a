"""`ledger simulate`: a seeded Internet Plus workload shaped by the seed's figures
(seed/SUMMARY.md).

At scale 1: 1.1 million registered subscribers across the five ISPs that adopted the banner in
June 2005, 550,000 transactions a month (3.3 million in six months), 37 % of them for
professional services (Internet Plus Pro: companies and their authorised employees), an average
basket near EUR 2.66 including VAT, more purchases in the evening and at the weekend, and a small
share of abuse: velocity bursts, cap probing, duplicate submissions and malformed messages.

The same seed and arguments give the same workload, message for message. Subscribers that never
buy are not opened (nothing of theirs reaches the ledger); `--scale` scales every count.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from schemas.commands import (
    AccountOpenRequested,
    Command,
    EmployeeAuthoriseRequested,
    LimitOverrides,
    PurchaseRequested,
    RefundRequested,
)
from schemas.reference import IspRegistered, PublisherRegistered, ReferenceRecord

PARIS = ZoneInfo("Europe/Paris")
START = datetime(2006, 1, 1, tzinfo=PARIS)
SUBSCRIBERS = 1_100_000
TRANSACTIONS_PER_MONTH = 550_000  # 3.3 million in the first half of 2006
PROFESSIONAL_SHARE = 0.37
EMPLOYEES_PER_COMPANY = 12
SUBSCRIBERS_PER_COMPANY = 400  # companies are fewer than households, and buy more each
REFUND_SHARE = 0.01
ABUSE_SHARE = 0.01  # of transactions: bursts, probing, duplicates; malformed messages beside

# (id, name, share of subscribers, billing day, commission)
ISPS = (
    ("orange", "Orange", 0.46, 1, 1500),
    ("club-internet", "Club-Internet", 0.14, 5, 1400),
    ("aol", "AOL France", 0.12, 10, 1400),
    ("cegetel", "Cegetel", 0.16, 15, 1300),
    ("alice", "Alice", 0.12, 20, 1200),
)
# The simulator is a trusted feed replaying history in event order (issue 14): each partition gets
# its purchases in time order but for the abuse, whose cap probes run 15 minutes past the moment
# the next purchases are drawn at (measured: under 15 minutes behind a partition's newest
# purchase, 111 of some 23,000 purchases behind at all, over two months at scale 0.02). An hour's
# lateness refuses none of them and any purchase backdated further.
ALLOWED_LATENESS_SECONDS = 3600
# Attempts per account in the velocity window (a minute), refused ones included: twice a
# household's 5 purchases a user, and a company's dozen employees' share of it.
CONSUMER_ATTEMPTS_PER_ACCOUNT = 10
ENTERPRISE_ATTEMPTS_PER_ACCOUNT = 30
# (category, vat category, publishers, revenue share, price points in cents incl. VAT, weight)
# The price points and weights give an average basket of about EUR 2.66 (measured on the output).
Category = tuple[str, str, int, int, tuple[int, ...], float]
CATEGORIES: tuple[Category, ...] = (
    ("vod", "standard", 12, 6000, (199, 299, 399, 499), 0.34),
    ("video_archive", "standard", 8, 6500, (99, 149, 249), 0.12),
    ("press_archive", "press_online", 15, 7000, (50, 100, 150, 200), 0.14),
    ("games", "standard", 10, 5500, (100, 200, 300, 500), 0.15),
    ("professional_info", "standard", 20, 7000, (100, 200, 300, 450), 0.25),
)
# Relative purchases per hour of the day (Paris) and per weekday (Monday first).
HOURLY = (2, 1, 1, 1, 1, 1, 2, 3, 5, 6, 6, 6, 7, 6, 6, 6, 6, 7, 8, 10, 12, 12, 9, 5)
WEEKLY = (0.9, 0.9, 0.95, 0.95, 1.05, 1.25, 1.2)
PROFESSIONAL_HOURLY = (0, 0, 0, 0, 0, 0, 1, 3, 8, 10, 10, 9, 6, 8, 10, 10, 9, 6, 3, 1, 1, 0, 0, 0)
PROFESSIONAL_WEEKLY = (1.0, 1.0, 1.0, 1.0, 0.95, 0.1, 0.05)


@dataclass(frozen=True)
class Scale:
    months: int = 1
    scale: float = 0.01
    seed: int = 2006

    def __post_init__(self) -> None:
        if not 1 <= self.months <= 24:
            raise ValueError("--months is 1 to 24")
        if not 0 < self.scale <= 1:
            raise ValueError("--scale is above 0 and at most 1")


@dataclass
class Workload:
    reference: list[ReferenceRecord]
    setup: list[Command]
    months: list[list[Command | bytes]]  # per month, in time order; bytes are malformed messages


def reference() -> list[ReferenceRecord]:
    records: list[ReferenceRecord] = [
        IspRegistered(
            isp_id=i, name=n, billing_day=d, commission_bp=c, occurred_at=START,
            consumer_limits=LimitOverrides(
                velocity_max_attempts_per_account=CONSUMER_ATTEMPTS_PER_ACCOUNT
            ),
            enterprise_limits=LimitOverrides(
                velocity_max_attempts_per_account=ENTERPRISE_ATTEMPTS_PER_ACCOUNT
            ),
            allowed_lateness_seconds=ALLOWED_LATENESS_SECONDS,
        )
        for i, n, _, d, c in ISPS
    ]  # fmt: skip
    for category, vat, count, share, _, _ in CATEGORIES:
        records.extend(
            PublisherRegistered(
                publisher_id=f"{category.replace('_', '-')}-{n:02d}",
                name=f"{category.replace('_', ' ').title()} {n:02d}",
                category=category, revenue_share_bp=share, vat_category=vat,  # type: ignore[arg-type]
                occurred_at=START,
            )
            for n in range(count)
        )  # fmt: skip
    return records


def _month_start(months_after: int) -> datetime:
    year, month = divmod(START.month - 1 + months_after, 12)
    return START.replace(year=START.year + year, month=month + 1)


def _moments(rng: random.Random, month: int, count: int, hourly: tuple[float, ...],
             weekly: tuple[float, ...]) -> list[datetime]:  # fmt: skip
    """`count` instants in the month, drawn from the daily and weekly profile, sorted."""
    start, end = _month_start(month), _month_start(month + 1)
    hours = []
    moment = start
    while moment < end:
        hours.append(moment)
        moment = (moment.astimezone(UTC) + timedelta(hours=1)).astimezone(PARIS)
    weights = list(itertools.accumulate(hourly[h.hour] * weekly[h.weekday()] for h in hours))
    picked = []
    for _ in range(count):
        hour = hours[bisect.bisect(weights, rng.random() * weights[-1])]
        picked.append(hour + timedelta(seconds=rng.randrange(3600)))
    picked.sort()
    return [p.astimezone(UTC) for p in picked]


class _Population:
    """Who buys: consumer subscribers (a few buy a lot) and companies with their employees."""

    def __init__(self, rng: random.Random, shape: Scale) -> None:
        self.rng = rng
        subscribers = max(10, round(SUBSCRIBERS * shape.scale))
        self.companies = max(2, subscribers // SUBSCRIBERS_PER_COMPANY)
        self.consumers = subscribers - self.companies
        self.opened: set[str] = set()
        shares = list(itertools.accumulate(share for _, _, share, _, _ in ISPS))
        self._isp_of_rank = [
            ISPS[bisect.bisect(shares, (i + 0.5) / 1000 * shares[-1])][0] for i in range(1000)
        ]

    def isp(self, number: int) -> str:
        return self._isp_of_rank[(number * 7919) % 1000]

    def consumer(self) -> tuple[str, str]:
        # Pareto-like: a small share of households makes a large share of purchases.
        number = min(self.consumers - 1, int(self.consumers * self.rng.random() ** 2.2))
        return f"sub-{number:07d}", self.isp(number)

    def employee(self) -> tuple[str, str, str]:
        number = min(self.companies - 1, int(self.companies * self.rng.random() ** 1.5))
        user = f"emp-{self.rng.randrange(EMPLOYEES_PER_COMPANY):02d}"
        return f"company-{number:05d}", self.isp(number), user

    def opening(self, account: str, isp: str, when: datetime) -> list[Command]:
        if account in self.opened:
            return []
        self.opened.add(account)
        if not account.startswith("company-"):
            consumer = AccountOpenRequested(
                command_id=f"open-{account}", account_id=account, isp_id=isp, kind="consumer",
                occurred_at=when,
            )  # fmt: skip
            return [consumer]
        number = account.removeprefix("company-")
        opened: list[Command] = [AccountOpenRequested(
            command_id=f"open-{account}", account_id=account, isp_id=isp, kind="enterprise",
            occurred_at=when, company_name=f"Entreprise {number} SA",
        )]  # fmt: skip
        opened.extend(
            EmployeeAuthoriseRequested(
                command_id=f"auth-{account}-{u:02d}", account_id=account, user_id=f"emp-{u:02d}",
                occurred_at=when,
            )
            for u in range(EMPLOYEES_PER_COMPANY)
        )  # fmt: skip
        return opened


def _basket(rng: random.Random, professional: bool) -> tuple[str, int, str]:
    """(publisher, amount incl. VAT, category) of one purchase."""
    if professional and rng.random() < 0.8:
        category = CATEGORIES[4]
    else:
        category = rng.choices(CATEGORIES[:4], weights=[c[5] for c in CATEGORIES[:4]])[0]
    name, _, count, _, prices, _ = category
    publisher = f"{name.replace('_', '-')}-{rng.randrange(count):02d}"
    return publisher, rng.choice(prices), name


def _abuse(rng: random.Random, base: PurchaseRequested, serial: Iterator[int]) -> list[Command]:
    kind = rng.random()
    if kind < 0.4:  # a velocity burst: a dozen purchases within a minute
        return [msgspec_replace(base, purchase_id=f"burst-{next(serial)}",
                                occurred_at=base.occurred_at + timedelta(seconds=4 * i))
                for i in range(12)]  # fmt: skip
    if kind < 0.7:  # cap probing: growing amounts until refused
        return [msgspec_replace(base, purchase_id=f"probe-{next(serial)}", amount_cents=amount,
                                occurred_at=base.occurred_at + timedelta(minutes=3 * i))
                for i, amount in enumerate((500, 900, 1400, 1500, 1500, 1500))]  # fmt: skip
    if kind < 0.9:  # the same request sent again (a retry): one decision
        return [base, base]
    # the same purchase id with another amount: refused as a different body
    return [base, msgspec_replace(base, amount_cents=base.amount_cents + 100)]


def msgspec_replace(command: PurchaseRequested, **changes: object) -> PurchaseRequested:
    import msgspec

    return msgspec.structs.replace(command, **changes)


MALFORMED = (
    b"{not json",
    b'{"type":"purchase.requested.v1","purchase_id":"x"}',
    b'{"type":"purchase.requested.v9"}',
    b"\xff\xfe",
)


def generate(shape: Scale) -> Workload:
    rng = random.Random(shape.seed)
    people = _Population(rng, shape)
    serial = itertools.count(1)
    per_month = max(1, round(TRANSACTIONS_PER_MONTH * shape.scale))
    months: list[list[Command | bytes]] = []
    setup: list[Command] = []
    for month in range(shape.months):
        professional = round(per_month * PROFESSIONAL_SHARE)
        moments = [(m, True) for m in _moments(rng, month, professional, PROFESSIONAL_HOURLY,
                                                 PROFESSIONAL_WEEKLY)]  # fmt: skip
        moments += [(m, False) for m in _moments(rng, month, per_month - professional, HOURLY,
                                                   WEEKLY)]  # fmt: skip
        moments.sort(key=lambda pair: pair[0])
        out: list[Command | bytes] = []
        for when, pro in moments:
            if pro:
                account, isp, user = people.employee()
            else:
                (account, isp), user = people.consumer(), "holder"
            setup.extend(people.opening(account, isp, START.astimezone(UTC)))
            publisher, amount, category = _basket(rng, pro)
            purchase = PurchaseRequested(
                purchase_id=f"p{next(serial):09d}", account_id=account, user_id=user,
                publisher_id=publisher, amount_cents=amount, category=category,
                description=f"{category.replace('_', ' ')} item", occurred_at=when,
            )  # fmt: skip
            roll = rng.random()
            if roll < ABUSE_SHARE:
                out.extend(_abuse(rng, purchase, serial))
            else:
                out.append(purchase)
                if roll < ABUSE_SHARE + REFUND_SHARE:
                    out.append(RefundRequested(
                        refund_id=f"r{next(serial):09d}", purchase_id=purchase.purchase_id,
                        account_id=account, amount_cents=amount, reason="content not delivered",
                        occurred_at=when + timedelta(minutes=30),
                    ))  # fmt: skip
            if rng.random() < ABUSE_SHARE / 10:
                out.append(rng.choice(MALFORMED))
        months.append(out)
    return Workload(reference(), setup, months)
