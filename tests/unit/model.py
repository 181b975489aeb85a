"""A small independent model of the authorizer, written from DESIGN.md §7 and the issue, not from
the core's code: no memo structures, no pruning, no caches; every sum is a scan of the history.
Property tests run the same commands through both and compare every answer."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime
from fractions import Fraction
from typing import Any
from zoneinfo import ZoneInfo

from ledger.core.reference import CONSUMER_DEFAULTS, ENTERPRISE_DEFAULTS, Reference
from schemas.commands import (
    AccountBlockRequested,
    AccountOpenRequested,
    AccountUnblockRequested,
    EmployeeAuthoriseRequested,
    EmployeeRevokeRequested,
    LimitsSetRequested,
    PeriodCloseRequested,
    PurchaseRequested,
    RefundRequested,
)

PARIS = ZoneInfo("Europe/Paris")
LIMIT_FIELDS = (
    "min_purchase_cents",
    "max_purchase_cents",
    "daily_cap_cents",
    "monthly_cap_cents",
    "velocity_max_purchases",
    "velocity_window_seconds",
    "employee_budget_cents",
    "velocity_max_attempts_per_account",
)


def paris_day(moment: datetime) -> date:
    return moment.astimezone(PARIS).date()


def period(moment: datetime, billing_day: int) -> str:
    day = paris_day(moment)
    year, month = day.year, day.month
    if day.day < billing_day:
        year, month = (year - 1, 12) if month == 1 else (year, month - 1)
    return f"{year:04d}-{month:02d}"


def following(key: str) -> str:
    year, month = int(key[:4]), int(key[5:])
    return f"{year + 1:04d}-01" if month == 12 else f"{year:04d}-{month + 1:02d}"


def period_end(key: str, billing_day: int) -> datetime:
    nxt = following(key)
    return datetime(int(nxt[:4]), int(nxt[5:]), billing_day, tzinfo=PARIS)


def net_of(gross: int, rate_bp: int) -> int:
    exact = Fraction(gross * 10_000, 10_000 + rate_bp)
    whole = exact.numerator // exact.denominator
    return whole + 1 if exact - whole >= Fraction(1, 2) else whole


@dataclass
class Setting:
    at: datetime
    seq: int
    value: Any


def in_force(settings: list[Setting], moment: datetime) -> Any:
    eligible = [s for s in settings if s.at <= moment]
    return max(eligible, key=lambda s: (s.at, s.seq)).value if eligible else None


@dataclass
class Answer:
    outcome: str
    billing_period: str | None = None
    late_for: str | None = None
    net_cents: int | None = None


@dataclass
class Bought:
    command: PurchaseRequested
    outcome: str  # "ok" or the rejection reason
    refunded: int = 0
    answer: Answer | None = None


@dataclass
class Account:
    open_command: AccountOpenRequested
    blocks: list[Setting] = field(default_factory=list)
    limits: list[Setting] = field(default_factory=list)
    employees: dict[str, list[Setting]] = field(default_factory=dict)
    bought: dict[str, Bought] = field(default_factory=dict)
    refunds: dict[str, tuple[RefundRequested, Answer]] = field(default_factory=dict)
    newest: datetime | None = None

    @property
    def kind(self) -> str:
        return self.open_command.kind


class Model:
    def __init__(self, reference: Reference, horizon_seconds: int) -> None:
        self.reference = reference
        self.horizon_seconds = horizon_seconds
        self.accounts: dict[str, Account] = {}
        self.closed: dict[str, dict[str, PeriodCloseRequested]] = {}
        self.seq = 0
        # The partition's progress in event time (issue 14): every purchase's time, whatever its
        # answer, and the end of every period closed. The model is one partition.
        self.progress: list[datetime] = []

    def handle(self, command: Any) -> Answer:
        self.seq += 1
        handler = {
            PurchaseRequested: self._purchase,
            RefundRequested: self._refund,
            AccountOpenRequested: self._open,
            PeriodCloseRequested: self._close,
        }.get(type(command), self._admin)
        return handler(command)  # type: ignore[operator, no-any-return]

    def _limits(self, account: Account, moment: datetime) -> dict[str, Any]:
        isp = self.reference.isps[account.open_command.isp_id]
        defaults = ENTERPRISE_DEFAULTS if account.kind == "enterprise" else CONSUMER_DEFAULTS
        isp_over = isp.enterprise_limits if account.kind == "enterprise" else isp.consumer_limits
        own = in_force(account.limits, moment)
        resolved = {}
        for name in LIMIT_FIELDS:
            value = getattr(defaults, name)
            for over in (isp_over, own):
                if over is not None and getattr(over, name) is not None:
                    value = getattr(over, name)
            resolved[name] = value
        return resolved

    def _too_old(self, account: Account, moment: datetime) -> bool:
        return account.newest is not None and (
            (account.newest - moment).total_seconds() > self.horizon_seconds
        )

    def _remember(self, account: Account, moment: datetime) -> None:
        account.newest = moment if account.newest is None else max(account.newest, moment)

    def _billed_in(self, isp_id: str, own: str) -> tuple[str, str | None]:
        billed = own
        while billed in self.closed.get(isp_id, {}):
            billed = following(billed)
        return billed, (own if billed != own else None)

    def _purchase(self, c: PurchaseRequested) -> Answer:
        answer = self._answer_purchase(c)
        self.progress.append(c.occurred_at)
        return answer

    def _answer_purchase(self, c: PurchaseRequested) -> Answer:
        account = self.accounts.get(c.account_id)
        if account is None:
            return Answer("account_unknown")
        if c.purchase_id in account.bought:
            old = account.bought[c.purchase_id]
            if old.command != c:
                return Answer("duplicate_with_different_body")
            assert old.answer is not None
            return old.answer
        if self._too_old(account, c.occurred_at):
            return Answer("stale_purchase")
        outcome = self._judge(account, c)
        if outcome == "too_late":  # about when it came, not about its id: not remembered
            return Answer(outcome)
        bought = Bought(c, outcome)
        account.bought[c.purchase_id] = bought
        self._remember(account, c.occurred_at)
        if outcome != "ok":
            bought.answer = Answer(outcome)
            return bought.answer
        isp = self.reference.isps[account.open_command.isp_id]
        billed, late_for = self._billed_in(isp.isp_id, period(c.occurred_at, isp.billing_day))
        # The seed's years: every category at the standard rate of 2006 (19.6 %).
        assert c.occurred_at.year < 2014
        bought.answer = Answer("ok", billed, late_for, net_of(c.amount_cents, 1960))
        return bought.answer

    def _spent(self, account: Account, keep: Any) -> int:
        return sum(
            b.command.amount_cents - b.refunded
            for b in account.bought.values()
            if b.outcome == "ok" and keep(b.command)
        )

    def _judge(self, account: Account, c: PurchaseRequested) -> str:
        isp = self.reference.isps.get(account.open_command.isp_id)
        if isp is None:
            return "isp_unknown"
        lateness = isp.allowed_lateness_seconds
        newest = max(self.progress, default=None)
        if lateness is not None and newest and (newest - c.occurred_at).total_seconds() > lateness:
            return "too_late"
        if in_force(account.blocks, c.occurred_at) is not None:
            return "account_blocked"
        publisher = self.reference.publishers.get(c.publisher_id)
        if publisher is None:
            return "publisher_unknown"
        if publisher.blocked:
            return "publisher_blocked"
        grant = None
        if account.kind == "enterprise":
            grant = in_force(account.employees.get(c.user_id, []), c.occurred_at)
            if grant is None or not grant[0]:
                return "employee_not_authorised"
        limits = self._limits(account, c.occurred_at)
        if c.amount_cents < limits["min_purchase_cents"]:
            return "amount_below_minimum"
        if c.amount_cents > limits["max_purchase_cents"]:
            return "amount_above_maximum"
        window = limits["velocity_window_seconds"]
        recent = [
            b
            for b in account.bought.values()
            if b.outcome == "ok"
            and b.command.user_id == c.user_id
            and 0 <= (c.occurred_at - b.command.occurred_at).total_seconds() < window
        ]
        if len(recent) >= limits["velocity_max_purchases"]:
            return "velocity_exceeded"
        # Every user's attempts on the account that it remembers, refused ones included.
        attempts_max = limits["velocity_max_attempts_per_account"]
        if attempts_max is not None:
            tried = [
                b
                for b in account.bought.values()
                if 0 <= (c.occurred_at - b.command.occurred_at).total_seconds() < window
            ]
            if len(tried) >= attempts_max:
                return "account_velocity_exceeded"
        day = paris_day(c.occurred_at)
        if (
            self._spent(account, lambda o: paris_day(o.occurred_at) == day) + c.amount_cents
            > limits["daily_cap_cents"]
        ):
            return "daily_cap_exceeded"
        own = period(c.occurred_at, isp.billing_day)
        in_period = lambda o: period(o.occurred_at, isp.billing_day) == own  # noqa: E731
        if self._spent(account, in_period) + c.amount_cents > limits["monthly_cap_cents"]:
            return "monthly_cap_exceeded"
        if grant is not None:
            budget = limits["employee_budget_cents"] if grant[1] is None else grant[1]
            mine = self._spent(account, lambda o: o.user_id == c.user_id and in_period(o))
            if mine + c.amount_cents > budget:
                return "employee_budget_exceeded"
        return "ok"

    def _refund(self, c: RefundRequested) -> Answer:
        account = self.accounts.get(c.account_id)
        if account is None:
            return Answer("account_unknown")
        if c.refund_id in account.refunds:
            old, answer = account.refunds[c.refund_id]
            return answer if old == c else Answer("duplicate_with_different_body")
        if self._too_old(account, c.occurred_at):
            return Answer("stale_refund")
        bought = account.bought.get(c.purchase_id)
        if bought is None:
            outcome = "purchase_unknown"
        elif bought.outcome != "ok":
            outcome = "purchase_not_authorized"
        elif c.occurred_at < bought.command.occurred_at:
            outcome = "refund_before_purchase"
        elif bought.refunded + c.amount_cents > bought.command.amount_cents:
            outcome = "refund_exceeds_purchase"
        else:
            outcome = "ok"
            bought.refunded += c.amount_cents
        answer = Answer(outcome)
        if outcome == "ok":
            isp = self.reference.isps[account.open_command.isp_id]
            billed, late = self._billed_in(isp.isp_id, period(c.occurred_at, isp.billing_day))
            answer = Answer("ok", billed, late)
        account.refunds[c.refund_id] = (c, answer)
        self._remember(account, c.occurred_at)
        return answer

    def _open(self, c: AccountOpenRequested) -> Answer:
        account = self.accounts.get(c.account_id)
        if account is not None:
            return Answer("ok" if account.open_command == c else "account_exists")
        if c.isp_id not in self.reference.isps:
            return Answer("isp_unknown")
        # The horizon is measured from the account's newest event, its opening included.
        self.accounts[c.account_id] = Account(c, newest=c.occurred_at)
        return Answer("ok")

    def _admin(self, c: Any) -> Answer:
        account = self.accounts.get(c.account_id)
        if account is None:
            return Answer("account_unknown")
        if isinstance(c, AccountBlockRequested):
            account.blocks.append(Setting(c.occurred_at, self.seq, c.reason))
        elif isinstance(c, AccountUnblockRequested):
            account.blocks.append(Setting(c.occurred_at, self.seq, None))
        elif isinstance(c, LimitsSetRequested):
            account.limits.append(Setting(c.occurred_at, self.seq, c.limits))
        elif account.kind != "enterprise":
            return Answer("not_enterprise")
        elif isinstance(c, EmployeeAuthoriseRequested):
            grants = account.employees.setdefault(c.user_id, [])
            grants.append(Setting(c.occurred_at, self.seq, (True, c.budget_cents)))
        else:
            assert isinstance(c, EmployeeRevokeRequested)
            if c.user_id not in account.employees:
                return Answer("employee_unknown")
            account.employees[c.user_id].append(Setting(c.occurred_at, self.seq, (False, None)))
        return Answer("ok")

    def _close(self, c: PeriodCloseRequested) -> Answer:
        isp = self.reference.isps.get(c.isp_id)
        if isp is None:
            return Answer("isp_unknown")
        done = self.closed.get(c.isp_id, {}).get(c.period)
        if done is not None:
            return Answer("ok" if done == c else "period_already_closed")
        if c.occurred_at < period_end(c.period, isp.billing_day):
            return Answer("period_not_ended")
        self.closed.setdefault(c.isp_id, {})[c.period] = c
        self.progress.append(period_end(c.period, isp.billing_day))
        return Answer("ok")
