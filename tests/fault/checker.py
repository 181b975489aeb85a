"""The independent checker of the fault suite.

It shares no code with the ledger's decisions, balances or projections: it reads ledger.events
from offset 0 and ledger.dlq as plain JSON, the producer's log of acknowledged commands, and the
database's tables with SQL of its own, and proves:

- no acknowledged command is missing (each has a fact naming its id);
- each fact id is one content (a fact emitted again after a crash is identical);
- each reference change (issue 15) passed every partition;
- every valid event is applied exactly once: applied_events holds each fact id once, the journal
  each posting once, and the per-party debits and credits in PostgreSQL equal its own sums;
- no cap was exceeded: walking each account's facts in order, the net spend of its day and of
  its month (authorized minus refunded, in the purchase's day and month) never passes the cap;
- the dead-letter topic holds exactly the injected poison, and the facts the database refused
  (reason refused_by_database, with its SQLSTATE of class 22 or 23 and its message: issue 16),
  which are left out of "applied once" and of the sums, and are not applied;
- the stored offsets reach the end of each partition of ledger.events.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import psycopg

PARIS = ZoneInfo("Europe/Paris")
# The platform's defaults (SUMMARY.md figures as the ledger applies them; the workload sets no
# other limits): daily and monthly caps in cents per kind of account.
CAPS = {"consumer": (3_000, 10_000), "enterprise": (50_000, 500_000)}
AUTHORIZED = ("purchase.authorized.v1", "purchase.authorized.v2")  # v2: with its consent
MONEY = (*AUTHORIZED, "purchase.refunded.v1")


@dataclass
class Proof:
    name: str
    ok: bool
    detail: str = ""


@dataclass
class Checked:
    proofs: list[Proof] = field(default_factory=list)
    figures: dict[str, int] = field(default_factory=dict)

    def prove(self, name: str, ok: bool, detail: str = "") -> None:
        self.proofs.append(Proof(name, ok, detail if not ok else ""))

    @property
    def ok(self) -> bool:
        return all(p.ok for p in self.proofs)

    def failures(self) -> list[str]:
        return [f"{p.name}: {p.detail}" for p in self.proofs if not p.ok]


def read_topic(bootstrap: str, topic: str) -> list[tuple[int, int, bytes | None, bytes]]:
    """Every record, from offset 0 to the end of each partition: (partition, offset, key, value)."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        client_id="fault-checker",
        isolation_level="read_committed",
    )
    out: list[tuple[int, int, bytes | None, bytes]] = []
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]
        ends = consumer.end_offsets(tps)
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        left = {tp for tp in tps if ends[tp] > 0}
        while left:
            for tp, records in consumer.poll(timeout_ms=1_000).items():
                out += [(tp.partition, r.offset, r.key, r.value) for r in records]
                if records and records[-1].offset + 1 >= ends[tp]:
                    left.discard(tp)
    finally:
        consumer.close()
    return out


def _month(stamp: datetime) -> str:
    return stamp.astimezone(PARIS).strftime("%Y-%m")


def _day(stamp: datetime) -> str:
    return stamp.astimezone(PARIS).strftime("%Y-%m-%d")


def check(
    bootstrap: str, dsn: str, acknowledged: list[dict[str, Any]],
    poison: set[tuple[str, int, int]], different_body: set[str],
    unknown: list[dict[str, Any]] | None = None, unknown_poison: list[int] | None = None,
) -> Checked:  # fmt: skip
    """`unknown`: sends the producer never saw acknowledged (sent again with the same id), each
    present at most once; `unknown_poison`: the partitions of poison whose send was never
    acknowledged, each allowed one dead letter."""
    result = Checked()
    events = read_topic(bootstrap, "ledger.events")
    facts: dict[str, dict[str, Any]] = {}
    ordered: list[tuple[int, int, dict[str, Any]]] = []
    conflicts = []
    for partition, offset, _key, value in events:
        if value == b"{}":
            continue  # the partition marker
        fact = json.loads(value)
        earlier = facts.setdefault(fact["event_id"], fact)
        if earlier != fact:
            conflicts.append(fact["event_id"])
        elif earlier is fact:
            ordered.append((partition, offset, fact))
    result.figures |= {"records_on_events": len(events), "distinct_facts": len(facts)}
    result.prove("a fact emitted again is identical", not conflicts, f"different: {conflicts[:5]}")

    # Issue 15: a reference change is a barrier, decided once in each partition's order.
    passed: dict[str, set[int]] = defaultdict(set)
    expected: dict[str, int] = {}
    for fact in facts.values():
        if fact["type"] == "reference.changed.v1":
            passed[fact["command_id"]].add(fact["partition"])
            expected[fact["command_id"]] = fact["partitions"]
    partial = {c: sorted(p) for c, p in passed.items() if p != set(range(expected[c]))}
    result.figures["reference_changes"] = len(passed)
    result.prove(
        "each reference change passed every partition", not partial, f"{list(partial.items())[:3]}"
    )

    named = {
        fact.get(k) for fact in facts.values() for k in ("purchase_id", "refund_id", "command_id")
    }
    missing = [a for a in acknowledged if a["id"] not in named]
    result.figures["acknowledged_commands"] = len(acknowledged)
    result.prove(
        "no acknowledged command is missing", not missing, f"{len(missing)}: {missing[:5]}"
    )

    _check_decided_once(result, facts, named, unknown or [])

    conflicts_seen = {
        f["purchase_id"]
        for f in facts.values()
        if f.get("reason") == "duplicate_with_different_body"
    }
    result.figures["different_body_rejections"] = len(conflicts_seen)
    result.prove(
        "a purchase resent as v1 or v2 with the same body is not a different body",
        conflicts_seen <= different_body,
        f"{sorted(conflicts_seen - different_body)[:5]}",
    )
    late = [f for f in facts.values() if f.get("late_for_period")]
    result.figures["late_facts"] = len(late)
    result.prove(
        "late facts (sent after March closed) are billed in the next period, pointing back",
        bool(late) and all(f["billing_period"] > f["late_for_period"] for f in late),
        f"{[(f['event_id'], f['billing_period'], f['late_for_period']) for f in late][:3]}",
    )
    refused, dead = _check_refused(result, bootstrap, dsn, events)  # out of "applied once"
    _check_applied_once(result, dsn, {i: f for i, f in facts.items() if i not in refused})
    _check_caps(result, ordered)
    result.figures |= {"dead_letters": len(dead), "poison_injected": len(poison)}
    extra = sorted(dead - poison)
    allowed = list(unknown_poison or ())
    for _, partition, _ in extra:  # one dead letter per poison of unknown outcome, at most
        if partition in allowed:
            allowed.remove(partition)
    result.prove(
        "the dead-letter topic holds exactly the injected poison",
        poison <= dead and len(extra) == len(unknown_poison or ()) - len(allowed),
        f"extra {extra[:5]}, missing {sorted(poison - dead)[:5]}",
    )
    ends: dict[int, int] = defaultdict(int)
    for partition, offset, _, _ in events:
        ends[partition] = max(ends[partition], offset + 1)
    with psycopg.connect(dsn) as db:
        stored = dict(
            db.execute(
                "SELECT partition, next_offset FROM ledger.projection_offsets"
                " WHERE topic = 'ledger.events'"
            ).fetchall()
        )
    result.prove(
        "stored offsets reach the end of each partition",
        all(stored.get(p, 0) >= end for p, end in ends.items()),
        f"stored {stored}, ends {dict(ends)}",
    )
    return result


def _check_decided_once(
    result: Checked, facts: dict[str, dict[str, Any]], named: set[Any],
    unknown: list[dict[str, Any]],
) -> None:  # fmt: skip
    """Nothing decided twice: each purchase authorized and each refund refunded by one fact at
    most, whether its send was acknowledged (and present) or of unknown outcome."""
    decided: dict[str, int] = defaultdict(int)
    for fact in facts.values():
        if fact["type"].startswith(("purchase.authorized.", "purchase.refunded.")):
            decided[fact.get("refund_id") or fact["purchase_id"]] += 1
    twice = sorted(i for i, n in decided.items() if n > 1)
    unknown_ids = {u["id"] for u in unknown}
    result.figures |= {
        "unknown_outcome_sends": len(unknown),
        "unknown_outcome_present": len(unknown_ids & named),
    }
    result.prove("no command is decided twice (acknowledged or unknown)", not twice, f"{twice[:5]}")


REFUSED = "refused_by_database"


def _check_refused(
    result: Checked, bootstrap: str, dsn: str, events: list[tuple[int, int, Any, bytes]]
) -> tuple[set[str], set[tuple[str, int, int]]]:
    """The facts the database refused (dead letters of reason refused_by_database): each names a
    fact of ledger.events and the database's SQLSTATE (class 22 or 23) and message, and none of
    them is applied. Returns their ids (any copy of a refused fact is refused too), and the
    sources of the other dead letters."""
    letters = [json.loads(v) for _, _, _, v in read_topic(bootstrap, "ledger.dlq")]
    refusals = {
        (letter["partition"], letter["offset"]): letter["detail"]
        for letter in letters
        if letter["reason"] == REFUSED and letter["source_topic"] == "ledger.events"
    }
    at = {(partition, offset): value for partition, offset, _, value in events}
    ids = {json.loads(at[spot])["event_id"] for spot in refusals if spot in at}
    with psycopg.connect(dsn) as db:
        applied = db.execute(
            "SELECT count(*) FROM ledger.applied_events WHERE event_id = ANY(%s)", (sorted(ids),)
        ).fetchone()
    assert applied is not None
    result.figures["refused_by_database"] = len(refusals)
    result.prove(
        "each fact refused by the database is a fact of the log, with its SQLSTATE, not applied",
        all(spot in at for spot in refusals)
        and all(detail[:2] in ("22", "23") for detail in refusals.values())
        and applied[0] == 0,
        f"{list(refusals.items())[:3]}, applied {applied[0]}",
    )
    dead = {
        (letter["source_topic"], letter["partition"], letter["offset"])
        for letter in letters
        if letter["reason"] != REFUSED
    }
    return ids, dead


def _check_applied_once(result: Checked, dsn: str, facts: dict[str, dict[str, Any]]) -> None:
    sums: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    postings = 0
    for fact in facts.values():
        if fact["type"] in MONEY:
            for posting in fact["postings"]:
                amount = posting["amount_cents"]
                sums[posting["party"], posting["party_id"]][0 if amount > 0 else 1] += abs(amount)
                postings += 1
    with psycopg.connect(dsn) as db:
        applied = db.execute(
            "SELECT count(*), count(DISTINCT event_id) FROM ledger.applied_events"
        ).fetchone()
        journal = db.execute("SELECT count(*) FROM ledger.journal").fetchone()
        found = {
            (party, pid): [debits, credits]
            for party, pid, debits, credits in db.execute(
                "SELECT party, party_id, debits_cents, credits_cents FROM ledger.balances"
            ).fetchall()
        }
    assert applied is not None and journal is not None
    result.figures |= {
        "applied_events": applied[0],
        "journal_rows": journal[0],
        "parties": len(sums),
    }
    result.prove(
        "each fact applied once",
        applied[0] == applied[1] == len(facts),
        f"applied {applied[0]} ({applied[1]} distinct), facts {len(facts)}",
    )
    result.prove(
        "each posting journaled once",
        journal[0] == postings,
        f"journal {journal[0]}, postings {postings}",
    )
    wrong = {k: (v, found.get(k)) for k, v in sums.items() if found.get(k) != v}
    extra = set(found) - set(sums)
    result.prove(
        "debits and credits per party equal the checker's own",
        not wrong and not extra,
        f"{len(wrong)} differ, e.g. {list(wrong.items())[:3]}; extra {list(extra)[:3]}",
    )


def _check_caps(result: Checked, ordered: list[tuple[int, int, dict[str, Any]]]) -> None:
    spend: dict[tuple[str, str], int] = defaultdict(int)  # (account, day or month) → net cents
    when: dict[str, datetime] = {}  # purchase id → occurred_at
    worst: list[str] = []
    for _partition, _offset, fact in sorted(ordered, key=lambda x: (x[0], x[1])):
        if fact["type"] in AUTHORIZED:
            stamp = datetime.fromisoformat(fact["occurred_at"])
            when[fact["purchase_id"]] = stamp
            account, amount = fact["account_id"], fact["amount_cents"]
            spend[account, _day(stamp)] += amount
            spend[account, _month(stamp)] += amount
            daily, monthly = CAPS[fact["account_kind"]]
            if spend[account, _day(stamp)] > daily or spend[account, _month(stamp)] > monthly:
                worst.append(f"{account} at {fact['purchase_id']}")
        elif fact["type"] == "purchase.refunded.v1":
            stamp = when[fact["purchase_id"]]
            spend[fact["account_id"], _day(stamp)] -= fact["amount_cents"]
            spend[fact["account_id"], _month(stamp)] -= fact["amount_cents"]
    result.figures["authorized"] = len(when)
    result.prove("no cap was ever exceeded", not worst, f"{len(worst)}: {worst[:5]}")
