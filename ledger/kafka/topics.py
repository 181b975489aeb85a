"""The ledger's topics (DESIGN.md §4): names, keys and the configs they are created with."""

from __future__ import annotations

from dataclasses import dataclass, field

COMMANDS = "ledger.commands"
EVENTS = "ledger.events"
REFERENCE = "ledger.reference"
DLQ = "ledger.dlq"

# Kafka reads -1 as "no limit": the events are the source of truth and are kept forever, the
# commands too (issue 15: `ledger verify` re-decides every command from offset 0, and the
# reference data's changes are commands), and dead letters until an operator has dealt with them.
_FOREVER = {"retention.ms": "-1", "retention.bytes": "-1"}


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitioned: bool  # False: one partition whatever the configured count
    configs: dict[str, str] = field(default_factory=dict)

    def partitions(self, configured: int) -> int:
        return configured if self.partitioned else 1


TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec(COMMANDS, partitioned=True, configs=dict(_FOREVER)),
    TopicSpec(EVENTS, partitioned=True, configs=dict(_FOREVER)),
    # Read whole by every worker into a global table: one partition keeps it in one order.
    TopicSpec(REFERENCE, partitioned=False, configs={"cleanup.policy": "compact"}),
    TopicSpec(DLQ, partitioned=False, configs=dict(_FOREVER)),
)
# What the workers' consumer group reads (see streams.worker.seed_committed_offsets). The balances
# per publisher and ISP are folded by the authorizer itself (ledger/core/batch.py): no worker
# reads ledger.events any more, nor the repartition topics it used to re-key the facts through.
WORKER_SOURCES = (COMMANDS,)
# Partitions that get the marker below when empty: the workers' sources, and ledger.events,
# which the projection writer reads the same way (it skips the marker).
MARKED = (COMMANDS, EVENTS)

# Offset 0 of every partition of MARKED holds this marker, written when the topic is
# created, and the workers' committed offsets start at 1. Measured with faust-streaming 0.15.3: a
# partition whose committed offset is 0 is never delivered to its agent (faust reads a committed
# offset of 0 as "none" in several places, `offset if offset else None`); at 1 it is. Every
# reader of these topics skips records whose key is the marker.
PARTITION_MARKER_KEY = b"\x00ledger-partition-marker"
PARTITION_MARKER_VALUE = b"{}"


def is_marker(key: bytes | None) -> bool:
    return key == PARTITION_MARKER_KEY
