"""Run one fault scenario N times in a row, each with a fresh seed, and stop at the first failure:
`python -m tests.fault.repeat pause 20` (or `make fault-repeat SCENARIO=pause N=20`).

Each run is one pytest session of tests/fault/test_faults.py under the stack lock (`flock`, when
LEDGER_STACK_LOCK names a lock file), so other users of the machine get their turn between runs.
It prints each run's seed and the scenario's JSON result line, and keeps each run's whole output
under <out>/<n>/output.txt (the workers' logs are in that run's pytest folder, <out>/<n>/tmp).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from tests.harness import PROJECT_ROOT


def _result_line(output: str) -> dict[str, object] | None:
    for line in reversed(output.splitlines()):
        if line.startswith('{"scenario"'):
            found: dict[str, object] = json.loads(line)
            return found
    return None


def run_once(scenario: str, seed: int, folder: Path) -> tuple[bool, dict[str, object] | None]:
    folder.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable, "-m", "pytest", "tests/fault/test_faults.py", "-m",
        "fault or fault_subset", "-s", "-k", scenario, "-p", "no:cacheprovider",
        f"--basetemp={folder / 'tmp'}",
    ]  # fmt: skip
    lock = os.environ.get("LEDGER_STACK_LOCK")
    if lock:
        command = ["flock", lock, *command]
    env = {**os.environ, "LEDGER_FAULT_SEED": str(seed)}
    done = subprocess.run(
        command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, check=False
    )
    output = done.stdout + done.stderr
    (folder / "output.txt").write_text(output)
    return done.returncode == 0, _result_line(output)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("scenario", help="a scenario's name: mixed, many-kills, pause, ...")
    parser.add_argument("times", type=int, help="how many runs in a row")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / ".ledger" / "fault-repeat")
    args = parser.parse_args(argv)
    chooser = random.SystemRandom()
    for n in range(1, args.times + 1):
        seed = chooser.randrange(1, 10**6)
        print(f"run {n}/{args.times}: {args.scenario} seed {seed}", flush=True)
        ok, result = run_once(args.scenario, seed, args.out / str(n))
        print(json.dumps(result) if result is not None else "(no result line)", flush=True)
        if not ok:
            print(f"run {n} failed (seed {seed}): {args.out / str(n) / 'output.txt'}", flush=True)
            return 1
    print(f"{args.scenario}: {args.times} runs in a row passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
