"""What a phase of a benchmark costs: Kafka records written and CPU seconds, per purchase
(issue 13: "count the cost per unit of work", STYLE.md §13).

- Records: the end offset of every partition of every topic on the bench's broker, summed per
  topic, before and after the phase. Kafka's own topics (`__consumer_offsets`, names starting
  with `__`) are reported apart from the total: offsets committed are not what a purchase writes.
- CPU: user + system time from /proc/PID/stat of a process and every descendant, each with the
  time of the children it has already reaped (cutime + cstime), so a process that ended during
  the phase (a PostgreSQL backend, a restarted faust child) still counts, once, in its parent's.
  The bench itself counts only its own time (its children are the processes measured).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from ledger.kafka.partitions import topic_partitions
from ledger.kafka.settings import offsets_consumer_config

PROC = Path("/proc")
CLOCK_TICKS_PER_SECOND = os.sysconf("SC_CLK_TCK")
BENCH = "bench"  # this process: the sender and the fact watcher
MACHINE = "machine (every process)"
INTERNAL_TOPIC_PREFIX = "__"
# Kafka's own topic of committed offsets (the ledger uses no transactions: no __transaction_state,
# and asking for it would create it).
KAFKA_OWN_TOPICS = ("__consumer_offsets",)
OFFSETS_CLIENT_ID = "ledger-bench-offsets"


# --- CPU ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcStat:
    pid: int
    parent: int
    own_ticks: int  # utime + stime: every thread of the process
    reaped_ticks: int  # cutime + cstime: the children it has waited for, and theirs


def parse_stat(text: str) -> ProcStat:
    """A /proc/PID/stat line (proc(5)). The command name (field 2) may hold spaces and
    parentheses: the fields are split after its last ')'."""
    pid = int(text[: text.index(" ")])
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): ppid is field 4, utime..cstime are fields 14-17.
    utime, stime, cutime, cstime = (int(value) for value in fields[11:15])
    return ProcStat(pid, int(fields[1]), utime + stime, cutime + cstime)


def process_table() -> dict[int, ProcStat]:
    """Every process this user can see, read once."""
    table: dict[int, ProcStat] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            table[int(entry.name)] = parse_stat((entry / "stat").read_text())
        except (OSError, ValueError, IndexError):  # gone between the listing and the read
            continue
    return table


def descendants(table: Mapping[int, ProcStat], root: int) -> list[int]:
    """The root (if it runs) and every process below it."""
    children: dict[int, list[int]] = {}
    for stat in table.values():
        children.setdefault(stat.parent, []).append(stat.pid)
    found, to_visit = [], [root] if root in table else []
    while to_visit:
        pid = to_visit.pop()
        found.append(pid)
        to_visit.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(table: Mapping[int, ProcStat], root: int) -> float:
    ticks = sum(table[p].own_ticks + table[p].reaped_ticks for p in descendants(table, root))
    return ticks / CLOCK_TICKS_PER_SECOND


def machine_busy_seconds(proc_stat: str) -> float:
    """CPU time of every core not idle nor waiting for I/O, from /proc/stat's `cpu` line
    (user nice system idle iowait irq softirq steal ...; guest time is inside user)."""
    line = next(line for line in proc_stat.splitlines() if line.startswith("cpu "))
    user, nice, system, _idle, _iowait, irq, softirq, steal = (
        int(value) for value in line.split()[1:9]
    )
    return (user + nice + system + irq + softirq + steal) / CLOCK_TICKS_PER_SECOND


def sample_cpu(roots: Mapping[str, Iterable[int]]) -> dict[str, float]:
    """CPU seconds so far of each named group of process trees, of the bench (itself only) and
    of the whole machine."""
    table = process_table()
    seconds = {
        name: sum(tree_cpu_seconds(table, pid) for pid in pids) for name, pids in roots.items()
    }
    seconds[BENCH] = table[os.getpid()].own_ticks / CLOCK_TICKS_PER_SECOND
    seconds[MACHINE] = machine_busy_seconds((PROC / "stat").read_text())
    return seconds


def per_thousand(
    before: Mapping[str, float], after: Mapping[str, float], purchases: int
) -> dict[str, float]:
    """CPU seconds per 1,000 purchases of each name sampled both times."""
    return {
        name: (after[name] - before[name]) * 1000 / purchases for name in before if name in after
    }


# --- Kafka records --------------------------------------------------------------------------


def topic_end_offsets(bootstrap_servers: str) -> dict[str, int]:
    """Every topic on the broker (Kafka's own included) → the sum of its partitions' end
    offsets: the records ever appended to it (a log's offsets are never reused)."""
    from kafka import KafkaConsumer

    # Offsets only, nothing is read: no group, and the high watermark (read_uncommitted), which
    # counts every record appended. The ledger uses no transactions, so this is also the
    # read_committed end the ledger's readers see.
    consumer = KafkaConsumer(**offsets_consumer_config(bootstrap_servers, OFFSETS_CLIENT_ID))
    try:
        # kafka-python 3.0's topics() leaves Kafka's own out whatever the settings: asked by name.
        names = sorted(consumer.topics()) + list(KAFKA_OWN_TOPICS)
        partitions = topic_partitions(consumer, *names)
        ends: dict[str, int] = {}
        for tp, offset in consumer.end_offsets(partitions).items():
            ends[tp.topic] = ends.get(tp.topic, 0) + int(offset)
        return ends
    finally:
        consumer.close()


def records_per_purchase(
    before: Mapping[str, int], after: Mapping[str, int], purchases: int
) -> dict[str, float]:
    """Records appended to each topic during the phase, per purchase; topics with none left out
    (a topic created during the phase counts from zero)."""
    return {
        topic: (end - before.get(topic, 0)) / purchases
        for topic, end in sorted(after.items())
        if end > before.get(topic, 0)
    }


def is_internal(topic: str) -> bool:
    return topic.startswith(INTERNAL_TOPIC_PREFIX)


def ledger_records_per_purchase(by_topic: Mapping[str, float]) -> float:
    """The records the ledger writes per purchase: every topic but Kafka's own."""
    return sum(value for topic, value in by_topic.items() if not is_internal(topic))
