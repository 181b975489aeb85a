"""The benchmarks' own arithmetic, without a broker: /proc stat lines and process trees, CPU and
Kafka records per purchase, the commands as the bench sends them, the fact watcher's two-field
decode against the codec, and the end-to-end table."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from ledger.bench import core, costs, e2e, stream
from ledger.core.runner import LocalAuthorizer
from ledger.kafka import topics
from ledger.kafka.partitioning import partition_for
from schemas import codec
from schemas.commands import PurchaseRequested

TICKS = costs.CLOCK_TICKS_PER_SECOND


def _stat(pid: int, name: str, ppid: int, utime: int, stime: int, cutime: int, cstime: int) -> str:
    # Fields 1-17 of proc(5), then the rest of a real line (unused).
    middle = f"S {ppid} {pid} {pid} 0 -1 4194560 100 0 0 0 {utime} {stime} {cutime} {cstime}"
    return f"{pid} ({name}) {middle} 20 0 1 0 12345 1000 100 18446744073709551615"


def test_a_stat_line_is_read_after_the_last_parenthesis_of_the_command_name() -> None:
    parsed = costs.parse_stat(_stat(42, "faust: a (b) c", 7, 100, 30, 5, 2))
    assert parsed == costs.ProcStat(pid=42, parent=7, own_ticks=130, reaped_ticks=7)


def test_a_tree_is_the_root_and_every_descendant_with_what_each_has_reaped() -> None:
    table = {
        stat.pid: stat
        for stat in (
            costs.ProcStat(1, 0, 1_000, 0, ),  # init: not below the root
            costs.ProcStat(10, 1, 2 * TICKS, 3 * TICKS),  # postmaster: reaped backends
            costs.ProcStat(11, 10, TICKS, 0),  # a backend
            costs.ProcStat(12, 10, TICKS, 0),  # the checkpointer
            costs.ProcStat(13, 12, TICKS, 0),  # a grandchild
            costs.ProcStat(20, 1, 50 * TICKS, 0),  # another process altogether
        )
    }  # fmt: skip
    assert sorted(costs.descendants(table, 10)) == [10, 11, 12, 13]
    assert costs.tree_cpu_seconds(table, 10) == pytest.approx(8.0)
    assert costs.descendants(table, 99) == []  # gone: counts nothing
    assert costs.tree_cpu_seconds(table, 99) == 0.0


def test_a_child_that_ended_during_the_phase_still_counts_in_its_parent() -> None:
    table = costs.process_table()
    before = costs.tree_cpu_seconds(table, os.getpid())
    burn = "import time\nend = time.process_time() + 0.3\nwhile time.process_time() < end: pass"
    subprocess.run([sys.executable, "-c", burn], check=True)  # started, burnt, reaped
    after = costs.tree_cpu_seconds(costs.process_table(), os.getpid())
    assert after - before >= 0.25


def test_the_machine_is_busy_but_for_idle_and_io_wait() -> None:
    # user nice system idle iowait irq softirq steal guest guest_nice
    text = f"cpu  {TICKS} {TICKS} {TICKS} 999999 888 {TICKS} {TICKS} {TICKS} 77 0\ncpu0 1 2 3\n"
    assert costs.machine_busy_seconds(text) == pytest.approx(6.0)


def test_sampled_cpu_names_every_group_the_bench_and_the_machine() -> None:
    sampled = costs.sample_cpu({"me": [os.getpid()], "gone": [2**22 + 1]})
    assert set(sampled) == {"me", "gone", costs.BENCH, costs.MACHINE}
    assert sampled["gone"] == 0.0
    assert 0 < sampled[costs.BENCH] <= sampled["me"] <= sampled[costs.MACHINE]


def test_cpu_per_thousand_purchases_is_the_difference_scaled() -> None:
    before = {"worker-1": 10.0, "kafka": 5.0, "left": 1.0}
    after = {"worker-1": 13.0, "kafka": 5.5}
    assert costs.per_thousand(before, after, 2_000) == {"worker-1": 1.5, "kafka": 0.25}


def test_records_per_purchase_by_topic_and_a_total_without_kafkas_own() -> None:
    before = {
        "ledger.commands": 1_001,
        "ledger.events": 4,
        "ledger.dlq": 1,
        "__consumer_offsets": 9,
    }
    after = {
        "ledger.commands": 3_001, "ledger.events": 2_004, "ledger.dlq": 1,
        "internet-plus-ledger-accounts-changelog": 2_600, "__consumer_offsets": 109,
    }  # fmt: skip
    by_topic = costs.records_per_purchase(before, after, 2_000)
    assert by_topic == {
        "__consumer_offsets": 0.05,
        "internet-plus-ledger-accounts-changelog": 1.3,  # created during the phase
        "ledger.commands": 1.0,
        "ledger.events": 1.0,
    }  # ledger.dlq wrote nothing: left out
    assert costs.ledger_records_per_purchase(by_topic) == pytest.approx(3.3)


def test_commands_are_keyed_and_partitioned_by_account_and_reference_by_entity() -> None:
    reference, opens = stream.world("r1", 50)
    buys = stream.purchases("r1", 50, 200, seed=3)
    sent = stream.encode_commands([*opens, *buys], 4)
    for command, record in zip([*opens, *buys], sent, strict=True):
        assert record.topic == topics.COMMANDS
        assert record.key == command.account_id.encode()  # type: ignore[union-attr]
        assert record.partition == partition_for(command.account_id, 4)  # type: ignore[union-attr]
        assert codec.decode_command(record.value) == command
    assert {r.partition for r in sent} == {0, 1, 2, 3}
    refs = stream.encode_reference(reference, 4)
    # Issue 15: each record as a change to every partition of ledger.commands, then compacted.
    changes = [r for r in refs if r.topic == topics.COMMANDS]
    assert len(changes) == 4 * len(reference)
    assert {(r.key, r.partition) for r in changes} >= {(b"isp:isp-r1", p) for p in range(4)}
    compacted = [r for r in refs if r.topic == topics.REFERENCE]
    assert {r.partition for r in compacted} == {0}
    assert compacted[0].key == b"isp:isp-r1" and compacted[1].key == b"publisher:pub0-r1"


def test_paced_records_keep_each_purchase_id_beside_its_record() -> None:
    buys = stream.purchases("r2", 10, 30, seed=4)
    paced = stream.paced_records(buys, 4)
    assert [pid for pid, _ in paced] == [
        b.purchase_id for b in buys if isinstance(b, PurchaseRequested)
    ]
    assert paced[0][1] == stream.encode_commands(buys[:1], 4)[0]


def test_the_watchers_two_field_decode_agrees_with_the_codec_on_every_fact() -> None:
    setup, measured = core.workload(accounts=60, purchases=400, seed=5)
    ledger = LocalAuthorizer(core.reference())
    raw = [codec.encode(f) for c in [*setup, *measured] for f in ledger.handle(c)]
    assert len({codec.decode_fact(r).__struct_config__.tag for r in raw}) >= 4  # type: ignore[attr-defined]
    for value in raw:
        fact = codec.decode_fact(value)
        seen = stream._SEEN.decode(value)
        assert seen.type == fact.__struct_config__.tag  # type: ignore[attr-defined]
        assert seen.purchase_id == getattr(fact, "purchase_id", None)
    assert any(stream._SEEN.decode(v).type == stream.AUTHORIZED for v in raw)


def test_latency_is_the_facts_timestamp_minus_the_send_never_below_zero_and_sorted() -> None:
    sent = {"p1": 1_000, "p2": 1_000, "p3": 2_000}
    decided = {"p1": 1_250, "p2": 1_010, "p3": 1_999, "p9": 5}
    assert stream.latencies_seconds(sent, decided) == [0.0, 0.01, 0.25]


def _figures(workers: int, extra: dict[str, float]) -> e2e.RunFigures:
    return e2e.RunFigures(
        workers=workers, accounts=100, purchases=1_000, throughput_events_per_second=500.0,
        decisions_per_second=800.0, decision_latency_p50_seconds=0.02,
        decision_latency_p99_seconds=0.09, decision_latency_max_seconds=0.2,
        paced_rate_per_second=250.0, api_requests=10, api_latency_p50_seconds=0.03,
        api_latency_p99_seconds=0.06, api_answers={"200": 10}, replay_events_per_second=9_000.0,
        replay_events=2_100, replay_equal=True, peak_rss_mib={"kafka": 400.0},
        backlog_seconds=2.0, backlog_send_seconds=0.1, backlog_decided_seconds=1.2,
        backlog_projected_seconds=1.9, authorized_share=0.97,
        kafka_records_per_purchase=3.25,
        kafka_records_per_purchase_by_topic={"ledger.events": 1.0, "__consumer_offsets": 0.01},
        cpu_seconds_per_1000_purchases={"worker-1": 0.5, "kafka": 0.25, **extra},
        machine_cpu_seconds_per_1000_purchases=1.5, watcher_behind_seconds=0.004,
    )  # fmt: skip


def test_the_table_shows_costs_with_their_parts_and_a_dash_where_a_run_has_none() -> None:
    runs = [_figures(1, {}), _figures(2, {"worker-2": 0.5})]
    lines = e2e.report(runs).splitlines()
    by_name = {line.strip().split("  ")[0]: line for line in lines}
    assert "3.25" in by_name["Kafka records per purchase (topics but __*)"]
    assert "0.750" in by_name["CPU s per 1,000 purchases (these processes)"]
    assert by_name["CPU s per 1,000 purchases (these processes)"].endswith("1.250")
    assert by_name["worker-2"].split()[-2:] == ["-", "0.500"]
    assert "1.500" in by_name["CPU s per 1,000 purchases (whole machine, others' too)"]
    names = [line.strip().split("  ")[0] for line in lines]
    assert names.index("ledger.events") < names.index("__consumer_offsets")  # Kafka's own last
    assert "0.1 / 1.2 / 1.9 / 2.0 s" in by_name["backlog sent / decided / in PostgreSQL / all done"]


def test_the_json_has_the_issues_cost_fields_at_the_top_and_every_run_below() -> None:
    figures = e2e.as_json([_figures(1, {}), _figures(2, {"worker-2": 0.5})])
    assert figures["kafka_records_per_purchase"] == 3.25
    assert figures["kafka_records_per_purchase_by_topic"]["__consumer_offsets"] == 0.01
    assert figures["cpu_seconds_per_1000_purchases"] == {"worker-1": 0.5, "kafka": 0.25}
    assert [run["workers"] for run in figures["runs"]] == [1, 2]
    assert figures["runs"][1]["cpu_seconds_per_1000_purchases"]["worker-2"] == 0.5


def test_a_probe_account_lands_on_its_partition_and_is_not_one_of_the_runs() -> None:
    from ledger.patterns import ID

    _probe_account = stream._probe_account
    for partition in range(6):
        for attempt in range(3):
            account = _probe_account("r1", partition, attempt, 6)
            assert partition_for(account, 6) == partition
            assert ID.fullmatch(account) and ID.fullmatch(f"c-{account}")
            assert not account.endswith("-r1")  # the bench counts its accounts by that suffix
    assert _probe_account("r1", 0, 0, 6) != _probe_account("r1", 0, 1, 6)  # a retry is new
