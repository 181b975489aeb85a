"""The ledger's consumer groups and the names made from them, and their housekeeping, shared by
the stream workers, the projection writer and the tools that read what they wrote.

A light module (no faust): `ledger balances`, `ledger status` and `ledger reconcile` take the
table and group names from here instead of loading the worker's faust app (issue 17)."""

from __future__ import annotations

import logging

from ledger.kafka.settings import admin_config

log = logging.getLogger("ledger.groups")

# The workers' faust app: its id is their consumer group and the prefix of their tables'
# changelog topics.
APP_ID = "internet-plus-ledger"
# The workers' table of account states and partition summaries (streams/app.py).
ACCOUNTS_TABLE = "accounts"
# The projection writers' consumer group (projections/writer.py).
PROJECTIONS_GROUP_ID = f"{APP_ID}-projections"


def changelog_topic(table: str, app_id: str = APP_ID) -> str:
    """The topic faust keeps a table's changes in."""
    return f"{app_id}-{table}-changelog"


def leave_group(bootstrap_servers: str, group_id: str, instance_id: str) -> None:
    """Take a static member out of the group now, as a dynamic member leaves on close.

    A static member that stops does not leave (KIP-345): its partitions wait for its session to
    expire, so that a restart under the same name finds them again. That is what a supervised
    restart wants, and not what a stop wants: measured, a worker started right after another was
    stopped got the stopped one's partitions only 30 s later (broker_session_timeout)."""
    from kafka.admin import KafkaAdminClient
    from kafka.admin._groups import MemberToRemove

    admin = KafkaAdminClient(**admin_config(bootstrap_servers, "ledger-group-leave"))
    try:
        admin.remove_group_members(group_id, [MemberToRemove(group_instance_id=instance_id)])
    except Exception as error:  # already gone, or the broker is down: nothing left to do
        log.info("leaving the group as %s: %s", instance_id, error)
    finally:
        admin.close()
