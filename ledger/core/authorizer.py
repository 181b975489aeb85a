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

from ledger.core.admin import AdminCommand, decide_admin, decide_close, evolve_close
from ledger.core.context import (
    HORIZON_SECONDS_DEFAULT,
    Context,
    Policy,
    billing_period,
    fingerprint,
    limits_at,
)
from ledger.core.evolve import PRUNE_FRACTION, evolve, prune
from ledger.core.payment import decide_capture, decide_hold, decide_void
from ledger.core.purchase import decide_purchase
from ledger.core.refund import decide_refund
from ledger.core.state import AccountState
from schemas.commands import (
    AccountCommand,
    PaymentCaptureRequested,
    PaymentHoldRequested,
    PaymentVoidRequested,
    PurchaseRequested,
    RefundRequested,
)
from schemas.facts import Fact

__all__ = [
    "HORIZON_SECONDS_DEFAULT",
    "PRUNE_FRACTION",
    "AdminCommand",
    "Context",
    "Decision",
    "Policy",
    "billing_period",
    "decide",
    "decide_close",
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
    return [decide_admin(state, command, context)]
