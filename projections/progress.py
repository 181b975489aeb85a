"""What the whole-log tools (`ledger replay`, `ledger verify`) share to run over every partition:
their partitions shared among forked processes, and a progress bar for the terminal."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any

Progress = Callable[[int, int], None]  # (done, to do)
PROGRESS_SECONDS = 0.2


def partition_groups(partitions: int, processes: int) -> list[list[int]]:
    """The partitions of each process: every n-th, so that each gets a share of the log."""
    return [g for g in (list(range(i, partitions, processes)) for i in range(processes)) if g]


def progress_bar(label: str, unit: str, stream: Any = sys.stderr) -> Progress:
    """`label [####....]  42.0 % 420/1,000 unit`, redrawn at most every PROGRESS_SECONDS."""
    last = [0.0]

    def show(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] < PROGRESS_SECONDS and done < total:
            return
        last[0] = now
        width = 40
        filled = width if total <= 0 else min(width, width * done // total)
        percent = 100.0 if total <= 0 else min(100.0, 100.0 * done / total)
        stream.write(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {percent:5.1f} %"
                     f" {done:,}/{total:,} {unit}")  # fmt: skip
        if done >= total:
            stream.write("\n")
        stream.flush()

    return show
