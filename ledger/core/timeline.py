"""A value that changes at given times: limits, blocks and employee grants are effective from
their command's `occurred_at`, whatever order the commands are processed in."""

from __future__ import annotations

from bisect import bisect_right
from typing import TypeVar

T = TypeVar("T")

Timeline = list[tuple[int, T]]


def _time(entry: tuple[int, object]) -> int:
    return entry[0]


def value_at(timeline: Timeline[T], seconds: int) -> T | None:
    """The value in force at an instant: the last one set at or before it."""
    index = bisect_right(timeline, seconds, key=_time)
    return timeline[index - 1][1] if index else None


def set_from(timeline: Timeline[T], seconds: int, value: T) -> None:
    """Make `value` effective from `seconds` (until the next later entry). Setting the same value
    at the same time again changes nothing, so that applying a fact twice is harmless."""
    index = bisect_right(timeline, seconds, key=_time)
    if index and timeline[index - 1] == (seconds, value):
        return
    timeline.insert(index, (seconds, value))


def prune_before(timeline: Timeline[T], seconds: int) -> None:
    """Forget entries superseded before `seconds`; the value in force then is kept."""
    index = bisect_right(timeline, seconds, key=_time)
    if index > 1:
        del timeline[: index - 1]
