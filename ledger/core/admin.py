"""Deciding the administration of an account (open, block, limits, employees), the close of
a billing period in one partition and a change of reference data in one partition (issue 15)."""

from __future__ import annotations

from ledger.core import calendar
from ledger.core.context import Context, fingerprint
from ledger.core.state import AccountState, ClosedPeriods
from schemas.commands import (
    AccountBlockRequested,
    AccountOpenRequested,
    AccountUnblockRequested,
    EmployeeAuthoriseRequested,
    EmployeeRevokeRequested,
    LimitsSetRequested,
    PeriodCloseRequested,
    ReferenceChangeRequested,
    UpgradeRequested,
)
from schemas.facts import (
    AccountBlocked,
    AccountOpened,
    AccountUnblocked,
    CommandRejected,
    EmployeeAuthorised,
    EmployeeRevoked,
    Fact,
    LimitsSet,
    PeriodClosed,
    ReferenceChanged,
    Upgraded,
    event_id_of,
)
from schemas.reference import effective_at
from schemas.types import CommandRejection

AccountAdminCommand = (
    AccountOpenRequested
    | AccountBlockRequested
    | AccountUnblockRequested
    | LimitsSetRequested
    | EmployeeAuthoriseRequested
    | EmployeeRevokeRequested
)
AdminCommand = AccountAdminCommand | PeriodCloseRequested


def _command_id(command: AdminCommand, reason: CommandRejection | None = None) -> str:
    """An admin fact is a function of its command's body and the outcome: a command rejected (an
    unknown account, ISP or employee) and accepted later has two facts under two ids (issue 12);
    the same outcome again is the same fact again."""
    return event_id_of("command", command.command_id, fingerprint(command), reason)


def _command_rejected(command: AdminCommand, reason: CommandRejection) -> CommandRejected:
    tag: str = command.__struct_config__.tag  # type: ignore[assignment]
    return CommandRejected(
        event_id=_command_id(command, reason),
        command_id=command.command_id,
        command_type=tag,
        occurred_at=command.occurred_at,
        reason=reason,
        account_id=getattr(command, "account_id", None),
        isp_id=getattr(command, "isp_id", None),
    )


def decide_admin(
    state: AccountState | None,
    command: AccountAdminCommand,
    context: Context,
    origin: int | None = None,
) -> Fact:
    event_id = _command_id(command)
    if isinstance(command, AccountOpenRequested):
        return _decide_open(state, command, context, event_id, origin)
    if state is None:
        return _command_rejected(command, "account_unknown")
    if isinstance(command, AccountBlockRequested):
        return AccountBlocked(
            event_id, command.command_id, command.account_id, command.reason, command.occurred_at
        )
    if isinstance(command, AccountUnblockRequested):
        return AccountUnblocked(
            event_id, command.command_id, command.account_id, command.occurred_at
        )
    if isinstance(command, LimitsSetRequested):
        return LimitsSet(
            event_id, command.command_id, command.account_id, command.limits, command.occurred_at
        )
    if state.kind != "enterprise":
        return _command_rejected(command, "not_enterprise")
    if isinstance(command, EmployeeAuthoriseRequested):
        return EmployeeAuthorised(
            event_id,
            command.command_id,
            command.account_id,
            command.user_id,
            command.occurred_at,
            command.budget_cents,
        )
    if command.user_id not in state.employees:
        return _command_rejected(command, "employee_unknown")
    return EmployeeRevoked(
        event_id, command.command_id, command.account_id, command.user_id, command.occurred_at
    )


def _decide_open(
    state: AccountState | None,
    command: AccountOpenRequested,
    context: Context,
    event_id: str,
    origin: int | None,
) -> Fact:
    opened = AccountOpened(
        event_id,
        command.command_id,
        command.account_id,
        command.isp_id,
        command.kind,
        command.occurred_at,
        command.company_name,
    )
    if state is not None:
        if state.opened_fingerprint == fingerprint(command):
            return opened  # the same request again: the same fact again
        return _command_rejected(command, "account_exists")
    at = calendar.epoch_seconds(command.occurred_at)
    if context.isp(command.isp_id, at, origin) is None:
        return _command_rejected(command, "isp_unknown")
    return opened


def decide_close(
    closed: ClosedPeriods, command: PeriodCloseRequested, context: Context, origin: int | None
) -> Fact:
    """A period closes in a partition when its close command passes there. It cannot close before
    it has ended, and closes once: the same command again gives the same fact again. The ISP's
    calendar is the one in force at the close's time (ledger.core.reference)."""
    body_fingerprint = fingerprint(command)
    isp = context.isp(command.isp_id, calendar.epoch_seconds(command.occurred_at), origin)
    if isp is None:
        return _command_rejected(command, "isp_unknown")
    closed_by = closed.of(command.isp_id).get(command.period)
    if closed_by is not None and closed_by != body_fingerprint:
        return _command_rejected(command, "period_already_closed")
    _, end = calendar.period_bounds(command.period, isp.billing_day)
    if closed_by is None and command.occurred_at < end:
        return _command_rejected(command, "period_not_ended")
    # One id per partition's close of a period, whichever command closed it: there is one such
    # fact (a second close is refused above), so two different facts under this id would be a
    # broken close barrier, which the projection writer stops on rather than applying both.
    return PeriodClosed(
        event_id=f"period.{command.isp_id}.{command.period}.{command.partition}",
        command_id=command.command_id,
        isp_id=command.isp_id,
        period=command.period,
        partition=command.partition,
        partitions=command.partitions,
        occurred_at=command.occurred_at,
    )


def evolve_close(closed: ClosedPeriods, fact: Fact, command: PeriodCloseRequested) -> ClosedPeriods:
    if isinstance(fact, PeriodClosed):
        closed.by_isp.setdefault(fact.isp_id, {}).setdefault(fact.period, fingerprint(command))
    return closed


def decide_reference_change(command: ReferenceChangeRequested) -> ReferenceChanged:
    """A reference change is always taken (the record was checked when it was decoded); what it
    changes in the partition is ledger.core.reference.PartitionReference.apply's. Its id is the
    command's fingerprint, which covers the partition: one fact per partition and command, the
    same again when the command comes again."""
    return ReferenceChanged(
        event_id=f"reference.{fingerprint(command)}",
        command_id=command.command_id,
        record=command.record,
        effective_at=effective_at(command.record),
        partition=command.partition,
        partitions=command.partitions,
        occurred_at=command.occurred_at,
    )


def decide_upgrade(command: UpgradeRequested) -> Upgraded:
    """An upgrade is always taken (issue 16): what it changes in the partition is
    ledger.core.reference.PartitionReference.activate's. Its id is the command's fingerprint,
    which covers the partition, as a reference change's."""
    return Upgraded(
        event_id=f"upgrade.{fingerprint(command)}",
        command_id=command.command_id,
        feature=command.feature,
        partition=command.partition,
        partitions=command.partitions,
        occurred_at=command.occurred_at,
    )
