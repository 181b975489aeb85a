"""The authorizer's decision function: (account state, command) → (new state, facts).

It is split the usual event-sourced way, one module per job:
- `decide(state, command, context)` is pure: it reads the state and returns the facts
  (`ledger.core.purchase`, `ledger.core.refund`, `ledger.core.payment`, `ledger.core.admin`;
  what they share, the context and policy, in `ledger.core.context`);
- `evolve(state, fact, policy)` applies one fact to the state (in place, for speed: the caller
  owns the state, which is one table slot) and returns it; applying a fact twice changes nothing
  (`ledger.core.evolve`);
- `step` is the two together.
Decisions use the command's `occurred_at`, never the clock, so a replay decides the same way.
This module is the authorizer's public face: its callers (the batch, the runner, the API, the
tests) import from here.
"""

from __future__ import annotations

from dataclasses import dataclass

from ledger.core import calendar
from ledger.core.admin import (
    AdminCommand,
    decide_admin,
    decide_close,
    decide_reference_change,
    decide_upgrade,
    evolve_close,
)
from ledger.core.context import (
    HORIZON_SECONDS_DEFAULT,
    Context,
    EventTime,
    Policy,
    Progress,
    billing_period,
    fingerprint,
    limits_at,
)
from ledger.core.evolve import PRUNE_FRACTION, evolve, prune
from ledger.core.invariant import present
from ledger.core.payment import decide_capture, decide_hold, decide_void
from ledger.core.purchase import decide_purchase
from ledger.core.refund import decide_refund
from ledger.core.state import AccountState
from schemas.commands import (
    AccountCommand,
    Command,
    PaymentCaptureRequested,
    PaymentHoldRequested,
    PaymentVoidRequested,
    PeriodCloseRequested,
    PurchaseRequested,
    RefundRequested,
)
from schemas.facts import Fact, PeriodClosed

__all__ = [
    "HORIZON_SECONDS_DEFAULT",
    "PRUNE_FRACTION",
    "AdminCommand",
    "Context",
    "Decision",
    "EventTime",
    "Policy",
    "Progress",
    "advance",
    "billing_period",
    "decide",
    "decide_close",
    "decide_reference_change",
    "decide_upgrade",
    "evolve",
    "evolve_close",
    "fingerprint",
    "limits_at",
    "prune",
    "step",
]


@dataclass(frozen=True, slots=True)
class Decision:
    state: AccountState | None
    facts: list[Fact]


def step(
    state: AccountState | None, command: AccountCommand, context: Context, origin: int | None = None
) -> Decision:
    """`origin` is the command's offset in its partition of ledger.commands (see Origin in
    schemas/facts.py); None outside a stream."""
    facts = decide(state, command, context, origin)
    for fact in facts:
        state = evolve(state, fact, context.policy)
    return Decision(state, facts)


def decide(
    state: AccountState | None, command: AccountCommand, context: Context, origin: int | None = None
) -> list[Fact]:
    if isinstance(command, PurchaseRequested):
        return [decide_purchase(state, command, context, origin)]
    if isinstance(command, RefundRequested):
        return [decide_refund(state, command, context, origin)]
    if isinstance(command, PaymentHoldRequested):
        return [decide_hold(state, command, context, origin)]
    if isinstance(command, PaymentCaptureRequested):
        return [decide_capture(state, command, context, origin)]
    if isinstance(command, PaymentVoidRequested):
        return [decide_void(state, command, context, origin)]
    return [decide_admin(state, command, context, origin)]


def advance(
    context: Context, command: Command, origin: int | None, closed: Fact | None = None
) -> None:
    """Move a partition's event-time watermark on past a command of it, in command order, after
    it was decided (or found decided already: the batch's recovery moves it on just the same, so
    the watermark is a function of the partition's commands alone). The progress moved on is
    the context's.

    - A purchase or a hold, whatever its decision, moves it to its occurred_at (if later).
      Trusted feeds send history in event order; a consented payment carries the platform's
      clock.
    - A period closed (`closed`, the close's fact) moves it to the period's end, not to the
      close's occurred_at: a purchase of the closed period is then billed late only within the
      ISP's lateness of that end (the README's "Fraud limits": the bound)."""
    if isinstance(command, PurchaseRequested | PaymentHoldRequested):
        at = calendar.epoch_seconds(command.occurred_at)
    elif isinstance(command, PeriodCloseRequested) and isinstance(closed, PeriodClosed):
        closed_at = calendar.epoch_seconds(command.occurred_at)
        isp = present(
            context.isp(command.isp_id, closed_at, origin), "a period closed for an unknown ISP"
        )  # the same version as decide_close's: the watermark has not moved in between
        at = calendar.epoch_seconds(calendar.period_bounds(command.period, isp.billing_day)[1])
    else:
        return
    progress = context.progress
    progress.watermark_seconds = max(progress.watermark_seconds, at)
