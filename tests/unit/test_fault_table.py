"""The fault suite's table (tests/fault/table.py): faults counted by kind, figures in place."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fault.table import fault_kinds, table


def test_faults_are_counted_by_kind_without_pids_or_durations() -> None:
    entries = [
        [1.0, "worker w1 started (pid 10)"],
        [2.5, "worker w1 killed with -9 (pids [10, 11])"],
        [3.0, "worker w1 started (pid 12)"],
        [9.1, "worker w1 killed with -9 (pids [12, 13])"],
        [12.0, "PostgreSQL stopped immediately (pid 7) for 12 s"],
        [20.0, "worker w2 resumed (SIGCONT)"],
    ]
    assert fault_kinds(entries) == (
        "2x worker w1 killed with -9; 1x PostgreSQL stopped immediately"
    )
    assert fault_kinds([[0.0, "projection writer started (pid 3)"]]) == "none"


def test_table_has_a_row_per_result(tmp_path: Path) -> None:
    result = {
        "scenario": "mixed",
        "seed": 42,
        "ok": True,
        "lag_recovery_seconds": 3.2,
        "figures": {"acknowledged_commands": 6100, "distinct_facts": 6050,
                    "poison_injected": 7, "dead_letters": 7},
        "faults": [[1.0, "projection writer killed with -9"]],
    }  # fmt: skip
    (tmp_path / "mixed.json").write_text(json.dumps(result))
    (tmp_path / "pause.json").write_text(json.dumps({"scenario": "pause", "seed": 1, "ok": False,
                                                     "error": "stuck"}))  # fmt: skip
    lines = table(tmp_path).splitlines()
    assert lines[2] == (
        "| mixed | 42 | yes | 1x projection writer killed with -9 | 6100 | 6050 | 7 → 7 | 3.2 s |"
    )
    assert lines[3].startswith("| pause | 1 | NO: stuck | none | - | - | - → - | - |")
