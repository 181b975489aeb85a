"""The projection writer's Prometheus metrics (DESIGN.md §9).

Every record read is counted once under `ledger_projection_records_total` by what became of it,
so that consumed = applied + duplicate + dead_lettered + refused + marker holds for an operator
to check.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECORDS = Counter(
    "ledger_projection_records_total",
    "Records of ledger.events read by the projection writer, by what became of them",
    # refused: a fact the database refused (SQLSTATE class 22 or 23), set aside on ledger.dlq
    ["outcome"],  # applied | duplicate | dead_lettered | refused | marker
)
for _outcome in (
    "applied",
    "duplicate",
    "dead_lettered",
    "refused",
    "marker",
):  # series from zero on
    RECORDS.labels(_outcome)
CONSUMED = Counter(
    "ledger_projection_records_consumed_total", "Records of ledger.events read and committed"
)
BATCHES = Counter("ledger_projection_batches_total", "Batches committed to PostgreSQL")
BATCH_SECONDS = Histogram(
    "ledger_projection_batch_seconds",
    "Time to apply one batch in PostgreSQL, commit included",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
COMMIT_LATENCY = Histogram(
    "ledger_projection_latency_seconds",
    "From an event's append to ledger.events to its projection's commit",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)
LAG = Gauge(
    "ledger_projection_lag_events", "Events of ledger.events not yet projected", ["partition"]
)
PERIODS_SEALED = Counter("ledger_periods_sealed_total", "Billing periods sealed")
DB_RETRIES = Counter(
    "ledger_projection_db_retries_total",
    "Batches tried again after the database was unreachable or a transaction was aborted",
    ["reason"],
)
# The writer reconciles the books in PostgreSQL now and then (projections/reconcile.py, the
# database's checks): an alert fires on a failed check, or when no run succeeded for long.
RECONCILE_FAILED_CHECKS = Gauge(
    "ledger_reconcile_failed_checks", "Checks of the books that failed at the last reconciliation"
)
RECONCILE_LAST_RUN = Gauge(
    "ledger_reconcile_last_run_timestamp_seconds", "When the last reconciliation finished"
)
FENCED_BATCHES = Counter(
    "ledger_projection_fenced_batches_total",
    "Batches rolled back because another writer had stored offsets past their start (a zombie"
    " writer's late batch)",
)
