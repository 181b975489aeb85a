"""Broker faults (issue 16), on the fault suite's `run` and independent checker
(tests/fault/test_faults.py, tests/fault/checker.py).

`cluster`: three KRaft brokers (each also a controller voter), every topic at replication 3 with
min.insync.replicas 2, as deploy/cluster runs them. While purchases flow, the leader of a
partition of ledger.commands is killed with -9 and kept down, brought back, then the leader of a
partition of ledger.events likewise. While two brokers remain, the commands sent must still be
decided (proven: the facts on ledger.events grow during each outage as the commands do).

`broker-pause`: the one broker stopped with SIGSTOP for 5 to 60 s (by seed) while purchases are
produced and consumed. The fault sender calls a send its broker did not acknowledge in time
"unknown" and sends it again with the same id; the checker counts an unknown send present at most
once and an acknowledged one exactly once. The workers and the writer must ride it out within
their own back-off: none may crash-loop (their restarts are counted).

Each scenario writes its figures (the brokers' memory and CPU, the stall at a leader kill, the
restarts) to .ledger/fault-results/<scenario>-brokers.json.
"""

from __future__ import annotations

import json
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ledger.kafka.settings import consumer_config
from tests.fault.supervisor import Supervisor
from tests.fault.test_faults import RESULTS, Scenario, run

POLL_SECONDS = 0.25
# A worker whose broker goes away may have its faust child restarted by its supervisor (a bounded
# back-off, streams/worker.py); more than this many restarts in one scenario is a crash loop.
RESTARTS_BOUND = 2
PACE_SECONDS = (1.5, 3.0)  # between chunks while a broker is out, so that commands keep coming


class _Offsets:
    """End offsets of ledger.commands and ledger.events, read often through one consumer."""

    def __init__(self, bootstrap: str) -> None:
        from kafka import KafkaConsumer, TopicPartition

        self._consumer = KafkaConsumer(**consumer_config(bootstrap, "fault-offsets", group_id=None))
        self._tps = {
            topic: [
                TopicPartition(topic, p)
                for p in sorted(self._consumer.partitions_for_topic(topic) or ())
            ]
            for topic in ("ledger.commands", "ledger.events")
        }

    def ends(self, topic: str) -> dict[int, int]:
        found = self._consumer.end_offsets(self._tps[topic])
        return {tp.partition: offset for tp, offset in found.items()}

    def close(self) -> None:
        self._consumer.close()


@dataclass
class _Outage:
    """What one broker outage did to the flow: measured, then asserted."""

    victim: int
    why: str
    seconds: float
    commands_sent: int = 0  # commands appended to ledger.commands during the outage
    facts_added: int = 0  # records appended to ledger.events during the outage
    stall: dict[int, float] = field(default_factory=dict)  # victim-led events partition -> s


@dataclass
class _Faults:
    """A fault script run in a thread beside the sender, so that commands flow through it; the
    scenario's last chunk waits for it to end."""

    script: str
    last: int  # the index of the scenario's last chunk
    thread: threading.Thread | None = None
    error: BaseException | None = None
    outages: list[_Outage] = field(default_factory=list)
    figures: dict[str, Any] = field(default_factory=dict)

    def __call__(self, sup: Supervisor, index: int, rng: random.Random) -> None:
        if index == 0:
            self.thread = threading.Thread(target=self._guarded, args=(sup, rng), daemon=True)
            self.figures["usage_at_start"] = sup.broker_usage()
            self.figures["started"] = time.monotonic()
            self.thread.start()
        assert self.thread is not None
        if self.thread.is_alive() and index < self.last:
            time.sleep(rng.uniform(*PACE_SECONDS))
            return
        if index < self.last:
            return
        self.thread.join()
        self._finish(sup)

    def _guarded(self, sup: Supervisor, rng: random.Random) -> None:
        try:
            if self.script == "cluster":
                _cluster(self, sup, rng)
            else:
                _pause(self, sup, rng)
        except BaseException as error:  # raised again in the scenario's thread
            self.error = error

    def _finish(self, sup: Supervisor) -> None:
        if self.error is not None:
            raise self.error
        wall = time.monotonic() - self.figures.pop("started")
        start, end = self.figures.pop("usage_at_start"), sup.broker_usage()
        self.figures["brokers"] = {
            node: {
                "rss_mib": now["rss_mib"],
                "cpu_percent": round(
                    100 * (now["cpu_seconds"] - start.get(node, {}).get("cpu_seconds", 0)) / wall,
                    1,
                ),
            }
            for node, now in end.items()
        }
        self.figures["fault_window_seconds"] = round(wall, 1)
        self.figures["worker_restarts"] = sup.worker_restarts()
        self.figures["writer_starts"] = sup.writer_starts
        self.figures["outages"] = [vars(o) for o in self.outages]
        RESULTS.mkdir(parents=True, exist_ok=True)
        path = RESULTS / f"{self.script}-brokers.json"
        path.write_text(json.dumps(self.figures, indent=2, default=str))
        print(json.dumps(self.figures, default=str), flush=True)
        sup.check_alive()
        loops = {n: r for n, r in self.figures["worker_restarts"].items() if r > RESTARTS_BOUND}
        assert not loops, f"workers restarted more than {RESTARTS_BOUND} times: {loops}"
        for outage in self.outages:
            assert outage.commands_sent == 0 or outage.facts_added > 0, (
                f"no decision while broker {outage.victim} was down ({outage.why}), although "
                f"{outage.commands_sent} commands arrived: {vars(outage)}"
            )
        if self.script == "cluster":
            assert any(o.commands_sent > 0 for o in self.outages), "no command sent in an outage"


def _watch(sup: Supervisor, outage: _Outage) -> None:
    """Kill the victim, keep it down for outage.seconds while measuring what still flows."""
    offsets = _Offsets(sup.bootstrap)
    try:
        led = [p for p, leader in sup.leaders("ledger.events").items() if leader == outage.victim]
        commands0, events0 = offsets.ends("ledger.commands"), offsets.ends("ledger.events")
        sup.kill_node(outage.victim)
        killed = time.monotonic()
        while time.monotonic() - killed < outage.seconds:
            events = offsets.ends("ledger.events")
            for p in led:
                if p not in outage.stall and events.get(p, 0) > events0.get(p, 0):
                    outage.stall[p] = round(time.monotonic() - killed, 2)
            time.sleep(POLL_SECONDS)
        commands, events = offsets.ends("ledger.commands"), offsets.ends("ledger.events")
        outage.commands_sent = sum(commands.values()) - sum(commands0.values())
        outage.facts_added = sum(events.values()) - sum(events0.values())
    finally:
        offsets.close()
    sup.log.note(
        f"broker {outage.victim} ({outage.why}) down {outage.seconds:.0f} s: "
        f"{outage.commands_sent} commands arrived, {outage.facts_added} facts appended; first "
        f"fact on its former events partitions after {outage.stall} s"
    )
    sup.restart_nodes()


def _cluster(faults: _Faults, sup: Supervisor, rng: random.Random) -> None:
    time.sleep(0.5)
    victim = sup.leaders("ledger.commands")[0]
    outage = _Outage(victim, "leader of ledger.commands[0]", rng.uniform(12, 20))
    faults.outages.append(outage)
    _watch(sup, outage)
    time.sleep(rng.uniform(1, 3))
    victim = sup.leaders("ledger.events")[rng.randrange(len(sup.leaders("ledger.events")))]
    outage = _Outage(victim, "leader of a ledger.events partition", rng.uniform(12, 20))
    faults.outages.append(outage)
    _watch(sup, outage)


def _pause(faults: _Faults, sup: Supervisor, rng: random.Random) -> None:
    time.sleep(0.3)
    seconds = rng.uniform(5, 60)
    faults.figures["pause_seconds"] = round(seconds, 1)
    sup.pause_broker(1, seconds)


def _scenario(name: str, brokers: int, chunks: int) -> Scenario:
    return Scenario(name, 2, 40, 3_000, chunks, 0, _Faults(name, chunks - 1), brokers=brokers)


_MARKS = (pytest.mark.fault, pytest.mark.timeout(900))
SCENARIOS = [
    pytest.param(_scenario("cluster", 3, 14), marks=_MARKS, id="cluster"),
    pytest.param(_scenario("broker-pause", 1, 8), marks=_MARKS, id="broker-pause"),
]


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_broker_faults_lose_nothing(scenario: Scenario, tmp_path: Path) -> None:
    run(scenario, tmp_path)
