"""The API's view of decisions: a reader of every partition of ledger.events (no consumer group:
each API process sees every fact), which answers the requests waiting for their decision and keeps
the recent decisions for GET.

A request registers its wait before its command is produced, so the fact cannot arrive first.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from typing import Any

from ledger import topics
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
    PurchaseAuthorized,
    PurchaseRefunded,
    PurchaseRejected,
    RefundRejected,
)

log = logging.getLogger("ledger.api.listener")
LOOKBACK_SECONDS = 24 * 3600  # GET answers for purchases decided in the last day
RECENT_MAX = 500_000  # purchases indexed for GET, oldest forgotten first
POLL_TIMEOUT_MS = 200
WaitKey = tuple[str, str, str]  # (kind, id, body fingerprint or "")


def wait_key(fact: Fact) -> WaitKey | None:
    if isinstance(fact, PurchaseAuthorized | PurchaseRejected):
        return ("purchase", fact.purchase_id, fact.body_fingerprint)
    if isinstance(fact, PurchaseRefunded | RefundRejected):
        return ("refund", fact.refund_id, fact.body_fingerprint)
    admin = (AccountOpened, AccountBlocked, AccountUnblocked, LimitsSet, EmployeeAuthorised,
             EmployeeRevoked, CommandRejected)  # fmt: skip
    if isinstance(fact, admin):
        return ("command", fact.command_id, "")
    return None


class DecisionListener:
    def __init__(self, bootstrap_servers: str, partitions: int) -> None:
        self._bootstrap_servers = bootstrap_servers
        self._partitions = partitions
        self._waiters: dict[WaitKey, list[asyncio.Future[Fact]]] = {}
        self.purchases: OrderedDict[str, PurchaseAuthorized | PurchaseRejected] = OrderedDict()
        self.refunds: dict[str, list[PurchaseRefunded]] = {}
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
        if isinstance(fact, PurchaseAuthorized) or (
            isinstance(fact, PurchaseRejected) and fact.reason != "duplicate_with_different_body"
        ):
            self.purchases.setdefault(fact.purchase_id, fact)
            self.purchases.move_to_end(fact.purchase_id)
            while len(self.purchases) > RECENT_MAX:
                dropped, _ = self.purchases.popitem(last=False)
                self.refunds.pop(dropped, None)
        elif isinstance(fact, PurchaseRefunded):
            known = self.refunds.setdefault(fact.purchase_id, [])
            if all(r.event_id != fact.event_id for r in known):
                known.append(fact)

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

    async def run(self) -> None:
        from aiokafka import AIOKafkaConsumer, TopicPartition

        consumer = AIOKafkaConsumer(
            bootstrap_servers=self._bootstrap_servers, group_id=None, enable_auto_commit=False,
            auto_offset_reset="latest", isolation_level="read_committed",
            client_id="ledger-api-decisions",
        )  # fmt: skip
        await consumer.start()
        try:
            # The partition count comes from the stack: aiokafka's partitions_for_topic answers None
            # until the consumer has subscribed, and this one assigns.
            assigned = [TopicPartition(topics.EVENTS, p) for p in range(self._partitions)]
            consumer.assign(assigned)
            since = int((time.time() - LOOKBACK_SECONDS) * 1000)
            found: dict[Any, Any] = await consumer.offsets_for_times(dict.fromkeys(assigned, since))
            ends = await consumer.end_offsets(assigned)
            for tp in assigned:
                start = found.get(tp)
                consumer.seek(tp, start.offset if start is not None else ends[tp])
            while True:
                if not self.ready.is_set():
                    positions = [await consumer.position(tp) for tp in assigned]
                    if all(p >= ends[tp] for p, tp in zip(positions, assigned, strict=True)):
                        self.ready.set()
                batches = await consumer.getmany(timeout_ms=POLL_TIMEOUT_MS)
                for records in batches.values():
                    for record in records:
                        self.apply(record.value)
        finally:
            await consumer.stop()
