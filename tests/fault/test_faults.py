"""Fault scenarios on real processes, each on a stack of its own, each proven by the independent
checker (tests/fault/checker.py). Every scenario prints its seed and a JSON result (also written
to .ledger/fault-results/<scenario>.json); `LEDGER_FAULT_SEED=<seed>` replays one.

`mixed` is the bounded subset that runs in `make test` and CI, on two workers: worker kill -9
and an immediate restart (twice), a worker killed with -9 and left down past its 10 s session so
that the other takes its partitions (a rebalance, and another when it returns), the projection
writer dying between its database commit and its Kafka commit and killed with -9, PostgreSQL
stopped immediately for 5 to 30 s, with duplicates, out-of-order and late purchases and poison
throughout. `make fault` adds: many worker kills, a graceful handover between two workers,
a worker paused past its session timeout, and the broker killed and restarted.
"""

from __future__ import annotations

import json
import os
import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import pytest

from ledger.bench.stream import wait_idle
from ledger.kafka.groups import APP_ID
from tests.fault import checker
from tests.fault.supervisor import FaultLog, Supervisor
from tests.fault.workload import Sender, Workload, build
from tests.harness import PROJECT_ROOT, end_offsets, metric, wait_for

LAG_BOUND_SECONDS = 240.0
METRICS_WAIT_SECONDS = 30.0
RESULTS = PROJECT_ROOT / ".ledger" / "fault-results"
# One more proof (issue 15): the log re-decided from offset 0 by `ledger verify` gives the same
# facts, byte for byte, and the same balances as the workers and PostgreSQL. It runs the ledger's
# own code, so it is not part of the independent checker; at these sizes (at most 5,000
# purchases) it takes seconds, in this process. LEDGER_FAULT_VERIFY=0 leaves it out.
VERIFY = os.environ.get("LEDGER_FAULT_VERIFY", "1") != "0"


@dataclass
class Scenario:
    name: str
    workers: int
    accounts: int
    purchases: int
    chunks: int
    writer_crash_batch: int  # 0: none
    fault: Callable[[Supervisor, int, random.Random], None]  # after chunk i
    # A worker resumes after others took its partitions: its late facts must be identical
    # duplicates (ledger verify compares every fact with the log re-decided; it must run).
    zombie: bool = False
    brokers: int = 1  # 3: a local cluster, replication 3 (tests/fault/test_broker_faults.py)


def _seed() -> int:
    given = os.environ.get("LEDGER_FAULT_SEED")
    return int(given) if given else random.SystemRandom().randrange(1, 10**6)


def _writer_stored(sup: Supervisor) -> dict[int, int]:
    import psycopg

    with psycopg.connect(sup.dsn) as db:
        return dict(
            db.execute(
                "SELECT partition, next_offset FROM ledger.projection_offsets"
                " WHERE topic = 'ledger.events'"
            ).fetchall()
        )


def _caught_up(sup: Supervisor) -> bool:
    if sup.writer_exited():
        sup.start_writer()
    ends = end_offsets(sup.bootstrap, "ledger.events")
    stored = _writer_stored(sup)
    return all(stored.get(p, 0) >= end for p, end in ends.items() if end > 0)


def _send_all(
    sup: Supervisor, scenario: Scenario, work: Workload, sender: Sender, rng: random.Random
) -> None:
    sender.send_reference(list(work.world.records))
    time.sleep(2)  # the workers' reference readers see the ISP and publishers
    sender.send(list(work.setup))
    for index, chunk in enumerate(work.chunks):
        sender.send(list(chunk))
        if index == work.close_after_chunk:
            sender.close_march(work.world)
            sup.log.note("close of 2006-03 sent: March purchases from now on are late")
        time.sleep(rng.uniform(0.5, 2.0))  # let the stream get into the chunk
        scenario.fault(sup, index, rng)
        if sup.writer_exited():
            sup.log.note("the projection writer is gone (injected crash): restarting it")
            sup.start_writer()


def _metrics_agree(sup: Supervisor) -> dict[str, Any]:
    assert sup.writer is not None
    # A writer or worker restarted by the last fault may not serve its metrics yet (many-kills,
    # seed 421927: the writer restarted at 47.80 s, the lag was zero 0.5 s later).
    samples = sup.writer.metrics(wait_seconds=METRICS_WAIT_SECONDS)
    consumed = metric(samples, "ledger_projection_records_consumed_total")
    outcomes = metric(samples, "ledger_projection_records_total")
    workers = {}
    for name, worker in sup.workers.items():
        if worker.alive():
            w = worker.metrics(wait_seconds=METRICS_WAIT_SECONDS)
            workers[name] = {
                "commands_consumed": metric(w, "ledger_commands_consumed_total"),
                "decisions": metric(w, "ledger_decisions_total"),
                "wrong_partition": metric(w, "ledger_dead_letters_total{reason=wrong_partition"),
            }
    return {"writer_consumed": consumed, "writer_outcomes": outcomes, "workers": workers}


def _verified(sup: Supervisor) -> tuple[bool, str, dict[str, Any]]:
    from ledger.kafka.groups import ACCOUNTS_TABLE
    from ledger.tables import read_summaries
    from projections.verify import verify

    result = verify(
        sup.bootstrap, sup.dsn, sup.partitions,
        lambda: read_summaries(sup.bootstrap, ACCOUNTS_TABLE, sup.partitions), processes=1,
    )  # fmt: skip
    first = result.first
    detail = (
        first.describe()
        if first is not None
        else "; ".join((result.workers_differ + result.postgres_differ)[:3])
    )
    names = ("commands", "facts", "equal", "duplicates", "differences", "undecided_commands")
    figures = {name: result.total(name) for name in names}
    return result.equal, detail, {**figures, "seconds": round(result.seconds, 2)}


def _seals_verified(sup: Supervisor) -> tuple[bool, str, dict[str, Any]]:
    """Every seal, invoice number and link of the chain recomputed from the facts PostgreSQL
    holds (`ledger verify-seals`), after the faults."""
    from projections.db import connect
    from projections.seals import verify_seals

    with connect(sup.dsn) as db:
        checks = verify_seals(db)
    differences = [d for check in checks.values() for d in check.differences]
    periods = sum(check.periods for check in checks.values())
    figures = {"isps": len(checks), "periods": periods, "differences": len(differences)}
    return periods > 0 and not differences, "; ".join(differences[:3]), figures


def _checker_sees_forgery(sup: Supervisor, sender: Sender) -> bool:
    """The checker is not vacuous: one cent more on one party's debits, and it says so."""
    import psycopg

    forge = (
        "UPDATE ledger.balances SET debits_cents = debits_cents + %s WHERE (party, party_id) ="
        " (SELECT party, party_id FROM ledger.balances ORDER BY party_id LIMIT 1)"
    )
    with psycopg.connect(sup.dsn, autocommit=True) as db:
        db.execute(forge.encode(), (1,))
    try:
        again = checker.check(
            sup.bootstrap,
            sup.dsn,
            sender.sent.acknowledged,
            sender.sent.poison,
            sender.sent.different_body,
            sender.sent.unknown,
            sender.sent.unknown_poison,
        )
    finally:
        with psycopg.connect(sup.dsn, autocommit=True) as db:
            db.execute(forge.encode(), (-1,))
    return [p.name for p in again.proofs if not p.ok] == [
        "debits and credits per party equal the checker's own"
    ]


def run(scenario: Scenario, tmp: Path) -> dict[str, Any]:
    seed = _seed()
    print(f"\nfault scenario {scenario.name}: seed {seed} (LEDGER_FAULT_SEED={seed} replays it)")
    rng = random.Random(seed)
    log = FaultLog()
    sup = Supervisor(tmp / "stack", log, scenario.brokers)
    result: dict[str, Any] = {"scenario": scenario.name, "seed": seed}
    if scenario.zombie and not VERIFY:
        raise AssertionError(f"{scenario.name} proves its zombie with ledger verify: keep it on")
    try:
        sup.up()
        for n in range(1, scenario.workers + 1):
            sup.start_worker(f"w{n}")
        sup.start_writer(scenario.writer_crash_batch)
        work = build(seed, scenario.accounts, scenario.purchases, scenario.chunks)
        sender = Sender(sup.bootstrap, sup.partitions, tmp / "acknowledged.jsonl")
        sender.sent.different_body = work.different_body
        _send_all(sup, scenario, work, sender, rng)
        healed = time.monotonic()
        log.note("faults healed: every process runs; waiting for the lag to return to zero")
        wait_idle(sup.bootstrap, APP_ID, LAG_BOUND_SECONDS)
        wait_for(lambda: _caught_up(sup), LAG_BOUND_SECONDS, "the projection writer to catch up")
        recovery = time.monotonic() - healed
        log.note(f"lag back to zero {recovery:.1f} s after the faults healed")
        checked = checker.check(
            sup.bootstrap,
            sup.dsn,
            sender.sent.acknowledged,
            sender.sent.poison,
            sender.sent.different_body,
            sender.sent.unknown,
            sender.sent.unknown_poison,
        )
        agree = _metrics_agree(sup)
        checked.prove(
            "writer metrics: consumed = applied + duplicates + dead-lettered + markers",
            agree["writer_consumed"] == agree["writer_outcomes"],
            str(agree),
        )
        checked.prove(
            "worker metrics: commands consumed = decisions (+ wrong-partition letters)",
            all(
                w["commands_consumed"] == w["decisions"] + w["wrong_partition"]
                for w in agree["workers"].values()
            ),
            str(agree),
        )
        if VERIFY:
            equal, detail, result["verify"] = _verified(sup)
            checked.prove("ledger verify: the log re-decides to the same facts", equal, detail)
            if scenario.zombie:
                figures = result["verify"]
                checked.prove(
                    "the resumed zombie wrote only identical duplicates, no different fact",
                    figures["differences"] == 0,
                    f"{figures['duplicates']} duplicates, {figures['differences']} differences",
                )
            equal, detail, result["verify_seals"] = _seals_verified(sup)
            checked.prove("ledger verify-seals: every sealed period recomputes", equal, detail)
        checked.prove("the checker sees a forged balance", _checker_sees_forgery(sup, sender))
        checked.prove(
            f"lag back to zero within {LAG_BOUND_SECONDS:.0f} s",
            recovery <= LAG_BOUND_SECONDS,
            f"{recovery:.1f} s",
        )
        result |= {
            "ok": checked.ok,
            "lag_recovery_seconds": round(recovery, 1),
            "figures": checked.figures,
            "proofs": [asdict(p) for p in checked.proofs],
            "faults": log.entries,
            "metrics": agree,
        }
    except BaseException as error:
        result |= {"ok": False, "error": repr(error), "faults": log.entries}
        raise
    finally:
        RESULTS.mkdir(parents=True, exist_ok=True)
        (RESULTS / f"{scenario.name}.json").write_text(json.dumps(result, indent=2, default=str))
        print(
            json.dumps(
                {k: v for k, v in result.items() if k not in ("faults", "proofs")}, default=str
            )
        )
        sup.down()
    assert result["ok"], checked.failures()
    return result


# -- the scenarios ---------------------------------------------------------------------------


def _mixed(sup: Supervisor, index: int, rng: random.Random) -> None:
    if index in (1, 6):  # restarted at once
        sup.kill_worker("w1")
        time.sleep(rng.uniform(0.5, 3))
        sup.start_worker("w1")
    if index == 4:  # down past the 10 s session: w1 takes w2's partitions, then gives them back
        sup.kill_worker("w2")
        time.sleep(rng.uniform(13, 16))
        sup.start_worker("w2")
    if index == 2:
        sup.kill_writer()
        sup.start_writer()
    if index == 3:
        sup.stop_postgres(rng.uniform(5, 30))


def _many_kills(sup: Supervisor, index: int, rng: random.Random) -> None:
    victim = f"w{rng.randint(1, 2)}"
    sup.kill_worker(victim)
    time.sleep(rng.uniform(0.2, 4))
    sup.start_worker(victim)
    if index % 3 == 0:
        sup.kill_writer()
        sup.start_writer()


def _handover(sup: Supervisor, index: int, rng: random.Random) -> None:
    if index == 1:
        sup.stop_worker("w2")  # w1 takes over its partitions
    if index == 4:
        sup.start_worker("w2")


def _pause(sup: Supervisor, index: int, rng: random.Random) -> None:
    if index == 2:
        sup.pause_worker("w1", 45)  # past the 10 s session timeout: w2 takes over meanwhile


def _broker(sup: Supervisor, index: int, rng: random.Random) -> None:
    if index == 2:
        sup.kill_broker(rng.uniform(3, 10))


_FULL = (pytest.mark.fault, pytest.mark.timeout(1800))
SCENARIOS = [
    # name, workers, accounts, purchases, chunks, writer crash batch, faults
    pytest.param(Scenario("mixed", 2, 60, 6_000, 8, 4, _mixed),
                 marks=(pytest.mark.fault_subset, pytest.mark.timeout(900)), id="mixed"),
    pytest.param(Scenario("many-kills", 2, 60, 5_000, 10, 7, _many_kills), marks=_FULL,
                 id="many-kills"),
    pytest.param(Scenario("handover", 2, 40, 3_000, 6, 0, _handover), marks=_FULL, id="handover"),
    pytest.param(Scenario("pause", 2, 40, 3_000, 5, 0, _pause, zombie=True), marks=_FULL,
                 id="pause"),
    pytest.param(Scenario("broker", 1, 40, 3_000, 5, 0, _broker), marks=_FULL, id="broker"),
]  # fmt: skip


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_nothing_lost_nothing_counted_twice(scenario: Scenario, tmp_path: Path) -> None:
    run(scenario, tmp_path)
