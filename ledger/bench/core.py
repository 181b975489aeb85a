"""Micro-benchmark of the pure core on one core: decisions per second of the authorizer, and
messages encoded and decoded per second.

The workload has the seed's shape: many accounts, baskets around €2.66, a few refunds and
duplicates, 37 % of purchases by employees of enterprise accounts.
"""

from __future__ import annotations

import gc
import random
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from ledger.bench import table
from ledger.core.reference import Reference
from ledger.core.runner import LocalAuthorizer
from schemas import codec
from schemas.commands import (
    AccountOpenRequested,
    Command,
    EmployeeAuthoriseRequested,
    LimitOverrides,
    PurchaseRequested,
    RefundRequested,
)
from schemas.facts import Fact
from schemas.reference import IspRegistered, PublisherRegistered
from schemas.types import AccountKind

START = datetime(2006, 1, 2, 8, tzinfo=UTC)
BASKETS_CENTS = (99, 150, 199, 266, 299, 350, 499, 990)  # averages €3.56; most are small
PROFESSIONAL_SHARE = 0.37  # SUMMARY.md: 37 % of transactions for professional services


@dataclass(frozen=True)
class CoreFigures:
    commands: int
    decisions_per_second: float
    decode_per_second: float
    encode_per_second: float
    fact_decode_per_second: float
    authorized_share: float


def reference() -> Reference:
    isps = [
        IspRegistered(
            isp_id=f"isp{i}",
            name=f"ISP {i}",
            billing_day=1 + 7 * i,
            commission_bp=1500,
            occurred_at=START,
            # Issue 14's rules on, so that their cost is measured; the workload is in event
            # order (a refund 5 minutes on moves no watermark), so they refuse nothing.
            consumer_limits=LimitOverrides(velocity_max_attempts_per_account=10),
            enterprise_limits=LimitOverrides(velocity_max_attempts_per_account=30),
            allowed_lateness_seconds=3600,
        )
        for i in range(4)
    ]
    publishers = [
        PublisherRegistered(
            publisher_id=f"pub{i}",
            name=f"Publisher {i}",
            category="vod",
            revenue_share_bp=6000,
            vat_category="standard",
            occurred_at=START,
        )
        for i in range(100)
    ]
    return Reference.of([*isps, *publishers])


def workload(accounts: int, purchases: int, seed: int) -> tuple[list[Command], list[Command]]:
    """(set-up commands, measured commands)."""
    rnd = random.Random(seed)
    setup: list[Command] = []
    enterprise = max(1, accounts // 50)
    for n in range(accounts):
        kind: AccountKind = "enterprise" if n < enterprise else "consumer"
        setup.append(
            AccountOpenRequested(
                command_id=f"o{n}",
                account_id=f"a{n}",
                isp_id=f"isp{n % 4}",
                kind=kind,
                occurred_at=START,
            )
        )
        if kind == "enterprise":
            setup.extend(
                EmployeeAuthoriseRequested(
                    command_id=f"e{n}.{u}",
                    account_id=f"a{n}",
                    user_id=f"u{u}",
                    occurred_at=START,
                    budget_cents=10**7,
                )
                for u in range(20)
            )
    measured: list[Command] = []
    clock = START
    for n in range(purchases):
        clock += timedelta(seconds=rnd.randint(0, 20))
        if rnd.random() < PROFESSIONAL_SHARE:
            account, user = f"a{rnd.randrange(enterprise)}", f"u{rnd.randrange(20)}"
        else:
            account, user = f"a{rnd.randrange(enterprise, accounts)}", "u0"
        command = PurchaseRequested(
            purchase_id=f"p{n}",
            account_id=account,
            user_id=user,
            publisher_id=f"pub{rnd.randrange(100)}",
            amount_cents=rnd.choice(BASKETS_CENTS),
            category="vod",
            description="episode",
            occurred_at=clock,
        )
        measured.append(command)
        roll = rnd.random()
        if roll < 0.02:
            measured.append(command)  # a client retry
        elif roll < 0.03:
            measured.append(
                RefundRequested(
                    refund_id=f"r{n}",
                    purchase_id=f"p{n}",
                    account_id=account,
                    amount_cents=command.amount_cents,
                    reason="not delivered",
                    occurred_at=clock + timedelta(minutes=5),
                )
            )
    return setup, measured


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else float("inf")


def run(accounts: int = 100_000, purchases: int = 300_000, seed: int = 2006) -> CoreFigures:
    setup, measured = workload(accounts, purchases, seed)
    ledger = LocalAuthorizer(reference())
    for command in setup:
        ledger.handle(command)
    gc.collect()
    facts: list[Fact] = []
    started = time.perf_counter()
    for command in measured:
        facts.extend(ledger.handle(command))
    decide_seconds = time.perf_counter() - started

    raw_commands = [codec.encode(command) for command in measured]
    started = time.perf_counter()
    for raw in raw_commands:
        codec.decode_command(raw)
    decode_seconds = time.perf_counter() - started

    started = time.perf_counter()
    raw_facts = [codec.encode(fact) for fact in facts]
    encode_seconds = time.perf_counter() - started

    started = time.perf_counter()
    for raw in raw_facts:
        codec.decode_fact(raw)
    fact_decode_seconds = time.perf_counter() - started

    authorized = sum(1 for fact in facts if type(fact).__name__ == "PurchaseAuthorized")
    return CoreFigures(
        commands=len(measured),
        decisions_per_second=_rate(len(measured), decide_seconds),
        decode_per_second=_rate(len(raw_commands), decode_seconds),
        encode_per_second=_rate(len(raw_facts), encode_seconds),
        fact_decode_per_second=_rate(len(raw_facts), fact_decode_seconds),
        authorized_share=authorized / max(1, len(facts)),
    )


def report(figures: CoreFigures) -> str:
    rows = [
        ("commands decided", f"{figures.commands:,}"),
        ("decisions/s (authorizer, one core)", f"{figures.decisions_per_second:,.0f}"),
        ("commands decoded/s (JSON → typed)", f"{figures.decode_per_second:,.0f}"),
        ("facts encoded/s (typed → JSON)", f"{figures.encode_per_second:,.0f}"),
        ("facts decoded/s (JSON → typed)", f"{figures.fact_decode_per_second:,.0f}"),
        ("share of facts authorized", f"{figures.authorized_share:.1%}"),
    ]
    return table(rows)


def as_json(figures: CoreFigures) -> dict[str, float]:
    return asdict(figures)
