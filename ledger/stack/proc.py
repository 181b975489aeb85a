"""Processes the stack started, recorded by pid and start time so that a reused pid is never
mistaken for ours."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import time
from pathlib import Path

import msgspec

STOP_POLL_SECONDS = 0.1


class ProcessRecord(msgspec.Struct, frozen=True):
    pid: int
    start_ticks: int  # field 22 of /proc/PID/stat: the kernel's start time of the process


def start_ticks(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    state = fields[0]
    if state in ("Z", "X"):  # a zombie has exited; it only waits to be reaped
        return None
    return int(fields[19])


def record(pid: int) -> ProcessRecord:
    ticks = start_ticks(pid)
    if ticks is None:
        raise ProcessLookupError(pid)
    return ProcessRecord(pid=pid, start_ticks=ticks)


def is_running(rec: ProcessRecord | None) -> bool:
    return rec is not None and start_ticks(rec.pid) == rec.start_ticks


def stop(rec: ProcessRecord, first_signal: int, deadline_seconds: float) -> bool:
    """Send first_signal, wait up to the deadline, then SIGKILL. True if it had to be killed."""
    if not is_running(rec):
        return False
    os.kill(rec.pid, first_signal)
    if _wait_gone(rec, deadline_seconds):
        return False
    if is_running(rec):
        os.kill(rec.pid, signal.SIGKILL)
        _wait_gone(rec, 10.0)
    return True


def _wait_gone(rec: ProcessRecord, seconds: float) -> bool:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        _reap(rec.pid)
        if not is_running(rec):
            return True
        time.sleep(STOP_POLL_SECONDS)
    return not is_running(rec)


def _reap(pid: int) -> None:
    # Not our child: its parent (or init) reaps it.
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        # As the servers themselves bind: connections of a killed server left in TIME_WAIT do
        # not make its port look taken, a listener does.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
