"""Issue 16: an upgrade mid-stream, on real processes. Two workers start on the previous release
(the commit before `ledger.upgrade_requested.v1` was added, taken from git: real old code, not a
switch in the new one); purchases flow; w1 then w2 are stopped gracefully and started again on
this build, one at a time, while purchases keep coming; once both run it, the activation
(`ledger.upgrade_requested.v1 {feature: authorized_v2}`) goes to every partition, and more
purchases follow. An older build would dead-letter the activation's unknown kind, which is why
it is sent only after the last worker runs the new build.

Proven, besides everything `run` proves (the independent checker across the boundary, `ledger
verify` byte for byte with this build's code, the metrics): the previous release really is old
code; every partition passed the activation; on every partition the purchases first emitted
before its `ledger.upgraded.v1` are `purchase.authorized.v1` and those after it `.v2`, some of
each; the projection applied both versions; and `ledger reconcile`'s fact check finds each fact
of either version in PostgreSQL as it is on the topic.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import tarfile
import time
from collections import defaultdict
from io import BytesIO
from pathlib import Path
from typing import Any, ClassVar

import pytest

from schemas.commands import Feature
from tests.fault import checker, test_faults
from tests.fault.supervisor import FaultLog, Supervisor, run_quietly
from tests.fault.test_faults import Scenario, run
from tests.harness import PROJECT_ROOT, Worker

# Added by the upgrade: the release before it is the parent of the commit that added it.
MARKER = "schemas/json/ledger.upgrade_requested.v1.json"
ACTIVATION = "upgrade-authorized_v2"
V1, V2 = "purchase.authorized.v1", "purchase.authorized.v2"


def _git(*args: str) -> bytes:
    done = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, check=False)
    if done.returncode:
        raise AssertionError(f"git {' '.join(args)}: {done.stderr.decode().strip()}")
    return done.stdout


def previous_release(into: Path) -> Path:
    """The tree of the release before the upgrade, extracted from git (no work tree, nothing
    left in the repository)."""
    added = _git("log", "--diff-filter=A", "--format=%H", "--", MARKER).split()
    assert added, f"no commit adds {MARKER}: a clone with its history is needed"
    tar = _git("archive", "--format=tar", f"{added[-1].decode()}^")
    into.mkdir(parents=True)
    with tarfile.open(fileobj=BytesIO(tar)) as archive:
        archive.extractall(into, filter="data")
    return into


def build_env(root: Path) -> dict[str, str]:
    """A process of the ledger from another tree, with this interpreter and its packages:
    PYTHONSAFEPATH keeps the working directory (this tree) off sys.path."""
    return {"PYTHONSAFEPATH": "1", "PYTHONPATH": str(root)}


class RollingSupervisor(Supervisor):
    """A stack whose workers each run a build of their own: `builds[name]` (an environment over
    the stack's), the previous release until rolled."""

    old: ClassVar[dict[str, str]] = {}

    def __init__(self, home: Path, log: FaultLog, brokers: int = 1) -> None:
        super().__init__(home, log, brokers)
        self.builds: dict[str, dict[str, str]] = defaultdict(lambda: dict(self.old))

    def start_worker(self, name: str) -> Worker:
        env = {**self.env, **self.builds[name]}
        worker = Worker(name, self.home / "worker-state" / name, env=env, static=True)
        worker.start()
        self.workers[name] = worker
        which = "the previous release" if self.builds[name] else "this build"
        self.log.note(f"worker {name} started on {which} (pid {worker.pid})")
        return worker

    def roll(self, name: str) -> None:
        """Stop the worker gracefully, start it again on this build."""
        self.stop_worker(name)
        self.builds[name] = {}
        worker = self.start_worker(name)
        worker.metrics(wait_seconds=60)  # up and serving before the next worker goes
        self.log.note(f"worker {name} serves its metrics on this build")

    def activate(self, feature: Feature = "authorized_v2") -> None:
        """`ledger activate`, as an operator runs it once every worker runs this build."""
        command = [sys.executable, "-m", "ledger.cli", "activate", feature]
        done = run_quietly(command, self.env)
        assert done.returncode == 0, done.stderr
        self.log.note(f"ledger activate {feature}: {done.stdout.strip()}")


def _upgrade(sup: Supervisor, index: int, rng: random.Random) -> None:
    assert isinstance(sup, RollingSupervisor)
    if index == 1:
        sup.roll("w1")  # w2 (previous release) holds every partition meanwhile
    if index == 3:
        sup.roll("w2")
    if index == 6:
        assert all(not sup.builds[name] for name in sup.workers), "a worker runs the old build"
        sup.activate()


def _versions(result: checker.Checked, bootstrap: str, dsn: str) -> None:
    """The boundary, from the topic: per partition, the first emission of each authorized
    purchase against the partition's ledger.upgraded.v1."""
    import psycopg

    seen: set[str] = set()
    passed: dict[int, int] = {}  # partition → position of its activation
    firsts: list[tuple[int, int, str]] = []
    for partition, offset, _key, value in checker.read_topic(bootstrap, "ledger.events"):
        if value == b"{}":
            continue
        fact = json.loads(value)
        if fact["type"] == "ledger.upgraded.v1" and fact["command_id"] == ACTIVATION:
            passed.setdefault(partition, offset)
        elif fact["type"] in (V1, V2) and fact["event_id"] not in seen:
            seen.add(fact["event_id"])
            firsts.append((partition, offset, fact["type"]))
    partitions = {p for p, _, _ in firsts}
    result.prove(
        "the activation passed every partition",
        set(passed) >= partitions and bool(partitions),
        f"passed {sorted(passed)}, purchases on {sorted(partitions)}",
    )
    wrong = [(p, o, t) for p, o, t in firsts if (t == V2) != (p in passed and o > passed[p])]
    counts: dict[tuple[int, str], int] = defaultdict(int)
    for p, _, t in firsts:
        counts[p, t] += 1
    result.figures |= {"authorized_v1": sum(t == V1 for *_, t in firsts),
                       "authorized_v2": sum(t == V2 for *_, t in firsts)}  # fmt: skip
    result.prove(
        "v1 before each partition's activation, v2 after it, some of each on every partition",
        not wrong and all(counts[p, V1] and counts[p, V2] for p in partitions),
        f"out of place {wrong[:5]}; per partition {dict(counts)}",
    )
    with psycopg.connect(dsn) as db:
        applied = dict(
            db.execute(
                "SELECT type, count(*) FROM ledger.applied_events WHERE type IN (%s, %s)"
                " GROUP BY type",
                (V1, V2),
            ).fetchall()
        )
    from projections.factcheck import check_facts

    facts = check_facts(bootstrap, dsn)
    result.prove(
        "ledger reconcile's fact check: both versions in PostgreSQL as on the topic",
        not facts.mismatches,
        "; ".join(facts.mismatches[:3]),
    )
    result.prove(
        "the projection applied both versions, each once",
        applied.get(V1) == result.figures["authorized_v1"]
        and applied.get(V2) == result.figures["authorized_v2"],
        f"applied {applied}",
    )


@pytest.mark.fault
@pytest.mark.timeout(1800)
def test_an_upgrade_mid_stream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    old = previous_release(tmp_path / "previous-release")
    probe = "import schemas.commands as c; print(hasattr(c, 'UpgradeRequested'))"
    env = {**os.environ, **build_env(old)}
    seen = subprocess.run([sys.executable, "-c", probe], env=env, cwd=PROJECT_ROOT,
                          capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    assert seen == "False", "the previous release's workers would run this build's code"
    monkeypatch.setattr(RollingSupervisor, "old", build_env(old))
    monkeypatch.setattr(test_faults, "Supervisor", RollingSupervisor)
    check = checker.check

    def check_with_versions(bootstrap: str, dsn: str, *args: Any) -> checker.Checked:
        result = check(bootstrap, dsn, *args)
        _versions(result, bootstrap, dsn)
        return result

    monkeypatch.setattr(checker, "check", check_with_versions)
    started = time.monotonic()
    result = run(Scenario("upgrade", 2, 40, 5_000, 10, 0, _upgrade), tmp_path)
    assert result["figures"]["authorized_v2"] > 0, result
    print(f"upgrade scenario: {time.monotonic() - started:.0f} s")
