"""A publisher's purchases as the checkout API answers for them, and the refund policy.

A purchase is looked up in the API's own recent facts first (ledger.api.listener: what was
decided since the projection writer's stored offsets, read at start-up, and everything since),
then in the PostgreSQL projection (`purchases`, `refunds`), which holds every purchase ever
decided. Both are filtered by the caller: a publisher only ever sees its own purchases.

Refund policy (issue 12): a purchase can be refunded, in one or more parts up to its amount,

- until the billing period after the one it was billed in is closed for its ISP
  (REFUND_MARGIN_PERIODS): the refund then still reaches an open invoice as a correction
  (`purchase_billing_period` points back), and
- for at most REFUND_AGE_MAX_SECONDS after it occurred, within the workers' memory of purchases.

After that the API refuses with a 409 `refund_window_closed`: the purchase is on a sealed invoice
and is corrected by a credit note instead. A refund already accepted is answered again whatever
the date (a resend is the same refund).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple, Protocol

from ledger.api.errors import ApiError
from ledger.core.authorizer import HORIZON_SECONDS_DEFAULT
from ledger.core.calendar import SECONDS_PER_DAY, next_period
from schemas.facts import PurchaseAuthorized, PurchaseRefunded, PurchaseRejected

REFUND_MARGIN_PERIODS = 1
# The workers remember a purchase for HORIZON_SECONDS_DEFAULT (90 days) behind the newest event
# of its account, and refuse a refund of one they forgot (purchase_unknown): the policy ends 15
# days before, a margin for events stamped ahead of the API's clock. 75 days still cover a
# purchase on the first day of a period until its next period is closed a fortnight after it ends.
REFUND_AGE_MAX_SECONDS = HORIZON_SECONDS_DEFAULT - 15 * SECONDS_PER_DAY
# Rejections that do not take the purchase id (ledger.core.authorizer's _UNREMEMBERED): a later
# decision of the same id replaces them.
UNREMEMBERED = frozenset({"duplicate_with_different_body", "stale_purchase", "account_unknown"})


class Database(Protocol):
    async def query(self, text: str, params: tuple[Any, ...]) -> list[dict[str, Any]]: ...


class Recent(Protocol):
    """The listener's recent decisions, by (publisher_id, purchase_id)."""

    purchases: Any  # Mapping[(publisher_id, purchase_id), Purchase]
    refunds: Any  # Mapping[(publisher_id, purchase_id), list[RecentRefund]]


@dataclass(frozen=True, slots=True)
class Purchase:
    purchase_id: str
    account_id: str
    publisher_id: str
    amount_cents: int
    event_id: str
    authorized: bool
    reason: str | None
    occurred_at: datetime
    isp_id: str | None = None
    net_cents: int | None = None
    vat_cents: int | None = None
    vat_rate_bp: int | None = None
    billing_period: str | None = None

    @classmethod
    def of_fact(cls, fact: PurchaseAuthorized | PurchaseRejected) -> Purchase:
        if isinstance(fact, PurchaseRejected):
            return cls(
                purchase_id=fact.purchase_id, account_id=fact.account_id,
                publisher_id=fact.publisher_id, amount_cents=fact.amount_cents,
                event_id=fact.event_id, authorized=False, reason=fact.reason,
                occurred_at=fact.occurred_at, isp_id=fact.isp_id,
            )  # fmt: skip
        return cls(
            purchase_id=fact.purchase_id, account_id=fact.account_id,
            publisher_id=fact.publisher_id, amount_cents=fact.amount_cents,
            event_id=fact.event_id, authorized=True, reason=None, occurred_at=fact.occurred_at,
            isp_id=fact.isp_id, net_cents=fact.net_cents, vat_cents=fact.vat_cents,
            vat_rate_bp=fact.vat_rate_bp, billing_period=fact.billing_period,
        )  # fmt: skip

    @classmethod
    def of_row(cls, row: dict[str, Any]) -> Purchase:
        return cls(
            purchase_id=row["purchase_id"], account_id=row["account_id"],
            publisher_id=row["publisher_id"], amount_cents=row["amount_cents"],
            event_id=row["event_id"], authorized=row["decision"] == "authorized",
            reason=row["reason"], occurred_at=row["occurred_at"], isp_id=row["isp_id"],
            net_cents=row["net_cents"], vat_cents=row["vat_cents"],
            vat_rate_bp=row["vat_rate_bp"], billing_period=row["billing_period"],
        )  # fmt: skip

    @property
    def stands(self) -> bool:
        """A remembered decision: no later decision of the same id replaces it."""
        return self.authorized or self.reason not in UNREMEMBERED

    def view(self, refunded_cents: int | None = None) -> dict[str, Any]:
        view: dict[str, Any] = {
            "purchase_id": self.purchase_id, "account_id": self.account_id,
            "publisher_id": self.publisher_id, "amount_cents": self.amount_cents,
            "event_id": self.event_id,
        }  # fmt: skip
        if not self.authorized:
            return view | {"status": "rejected", "reason": self.reason}
        view |= {"status": "authorized", "reason": None, "net_cents": self.net_cents,
                 "vat_cents": self.vat_cents, "vat_rate_bp": self.vat_rate_bp,
                 "billing_period": self.billing_period}  # fmt: skip
        if refunded_cents is not None:
            view["refunded_cents"] = refunded_cents
        return view


def replaces(new: Purchase, old: Purchase | None) -> bool:
    """Whether a decision of a purchase id stands for it instead of the one known: the first
    remembered decision stands; an unremembered rejection gives way to any later decision."""
    if not new.authorized and new.reason == "duplicate_with_different_body":
        return False  # an answer to another body, not the purchase's decision
    return old is None or (not old.authorized and old.reason in UNREMEMBERED)


class RecentRefund(NamedTuple):
    """What the API keeps of a refund accepted recently (the listener's index)."""

    event_id: str
    refund_id: str
    account_id: str
    amount_cents: int

    @classmethod
    def of_fact(cls, fact: PurchaseRefunded) -> RecentRefund:
        return cls(fact.event_id, fact.refund_id, fact.account_id, fact.amount_cents)


_PURCHASE = (
    "SELECT event_id, purchase_id, account_id, isp_id, publisher_id, decision, reason,"
    " amount_cents, net_cents, vat_cents, vat_rate_bp, billing_period, occurred_at"
    " FROM purchases WHERE purchase_id = %s AND publisher_id = %s"
    " AND reason IS DISTINCT FROM 'duplicate_with_different_body'"
    # The decision that stands (see `replaces`): an authorization, else a remembered rejection.
    " ORDER BY decision = 'authorized' DESC,"
    " coalesce(reason IN ('stale_purchase', 'account_unknown'), false), event_id LIMIT 1"
)


async def find(db: Database, recent: Recent, publisher_id: str, purchase_id: str) -> Purchase:
    """The caller's purchase of this id, else a 404 that says nothing of other publishers'."""
    known: Purchase | None = recent.purchases.get((publisher_id, purchase_id))
    if known is not None and known.stands:
        return known
    rows = await db.query(_PURCHASE, (purchase_id, publisher_id))
    projected = Purchase.of_row(rows[0]) if rows else None
    if projected is not None and (known is None or projected.stands):
        return projected
    if known is not None:
        return known
    raise ApiError(404, "not_found", f"no purchase {purchase_id!r} of yours")


@dataclass(frozen=True)
class Refunds:
    """The refunds accepted of one purchase, by event id."""

    amounts: dict[str, int]
    refund_ids: frozenset[str]

    @property
    def refunded_cents(self) -> int:
        return sum(self.amounts.values())


async def refunds_of(db: Database, recent: Recent, purchase: Purchase) -> Refunds:
    """Projected and recent refunds together: a refund just decided may not be projected yet."""
    rows = await db.query(
        "SELECT event_id, refund_id, amount_cents FROM refunds WHERE purchase_id = %s"
        " AND account_id = %s AND publisher_id = %s AND decision = 'refunded'",
        (purchase.purchase_id, purchase.account_id, purchase.publisher_id),
    )
    amounts = {row["event_id"]: int(row["amount_cents"]) for row in rows}
    ids = {row["refund_id"] for row in rows}
    known: list[RecentRefund] = recent.refunds.get(
        (purchase.publisher_id, purchase.purchase_id), []
    )
    for refund in known:
        if refund.account_id == purchase.account_id:
            amounts[refund.event_id] = refund.amount_cents
            ids.add(refund.refund_id)
    return Refunds(amounts, frozenset(ids))


async def check_refund_window(db: Database, purchase: Purchase, now: datetime) -> None:
    """A 409 when the refund policy (above) no longer allows a new refund of this purchase."""
    if not purchase.authorized or purchase.isp_id is None or purchase.billing_period is None:
        return  # the workers refuse it with its reason (purchase_not_authorized)
    if now - purchase.occurred_at > timedelta(seconds=REFUND_AGE_MAX_SECONDS):
        days = REFUND_AGE_MAX_SECONDS // SECONDS_PER_DAY
        raise _window_closed(
            f"purchase {purchase.purchase_id!r} occurred more than {days} days ago"
        )
    last = purchase.billing_period
    for _ in range(REFUND_MARGIN_PERIODS):
        last = next_period(last)
    rows = await db.query(
        "SELECT state FROM billing_periods WHERE isp_id = %s AND period = %s",
        (purchase.isp_id, last),
    )
    if rows:
        raise _window_closed(
            f"purchase {purchase.purchase_id!r} was billed in {purchase.billing_period} and"
            f" {last} is {rows[0]['state']} for its ISP"
        )


def _window_closed(why: str) -> ApiError:
    return ApiError(
        409, "refund_window_closed",
        f"{why}: the refund window is over (see the refund policy); the purchase is on a sealed"
        " invoice, correct it with a credit note instead",
    )  # fmt: skip
