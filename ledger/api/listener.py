"""The API's view of decisions: a reader of every partition of ledger.events (no consumer group:
each API process sees every fact), which answers the requests waiting for their decision and keeps
the recent decisions for GET and refunds.

A request registers its wait before its command is produced, so the fact cannot arrive first.
Older decisions are in PostgreSQL (ledger.api.purchases): at start-up the reader begins where the
projection writer's stored offsets are, so that the two together hold every decision, and at most
START_EVENTS_MAX_PER_PARTITION back from the end, so that start-up does not grow with traffic.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Mapping
from typing import NamedTuple

from ledger.api.purchases import Purchase, RecentRefund, replaces
from ledger.kafka import topics
from ledger.kafka.follow import follow
from ledger.kafka.settings import READER_OFFSET_RESET_LATEST
from schemas import codec
from schemas.facts import (
    AccountBlocked,
    AccountOpened,
    AccountUnblocked,
    CommandRejected,
    EmployeeAuthorised,
    EmployeeRevoked,
    Fact,
    LimitsSet,
    PaymentCommandRejected,
    PaymentReserved,
    PaymentVoided,
    PurchaseAuthorized,
    PurchaseRefunded,
    PurchaseRejected,
    RefundRejected,
)

log = logging.getLogger("ledger.api.listener")
# What start-up reads at most per partition, when the projection writer is further behind: 2 to 3
# s for 4 partitions (DecisionListener.apply decodes and indexes 125,000 purchase facts/s on the
# 2-core development machine); a purchase decided before that is found in PostgreSQL once the
# writer has projected it.
START_EVENTS_MAX_PER_PARTITION = 70_000
RECENT_MAX = 500_000  # purchases (and purchases with refunds) kept, oldest forgotten first
POLL_TIMEOUT_MS = 200
WaitKey = tuple[str, str, str]  # (kind, id, body fingerprint or "")
PurchaseKey = tuple[str, str]  # (publisher_id, purchase_id): an id is the publisher's to choose


class Account(NamedTuple):
    """What the checkout needs of an account (issue 14): its ISP (an assertion from another ISP
    is refused, wrong_isp), and for Internet Plus Pro the company shown on the page."""

    isp_id: str
    kind: str
    company_name: str | None


def wait_key(fact: Fact) -> WaitKey | None:
    if isinstance(fact, PurchaseAuthorized | PurchaseRejected):
        return ("purchase", fact.purchase_id, fact.body_fingerprint)
    if isinstance(fact, PurchaseRefunded | RefundRejected):
        return ("refund", fact.refund_id, fact.body_fingerprint)
    admin = (AccountOpened, AccountBlocked, AccountUnblocked, LimitsSet, EmployeeAuthorised,
             EmployeeRevoked, CommandRejected)  # fmt: skip
    if isinstance(fact, admin):
        return ("command", fact.command_id, "")
    # A held payment's hold, capture or void: under the payment id and the fingerprint of the
    # command decided, as a purchase (a refused hold is a purchase.rejected, a capture a
    # purchase.authorized, both under that key too).
    if isinstance(fact, PaymentReserved | PaymentVoided | PaymentCommandRejected):
        return ("purchase", fact.payment_id, fact.body_fingerprint)
    return None


class DecisionListener:
    def __init__(self, bootstrap_servers: str, partitions: int) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._partitions = partitions
        self._waiters: dict[WaitKey, list[asyncio.Future[Fact]]] = {}
        # What GET and refunds need of each decision, not the whole fact: at RECENT_MAX the
        # facts themselves held 1.1 GiB (the half year at scale 1, issue 13).
        self.purchases: OrderedDict[PurchaseKey, Purchase] = OrderedDict()
        self.refunds: OrderedDict[PurchaseKey, list[RecentRefund]] = OrderedDict()
        self.accounts: OrderedDict[str, Account] = OrderedDict()
        self.ready = asyncio.Event()

    def expect(self, key: WaitKey) -> asyncio.Future[Fact]:
        future: asyncio.Future[Fact] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(key, []).append(future)
        return future

    def forget(self, key: WaitKey, future: asyncio.Future[Fact]) -> None:
        waiting = self._waiters.get(key, [])
        if future in waiting:
            waiting.remove(future)
        if not waiting:
            self._waiters.pop(key, None)

    def _index(self, fact: Fact) -> None:
        if isinstance(fact, AccountOpened):
            self.accounts[fact.account_id] = Account(fact.isp_id, fact.kind, fact.company_name)
            while len(self.accounts) > RECENT_MAX:
                self.accounts.popitem(last=False)
        elif isinstance(fact, PurchaseAuthorized | PurchaseRejected):
            key = (fact.publisher_id, fact.purchase_id)
            decision = Purchase.of_fact(fact)
            if replaces(decision, self.purchases.get(key)):
                self.purchases[key] = decision
            if key in self.purchases:
                self.purchases.move_to_end(key)
            while len(self.purchases) > RECENT_MAX:
                self.purchases.popitem(last=False)
        elif isinstance(fact, PurchaseRefunded):
            key = (fact.publisher_id, fact.purchase_id)
            known = self.refunds.setdefault(key, [])
            if all(r.event_id != fact.event_id for r in known):
                known.append(RecentRefund.of_fact(fact))
            self.refunds.move_to_end(key)
            while len(self.refunds) > RECENT_MAX:
                self.refunds.popitem(last=False)

    def apply(self, raw: bytes) -> None:
        try:
            fact = codec.decode_fact(raw)
        except codec.InvalidMessage:
            return  # not ours to judge: the workers wrote it
        self._index(fact)
        key = wait_key(fact)
        for future in self._waiters.pop(key, []) if key else []:
            if not future.done():
                future.set_result(fact)

    async def run(self, projected: Mapping[int, int]) -> None:
        """Read ledger.events for ever, from the projection writer's stored offsets (`projected`:
        partition → next offset; {} when they could not be read)."""

        def start_at(partition: int, end: int) -> int:
            bound = max(0, end - START_EVENTS_MAX_PER_PARTITION)
            stored = projected.get(partition, 0)
            if stored < bound:
                log.warning(
                    "partition %d: the projection writer is %d events behind; purchases"
                    " decided before offset %d are found once projected",
                    partition, end - stored, bound,
                )  # fmt: skip
            return max(bound, min(stored, end))

        await follow(
            self._bootstrap_servers, "ledger-api-decisions", topics.EVENTS, self._partitions,
            self.apply, self.ready.set, start_at=start_at,
            auto_offset_reset=READER_OFFSET_RESET_LATEST, poll_timeout_ms=POLL_TIMEOUT_MS,
        )  # fmt: skip
