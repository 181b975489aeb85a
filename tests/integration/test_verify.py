"""`ledger verify` on the real stack (issue 15, part 2): a scenario decided by a worker killed with
-9 mid-stream and by the one started after it, projected by the writer, with a publisher's share
changed mid-month and another publisher blocked mid-stream (part 1: effective-dated reference
changes in the commands' order), re-decides from offset 0 to the same facts byte for byte and the
same balances as the workers' tables and PostgreSQL; then a forged fact written to ledger.events
is named by its offset.

On a stack of its own (the fault suite's supervisor, on ports of its own): the session's stack
holds facts that other tests wrote straight to ledger.events, which no worker decided, and verify
re-decides everything on the log."""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import msgspec
import pytest

from ledger.bench.stream import wait_idle
from ledger.kafka import topics
from ledger.kafka.groups import APP_ID
from ledger.produce import LedgerProducer
from schemas.commands import Command
from schemas.facts import PurchaseAuthorized, PurchaseRejected
from schemas.reference import ReferenceRecord
from tests import builders as b
from tests.fault import supervisor as fault_supervisor
from tests.fault.supervisor import FaultLog, Supervisor
from tests.harness import (
    PROJECT_ROOT,
    distinct_facts,
    end_offsets,
    metric,
    produce,
    read_until,
    wait_for,
)
from tests.world import T0, World

pytestmark = pytest.mark.integration
IDLE_SECONDS = 240.0
SPACING = timedelta(seconds=40)  # between two purchases of the workload


def _at(i: int) -> datetime:
    return T0 + SPACING * i


def _free_base() -> int:
    """Three consecutive free ports below the ephemeral range (broker, controller, PostgreSQL)."""
    for _ in range(200):
        base = random.randrange(20_000, 31_000)
        try:
            for port in range(base, base + 3):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", port))
        except OSError:
            continue
        return base
    raise RuntimeError("no three free ports")


@pytest.fixture
def own_stack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Supervisor]:
    monkeypatch.setattr(fault_supervisor, "PORT_BASE", _free_base())
    sup = Supervisor(tmp_path / "stack", FaultLog())
    try:
        sup.up()
        yield sup
    finally:
        sup.down()


def _workload(world: World, seed: int) -> list[Command]:
    rnd = random.Random(seed)
    names = [world.account(f"v{i}") for i in range(40)]
    commands: list[Command] = [b.open_account(n, world.isp.isp_id, when=T0) for n in names]
    for i in range(1_500):
        name = rnd.choice(names)
        command = b.purchase(
            name, rnd.choice((99, 266, 499, 990, 99_999)), _at(i),
            purchase_id=f"{name}-{i}",
            publisher_id=rnd.choice((world.vod, world.press, world.shady)).publisher_id,
        )  # fmt: skip
        commands.append(command)
        if rnd.random() < 0.05:
            commands.append(command)  # a client's retry: the same fact again
        if rnd.random() < 0.05:
            when = T0 + timedelta(seconds=40 * i + 5)
            commands.append(
                b.refund(name, command.purchase_id, command.amount_cents, when, refund_id=f"r-{i}")
            )
    return commands


def _verify(sup: Supervisor, out: Path) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "ledger.cli", "verify", "--quiet", "--json", str(out)],
        cwd=PROJECT_ROOT, env={**os.environ, **sup.env}, capture_output=True, text=True,
        timeout=600, check=False,
    )  # fmt: skip
    return done, json.loads(out.read_text()) if out.exists() else {}


def _caught_up(sup: Supervisor) -> bool:
    import psycopg

    with psycopg.connect(sup.dsn) as db:
        stored: dict[int, int] = dict(db.execute(
            "SELECT partition, next_offset FROM ledger.projection_offsets"
            " WHERE topic = 'ledger.events'").fetchall())  # fmt: skip
    ends = end_offsets(sup.bootstrap, topics.EVENTS)
    return all(stored.get(p, 0) >= end for p, end in ends.items() if end > 0)


def test_verify_is_equal_after_a_kill_9_and_names_a_forged_fact(
    own_stack: Supervisor, tmp_path: Path, seed: int
) -> None:
    sup = own_stack
    world = World()
    commands = _workload(world, seed)
    third, half = len(commands) // 3, len(commands) // 2
    # The share of `vod` goes from 60 % to 50 %, effective a little after the commands sent before
    # the change (the purchases between the change and its time still get 60 %); `press` is
    # blocked mid-stream, after the kill, effective a little after it is sent too.
    share_from = _at(_index(commands[third]) + 60)
    blocked_from = _at(_index(commands[half + 200]) + 60)
    cheaper: ReferenceRecord = msgspec.structs.replace(
        world.vod, revenue_share_bp=5_000, occurred_at=share_from, effective_at=share_from
    )
    blocked: ReferenceRecord = msgspec.structs.replace(
        world.press, blocked=True, occurred_at=blocked_from, effective_at=blocked_from
    )
    worker = sup.start_worker("w1")
    sup.start_writer()
    produce(sup.bootstrap, sup.partitions, world.records, commands[:third])
    produce(sup.bootstrap, sup.partitions, [cheaper], commands[third:half])
    wait_for(lambda: worker.alive() and _consumed(worker) >= half // 2, 240, "a part decided")
    sup.kill_worker("w1")  # mid-stream: its last batch's facts may be emitted again
    sup.start_worker("w2")
    produce(sup.bootstrap, sup.partitions, [], commands[half : half + 200])
    produce(sup.bootstrap, sup.partitions, [blocked], commands[half + 200 :])
    wait_idle(sup.bootstrap, APP_ID, IDLE_SECONDS)
    wait_for(lambda: _caught_up(sup), IDLE_SECONDS, "the projection writer to catch up")
    _check_the_changes_took_effect(sup, world, share_from, blocked_from)

    done, result = _verify(sup, tmp_path / "verify.json")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "verify: the log re-decides to the same facts and balances" in done.stdout
    assert result["equal"] and result["differences"] == 0
    # The reference changes are commands too, one per partition and record.
    total = len(commands) + (len(world.records) + 2) * sup.partitions
    assert result["commands"] == total
    assert result["facts"] == result["equal_facts"] == total  # one fact per command here
    assert result["recorded"] == result["facts"] + result["duplicates"]
    assert result["undecided_commands"] == 0
    assert result["postgres_compared"] and not result["postgres_balances_differ"]
    assert not result["workers_balances_differ"]
    assert result["events_per_second"] > 0 and "events/s" in done.stdout

    # A forged fact: the copy of a real purchase under another id, written to the broker.
    for name in list(sup.workers):
        sup.stop_worker(name)
    if sup.writer is not None:
        sup.writer.stop()
    partition, original = _a_purchase(sup)
    forged = json.loads(original.value)
    forged["purchase_id"] += "-forged"
    forged["event_id"] = forged["event_id"].replace(".", ".forged-", 1)
    with LedgerProducer(sup.bootstrap, sup.partitions, client_id="ledger-tests") as producer:
        sent = producer.send_raw(topics.EVENTS, original.key,
                                 json.dumps(forged).encode(), partition)  # fmt: skip
        producer.flush()
        offset = sent.get(timeout=30).offset
    done, result = _verify(sup, tmp_path / "forged.json")
    assert done.returncode == 4, done.stdout + done.stderr
    first = result["first_difference"]
    assert (first["kind"], first["partition"], first["events_offset"]) == (
        "extra",
        partition,
        offset,
    )
    assert "-forged" in first["recorded"] and first["re_decided"] is None
    assert f"extra fact at ledger.events[{partition}]@{offset}" in done.stdout
    assert result["differences"] == 1 and result["differences_by_kind"]["extra"] == 1


def _index(command: Command) -> int:
    """The workload's purchase number of a command (`{account}-{i}`, `r-{i}`)."""
    ids = getattr(command, "purchase_id", "")
    return int(ids.rsplit("-", 1)[1])


def _check_the_changes_took_effect(
    sup: Supervisor, world: World, share_from: datetime, blocked_from: datetime
) -> None:
    ends = end_offsets(sup.bootstrap, topics.EVENTS)
    records = read_until(sup.bootstrap, topics.EVENTS, dict.fromkeys(ends, 0),
                         lambda r: len(r) >= sum(ends.values()), 120)  # fmt: skip
    facts = distinct_facts(r for r in records if not topics.is_marker(r.key))
    vod = [
        f
        for f in facts.values()
        if isinstance(f, PurchaseAuthorized) and f.publisher_id == world.vod.publisher_id
    ]
    assert {f.revenue_share_bp for f in vod if f.occurred_at < share_from} == {6_000}
    assert {f.revenue_share_bp for f in vod if f.occurred_at >= share_from} == {5_000}
    press = [f for f in facts.values()
             if isinstance(f, PurchaseAuthorized | PurchaseRejected)
             and f.publisher_id == world.press.publisher_id]  # fmt: skip
    blocked = [
        f for f in press if isinstance(f, PurchaseRejected) and f.reason == "publisher_blocked"
    ]
    assert blocked and all(f.occurred_at >= blocked_from for f in blocked)
    assert not [
        f for f in press if isinstance(f, PurchaseAuthorized) and f.occurred_at >= blocked_from
    ]
    assert [f for f in press if isinstance(f, PurchaseAuthorized)]  # before the block


def _consumed(worker: Any) -> float:
    try:
        return metric(worker.metrics(), "ledger_commands_consumed_total")
    except OSError:
        return 0.0


def _a_purchase(sup: Supervisor) -> tuple[int, Any]:
    ends = end_offsets(sup.bootstrap, topics.EVENTS)
    records = read_until(sup.bootstrap, topics.EVENTS, dict.fromkeys(ends, 0),
                         lambda r: sum(1 for _ in r) >= sum(ends.values()), 60)  # fmt: skip
    purchase = next(r for r in reversed(records) if b'"purchase.authorized.v1"' in r.value)
    return purchase.partition, purchase
