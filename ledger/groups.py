"""Consumer-group housekeeping shared by the stream workers and the projection writer."""

from __future__ import annotations

import logging

log = logging.getLogger("ledger.groups")


def leave_group(bootstrap_servers: str, group_id: str, instance_id: str) -> None:
    """Take a static member out of the group now, as a dynamic member leaves on close.

    A static member that stops does not leave (KIP-345): its partitions wait for its session to
    expire, so that a restart under the same name finds them again. That is what a supervised
    restart wants, and not what a stop wants: measured, a worker started right after another was
    stopped got the stopped one's partitions only 30 s later (broker_session_timeout)."""
    from kafka.admin import KafkaAdminClient
    from kafka.admin._groups import MemberToRemove

    admin = KafkaAdminClient(bootstrap_servers=bootstrap_servers, client_id="ledger-group-leave")
    try:
        admin.remove_group_members(group_id, [MemberToRemove(group_instance_id=instance_id)])
    except Exception as error:  # already gone, or the broker is down: nothing left to do
        log.info("leaving the group as %s: %s", instance_id, error)
    finally:
        admin.close()
