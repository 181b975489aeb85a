"""A seeded workload for the fault scenarios, sent in chunks between faults, with a log of every
command the broker acknowledged (the checker's ground truth of what must not be lost).

It holds consumer and enterprise accounts, purchases that probe the caps and velocity, exact
resends of a command (duplicates), a resend with another body, purchases whose occurred_at runs
backwards (out of order), a tenth of the purchases sent as v1 (an older producer: the workers read
v2), refunds (some too large), a close of March mid-stream so that the March
purchases sent after it are late, and poison messages."""

from __future__ import annotations

import contextlib
import json
import random
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError

from ledger.kafka import topics
from ledger.kafka.partitioning import partition_for
from ledger.kafka.settings import producer_config
from ledger.produce import LedgerProducer, close_commands, command_record
from schemas import codec
from schemas.commands import Command, PurchaseRequested
from tests import builders as b
from tests.world import T0, World

POISON = (
    b"{not json",
    b'{"type":"purchase.requested.v9","purchase_id":"x"}',
    b"\xff\xfe\x00",
    b'{"type":"purchase.requested.v1","amount_cents":-5}',
)


LATE_PURCHASES = 20


@dataclass(frozen=True)
class OldVersion:
    """A purchase sent as v1, the way a producer not yet upgraded sends it."""

    command: PurchaseRequested


@dataclass
class Workload:
    world: World
    setup: list[Command]
    chunks: list[list[Command | OldVersion | bytes]]  # bytes: a poison message
    close_after_chunk: int  # March is closed after this chunk is sent
    different_body: set[str]  # purchase ids sent again with another body


@dataclass
class Sent:
    acknowledged: list[dict[str, Any]] = field(default_factory=list)
    poison: set[tuple[str, int, int]] = field(default_factory=set)
    different_body: set[str] = field(default_factory=set)  # ids resent with another body
    unknown: list[dict[str, Any]] = field(default_factory=list)  # sends never acknowledged
    unknown_poison: list[int] = field(default_factory=list)  # their partitions


def build(seed: int, accounts: int, purchases: int, chunks: int) -> Workload:
    rng = random.Random(seed)
    world = World()
    consumers = [world.account(f"c{i}") for i in range(accounts)]
    companies = [world.account(f"e{i}") for i in range(max(1, accounts // 20))]
    setup: list[Command] = [b.open_account(a, world.isp.isp_id) for a in consumers]
    setup += [b.open_account(c, world.isp.isp_id, kind="enterprise") for c in companies]
    setup += [b.authorise(c, f"emp{n}", T0) for c in companies for n in range(3)]
    stream: list[Command | OldVersion | bytes] = []
    different_body: set[str] = set()
    bought: list[PurchaseRequested] = []
    clock = T0 + timedelta(hours=1)
    for i in range(purchases):
        clock += timedelta(seconds=rng.choice((2, 5, 30, 600, 3600)))
        if rng.random() < 0.3:
            company = rng.choice(companies)
            command = b.purchase(
                company,
                rng.randint(15, 2_000),
                clock,
                publisher_id=world.press.publisher_id,
                user_id=f"emp{rng.randrange(4)}",
            )
        else:
            when = clock - timedelta(hours=rng.randint(1, 30)) if rng.random() < 0.03 else clock
            command = b.purchase(
                rng.choice(consumers),
                rng.choice((99, 266, 499, 990, 1500)),
                when,
                publisher_id=rng.choice((world.vod.publisher_id, world.press.publisher_id)),
            )
        stream.append(OldVersion(command) if rng.random() < 0.1 else command)
        bought.append(command)
        roll = rng.random()
        if roll < 0.03:  # the same purchase sent again, as v1 or v2: one decision
            stream.append(OldVersion(command) if rng.random() < 0.5 else command)
        elif roll < 0.035:
            different_body.add(command.purchase_id)
            stream.append(
                b.purchase(
                    command.account_id,
                    command.amount_cents + 1,
                    command.occurred_at,
                    purchase_id=command.purchase_id,
                    publisher_id=command.publisher_id,
                )
            )
        elif roll < 0.065:
            earlier = rng.choice(bought)
            stream.append(
                b.refund(
                    earlier.account_id,
                    earlier.purchase_id,
                    rng.randint(1, earlier.amount_cents + 50),
                    clock + timedelta(seconds=1),
                )
            )
        if i % max(1, purchases // len(POISON)) == 7:
            stream.append(POISON[(i // 7) % len(POISON)])
    size = -(-len(stream) // chunks)
    parts = [stream[n : n + size] for n in range(0, len(stream), size)]
    # Sent after March is closed (in the last chunk): late, billed in the next period.
    parts[-1] += [
        b.purchase(rng.choice(consumers), 99, T0 + timedelta(days=rng.randint(5, 25)),
                   publisher_id=world.vod.publisher_id)
        for _ in range(LATE_PURCHASES)
    ]  # fmt: skip
    return Workload(world, setup, parts, len(parts) * 2 // 3 - 1, different_body)


# How long the fault sender waits for the broker's acknowledgements of one send before it calls
# their outcome unknown (the broker paused or a leader lost: the records may or may not be in the
# log), and how often it sends such records again, with the same command ids.
ACK_WAIT_SECONDS = 20.0
SEND_ATTEMPTS = 8


class Sender:
    """Sends and logs what the broker acknowledged (JSON lines, one per acknowledged command).

    A send whose outcome is unknown (no acknowledgement within ACK_WAIT_SECONDS) is not a
    failure: it is logged as unknown and sent again, from a new producer, with the same command id;
    the checker then counts it as present at most once, and an acknowledged one exactly once. A
    poison message whose outcome is unknown is not sent again (the checker allows its one dead
    letter)."""

    def __init__(self, bootstrap: str, partitions: int, log_path: Path) -> None:
        self.bootstrap, self.partitions, self.log_path = bootstrap, partitions, log_path
        self.sent = Sent()

    def send(self, items: list[Any]) -> None:
        pending = list(items)
        for _ in range(SEND_ATTEMPTS):
            pending = self._send_once(pending)
            if not pending:
                return
            print(f"[sender] {len(pending)} sends with an unknown outcome: sent again", flush=True)
        raise AssertionError(f"{len(pending)} commands unacknowledged after {SEND_ATTEMPTS} sends")

    def _send_once(self, items: list[Any]) -> list[Any]:
        """Sends the items; returns those whose outcome is unknown."""
        from kafka import KafkaProducer

        try:
            producer = KafkaProducer(**producer_config(self.bootstrap, "ledger-fault"))
        except KafkaError:  # no broker answered (paused): nothing was sent, send it all again
            time.sleep(1)
            return items
        futures = []
        try:
            for item in items:
                topic, key, value, partition = self._record(item)
                futures.append(
                    (producer.send(topic, key=key, value=value, partition=partition), item)
                )
            with contextlib.suppress(KafkaError):
                producer.flush(timeout=ACK_WAIT_SECONDS)
        finally:
            # Unacknowledged batches are abandoned, not awaited: what the broker already holds of
            # them may still be written (an unknown outcome), the rest is sent again.
            producer.close(timeout=0)
        unknown: list[Any] = []
        with self.log_path.open("a") as log:
            for future, item in futures:
                if not (future.is_done and future.succeeded()):
                    entry = {"id": _item_id(item), "outcome": "unknown"}
                    self.sent.unknown.append(entry)
                    log.write(json.dumps(entry) + "\n")
                    if isinstance(item, bytes):
                        self.sent.unknown_poison.append(len(item) % self.partitions)
                    else:
                        unknown.append(item)
                    continue
                meta = future.value
                if isinstance(item, bytes):
                    if meta.topic == topics.COMMANDS:
                        self.sent.poison.add((meta.topic, meta.partition, meta.offset))
                    continue
                command = item.command if isinstance(item, OldVersion) else item
                entry = {
                    "type": command.__struct_config__.tag,
                    "id": _command_id(command),
                    "account_id": getattr(command, "account_id", None),
                    "partition": meta.partition,
                    "offset": meta.offset,
                }
                self.sent.acknowledged.append(entry)
                log.write(json.dumps(entry) + "\n")
        return unknown

    def _record(self, item: Any) -> tuple[str, bytes | None, bytes, int]:
        if isinstance(item, OldVersion):
            old = item.command.downcast()
            assert old is not None
            account = item.command.account_id
            return (topics.COMMANDS, account.encode(), codec.encode(old),
                    partition_for(account, self.partitions))  # fmt: skip
        if isinstance(item, bytes):
            return topics.COMMANDS, b"poison", item, len(item) % self.partitions
        topic, partition, key, value = command_record(item, self.partitions)
        return topic, key, value, partition

    def send_reference(self, records: list[Any]) -> None:
        with LedgerProducer(self.bootstrap, self.partitions, client_id="ledger-fault") as producer:
            for record in records:
                producer.send_reference(record)

    def close_march(self, world: World) -> None:
        from datetime import UTC, datetime

        commands = close_commands(
            world.isp.isp_id, "2006-03", self.partitions, f"close-{world.run}", datetime.now(UTC)
        )
        self.send(list(commands))


def _item_id(item: Any) -> str:
    if isinstance(item, bytes):
        return "poison"
    return _command_id(item.command if isinstance(item, OldVersion) else item)


def _command_id(command: Any) -> str:
    for name in ("purchase_id", "refund_id", "command_id"):
        if hasattr(command, name) and not (name == "purchase_id" and hasattr(command, "refund_id")):
            return str(getattr(command, name))
    raise AssertionError(f"no id in {command!r}")


def home_partition(account_id: str, partitions: int) -> int:
    return partition_for(account_id, partitions)
