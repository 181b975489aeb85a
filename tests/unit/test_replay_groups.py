"""`ledger replay` shares the partitions among processes (issue 13): each partition in exactly
one process, every process with some, and the children's progress summed for the parent."""

from __future__ import annotations

import multiprocessing

import pytest

from projections.progress import partition_groups
from projections.replay import _SharedProgress


@pytest.mark.parametrize(("partitions", "processes"), [(4, 2), (4, 3), (1, 2), (6, 4), (3, 1)])
def test_each_partition_in_exactly_one_process(partitions: int, processes: int) -> None:
    groups = partition_groups(partitions, processes)
    assert sorted(p for group in groups for p in group) == list(range(partitions))
    assert all(groups) and len(groups) == min(partitions, processes)


def test_the_children_progress_adds_up() -> None:
    counter = multiprocessing.get_context("fork").Value("q", 0)
    one, two = _SharedProgress(counter), _SharedProgress(counter)
    one(100, 500)
    two(40, 300)
    one(250, 500)  # cumulative within a child's round: only the difference is added
    assert counter.value == 290
