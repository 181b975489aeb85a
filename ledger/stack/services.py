"""The ledger's own processes started in the background (the demo's worker, projection writer and
APIs), recorded by pid and start time in the stack's home, so that `ledger stack down` stops them
from any shell and never signals a reused pid."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ledger.stack import proc

STOP_SECONDS = 30.0


@dataclass(frozen=True)
class Service:
    name: str
    arguments: tuple[str, ...]
    url: str | None = None


def _file(home: Path) -> Path:
    return home / "services.json"


def _load(home: Path) -> dict[str, dict[str, int]]:
    try:
        loaded: dict[str, dict[str, int]] = json.loads(_file(home).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return loaded


def _save(home: Path, records: dict[str, dict[str, int]]) -> None:
    home.mkdir(parents=True, exist_ok=True)
    _file(home).write_text(json.dumps(records, indent=2))


def running(home: Path) -> dict[str, int]:
    """Service name → pid, for those still running."""
    return {
        name: record["pid"]
        for name, record in _load(home).items()
        if proc.is_running(proc.ProcessRecord(record["pid"], record["start_ticks"]))
    }


def start(home: Path, service: Service) -> int:
    """Start a service unless it runs already; returns its pid. Its output goes to
    <home>/logs/<name>.log."""
    records = _load(home)
    already = running(home)
    if service.name in already:
        return already[service.name]
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with (logs / f"{service.name}.log").open("ab") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "ledger.cli", *service.arguments],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True,
        )  # fmt: skip
    record = proc.record(process.pid)
    records[service.name] = {"pid": record.pid, "start_ticks": record.start_ticks}
    _save(home, records)
    return process.pid


def stop_all(home: Path) -> list[str]:
    stopped = []
    for name, record in _load(home).items():
        rec = proc.ProcessRecord(record["pid"], record["start_ticks"])
        if proc.is_running(rec):
            killed = proc.stop(rec, signal.SIGTERM, STOP_SECONDS)
            stopped.append(f"{name} (pid {rec.pid}){' killed' if killed else ''}")
    _file(home).unlink(missing_ok=True)
    return stopped
