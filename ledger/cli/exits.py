"""The exit statuses of the `ledger` command, beside 0 and argparse's own 2."""

from __future__ import annotations

EXIT_ERROR = 1
EXIT_NOT_RUNNING = 3
EXIT_MISMATCH = 4  # reconcile, replay or verify found books that do not agree
EXIT_INTERRUPTED = 130
