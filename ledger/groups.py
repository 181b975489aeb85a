"""Moved to ledger/kafka/groups.py (issue 17). Kept for projections/writer.py until it moves."""

from ledger.kafka.groups import leave_group

__all__ = ["leave_group"]
