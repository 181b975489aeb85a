"""The workers' Prometheus metrics (DESIGN.md §9): names `ledger_*`, base units."""

from __future__ import annotations

from typing import get_args

from prometheus_client import Counter, Gauge, Histogram

from ledger.kafka import topics
from schemas.codec import InvalidReason
from schemas.facts import (
    Fact,
    PaymentCommandRejected,
    PaymentExpired,
    PaymentReserved,
    PaymentVoided,
)

COMMANDS_CONSUMED = Counter(
    "ledger_commands_consumed_total", "Commands read from ledger.commands", ["type"]
)
BATCHES_FENCED = Counter(
    "ledger_batches_fenced_total",
    "Batches not written: begun in another group generation, or after a freeze past the session"
    " (streams/suspension.py); fetched and decided again",
)
DECISIONS = Counter(
    "ledger_decisions_total", "Facts decided by the authorizer", ["outcome", "reason"]
)
# Held payments (issue 14): reserved, captured, voided, expired; a refused capture or void by its
# reason (`capture_rejected`, `void_rejected`). A refused hold is a purchase rejection (DECISIONS).
PAYMENTS = Counter(
    "ledger_payments_total", "Held payments' outcomes decided by the authorizer",
    ["outcome", "reason"],
)  # fmt: skip
DEAD_LETTERS = Counter(
    "ledger_dead_letters_total", "Messages set aside on ledger.dlq", ["source_topic", "reason"]
)
BALANCE_FACTS = Counter(
    "ledger_balance_facts_total",
    "Money facts counted in the partitions' partial balances (ledger/core/batch.py)",
    ["table", "result"],
)
CONSUMER_LAG = Gauge(
    "ledger_consumer_lag_events", "Events not yet processed", ["topic", "partition"]
)
# From the moment the command was appended to ledger.commands (its record timestamp) to the
# decision: the time a caller waits. Event time (occurred_at) can be anything a client sent.
DECISION_LATENCY = Histogram(
    "ledger_decision_latency_seconds",
    "From a command's append to ledger.commands to its decision",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
EVENT_TIME_LAG = Histogram(
    "ledger_event_time_lag_seconds",
    "From a command's occurred_at to its decision",
    buckets=(0.01, 0.1, 1.0, 10.0, 60.0, 600.0, 3600.0, 86_400.0),
)
# Per batch of the authorizer (streams/authorizer.py): how many commands, and how long from
# fetched to acknowledged (decode, decide, facts and changelog sent and confirmed, store written).
BATCH_COMMANDS = Histogram(
    "ledger_authorizer_batch_commands",
    "Commands decided per batch",
    buckets=(1, 10, 100, 500, 1_000, 2_500, 5_000, 10_000, 20_000),
)
BATCH_SECONDS = Histogram(
    "ledger_authorizer_batch_seconds",
    "From a batch fetched to its records acknowledged",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)
STATE_KEYS = Gauge(
    "ledger_state_keys", "Keys held in a table's partitions on this worker", ["table"]
)

# A labelled counter has no series until its first increment, and Prometheus's increase() does
# not count that first appearance: the dead letters of the commands start at zero, so that the
# alert on them (deploy/prometheus/alerts.yml) sees the very first one.
for _reason in get_args(InvalidReason):
    DEAD_LETTERS.labels(topics.COMMANDS, _reason)


def payment_outcome(fact: Fact) -> tuple[str, str] | None:
    """The PAYMENTS labels of a fact of a held payment (a capture is counted by the batch, whose
    fact is a purchase's)."""
    if isinstance(fact, PaymentReserved):
        return "reserved", ""
    if isinstance(fact, PaymentVoided):
        return "voided", ""
    if isinstance(fact, PaymentExpired):
        return "expired", ""
    if isinstance(fact, PaymentCommandRejected):
        return f"{fact.action}_rejected", fact.reason
    return None
