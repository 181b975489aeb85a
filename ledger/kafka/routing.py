"""Whether a command arrived on the partition it belongs to: the check the worker makes before it
decides a command (streams/authorizer.py) and `ledger verify` makes again when it re-decides the
log (projections/verify.py), in one place so that both set aside the same commands.

A barrier (a period's close, the holds' expiry, a reference change) names its partition and the
partition count; any other command belongs to its account's partition, unless its account already
has a state in this partition (opened here after this same check: only the others pay for the
partitioner's hash, 5 % of the worker's time, measured)."""

from __future__ import annotations

from collections.abc import Callable

from ledger.kafka.partitioning import partition_for
from schemas.commands import Command, PartitionBarrier


def misrouted(
    command: Command, partition: int, partitions: int, has_state: Callable[[str], bool]
) -> str | None:
    """None when the command belongs on `partition` of `partitions`; otherwise why it does not
    (the dead letter's detail, reason `wrong_partition`). `has_state(account_id)`: whether the
    account has a state in this partition."""
    if isinstance(command, PartitionBarrier):
        if command.partition != partition or command.partitions != partitions:
            return (
                f"a barrier for partition {command.partition} of {command.partitions} arrived "
                f"on partition {partition} of {partitions}"
            )
        return None
    account_id = command.account_id
    if has_state(account_id):
        return None
    home = partition_for(account_id, partitions)
    if home != partition:
        return (
            f"account {account_id} belongs to partition {home}, this command arrived on {partition}"
        )
    return None
