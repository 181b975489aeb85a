"""Install a Debian package the stack needs (PostgreSQL, Prometheus), as root, once."""

from __future__ import annotations

import os
import subprocess

from ledger.errors import StackError

APT_TIMEOUT_SECONDS = 900


def install(package: str, what: str) -> None:
    """apt-get update + install --no-install-recommends; a clear error when not root or when it
    fails."""
    if os.geteuid() != 0:
        raise StackError(
            f"{what} is not installed: run `sudo apt-get install {package}` (Debian/Ubuntu), "
            "then run the command again"
        )
    print(f"installing {what} from Debian's packages (apt-get install {package})", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for command in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", package],
    ):
        result = subprocess.run(
            command,
            capture_output=True,
            text=True,
            env=env,
            timeout=APT_TIMEOUT_SECONDS,
            check=False,
        )
        if result.returncode != 0:
            tail = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise StackError(
                f"`{' '.join(command)}` failed ({tail}): install {package} by hand, then run again"
            )
