"""The fault suite's results as one table (issue 16): a row per scenario, read from the JSON result
each scenario writes to .ledger/fault-results/<scenario>.json.

    python -m tests.fault.table [DIR]        # markdown, for the README and the closing note
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tests.harness import PROJECT_ROOT

RESULTS = PROJECT_ROOT / ".ledger" / "fault-results"
COLUMNS = ("scenario", "seed", "ok", "faults", "acknowledged", "facts", "poison → DLQ", "lag → 0")
# The fault log's notes that are faults (the rest say what started, restarted or healed).
_FAULT = re.compile(r"killed|paused|stopped|SIGSTOP|timeout|lock|fenced|refused|rolled|activat")
_NOISE = re.compile(r"\(pids? [^)]*\)|\bpid \d+\b|\bfor \d+(\.\d+)? s\b|(?<![\w-])\d+(\.\d+)?\b")


def fault_kinds(entries: list[list[Any]]) -> str:
    """'2x worker w1 killed with -9 (…), 1x PostgreSQL stopped …': the faults, counted by kind."""
    kinds: Counter[str] = Counter()
    for _, what in entries:
        if _FAULT.search(what) and "resumed" not in what:
            kinds[" ".join(_NOISE.sub("", what).split()).rstrip(" ;,:")] += 1
    return "; ".join(f"{n}x {kind}" for kind, n in kinds.items()) or "none"


def row(result: dict[str, Any]) -> dict[str, str]:
    figures = result.get("figures", {})
    lag = result.get("lag_recovery_seconds")
    return {
        "scenario": str(result.get("scenario")),
        "seed": str(result.get("seed")),
        "ok": "yes" if result.get("ok") else f"NO: {result.get('error', 'a proof failed')}",
        "faults": fault_kinds(result.get("faults", [])),
        "acknowledged": str(figures.get("acknowledged_commands", "-")),
        "facts": str(figures.get("distinct_facts", "-")),
        "poison → DLQ": f"{figures.get('poison_injected', '-')} → "
        f"{figures.get('dead_letters', '-')}",
        "lag → 0": "-" if lag is None else f"{lag} s",
    }


def table(directory: Path) -> str:
    results = [json.loads(p.read_text()) for p in sorted(directory.glob("*.json"))]
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for result in results:
        cells = row(result)
        lines.append("| " + " | ".join(cells[c] for c in COLUMNS) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    directory = Path(argv[0]) if argv else RESULTS
    if not directory.is_dir():
        print(f"no fault results in {directory}: run `make fault` first", file=sys.stderr)
        return 2
    print(table(directory))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
