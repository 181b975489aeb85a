"""`ledger verify --every`'s Prometheus metrics (issue 15): a module of its own, so that only the
verifying process exposes them (the alert on a run overdue reads their absence as none run)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

RUNS = Counter(
    "ledger_verify_runs_total",
    "Runs of ledger verify, by outcome",
    ["outcome"],  # equal | different | failed (the run could not finish)
)
for _outcome in ("equal", "different", "failed"):  # series from zero on
    RUNS.labels(_outcome)
LAST_RUN = Gauge(
    "ledger_verify_last_run_timestamp_seconds", "When the last run of ledger verify finished"
)
LAST_SUCCESS = Gauge(
    "ledger_verify_last_success_timestamp_seconds",
    "When the last run that re-decided the whole log finished (whatever it found)",
)
DIFFERENCES = Gauge(
    "ledger_verify_differences",
    "What the last complete run found different: facts on ledger.events, balances of the"
    " workers' tables, balances in PostgreSQL",
    ["against"],  # events | workers | postgres
)
for _against in ("events", "workers", "postgres"):
    DIFFERENCES.labels(_against)
FACTS = Gauge("ledger_verify_facts", "Facts re-decided by the last complete run")
DUPLICATES = Gauge(
    "ledger_verify_duplicates", "Identical facts emitted again after a crash, at the last run"
)
UNDECIDED = Gauge(
    "ledger_verify_undecided_commands",
    "Commands the workers had not decided yet at the last run (not compared)",
)
SECONDS = Gauge("ledger_verify_seconds", "How long the last complete run took")
EVENTS_PER_SECOND = Gauge("ledger_verify_events_per_second", "Facts re-decided per second")
