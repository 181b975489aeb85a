"""Prometheus and promtool from Debian's packages: to check deploy/prometheus and to scrape the
ledger's processes in the tests (and on an operator's machine)."""

from __future__ import annotations

import shutil
from pathlib import Path

from ledger.errors import StackError
from ledger.stack import apt


def ensure_installed() -> tuple[Path, Path]:
    """(prometheus, promtool), installed with apt-get when missing and running as root."""
    found = shutil.which("prometheus"), shutil.which("promtool")
    if None in found:
        apt.install("prometheus", "Prometheus")
        found = shutil.which("prometheus"), shutil.which("promtool")
    prometheus, promtool = found
    if prometheus is None or promtool is None:
        raise StackError("apt-get installed prometheus but prometheus or promtool is not on PATH")
    return Path(prometheus), Path(promtool)
