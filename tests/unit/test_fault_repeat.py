"""tests/fault/repeat.py: the result line is found in a run's output, and the runs stop at the
first failure."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fault import repeat


def test_the_result_line_is_the_last_json_line_of_a_scenario() -> None:
    output = 'fault scenario pause: seed 7\n{"scenario": "pause", "seed": 7, "ok": true}\n1 passed'
    assert repeat._result_line(output) == {"scenario": "pause", "seed": 7, "ok": True}
    assert repeat._result_line("ERROR: no stack") is None


def test_runs_stop_at_the_first_failure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    runs: list[int] = []

    def run_once(scenario: str, seed: int, folder: Path) -> tuple[bool, dict[str, object]]:
        runs.append(seed)
        return len(runs) < 3, {"scenario": scenario, "seed": seed, "ok": len(runs) < 3}

    monkeypatch.setattr(repeat, "run_once", run_once)
    assert repeat.main(["pause", "20", "--out", str(tmp_path)]) == 1
    assert len(runs) == 3
    monkeypatch.setattr(repeat, "run_once", lambda *_: (True, None))
    assert repeat.main(["pause", "4", "--out", str(tmp_path)]) == 0
