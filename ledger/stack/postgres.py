"""The PostgreSQL cluster of the local stack: the server from the system's packages, a data
folder of the project's own, started with pg_ctl on a loopback port, the database created and the
migrations applied."""

from __future__ import annotations

import hashlib
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
from pathlib import Path

from ledger.errors import StackError
from ledger.settings import StackSettings
from ledger.stack import apt, proc
from ledger.stack.state import PostgresState

DATABASE = "ledger"
SUPERUSER = "ledger"
OS_USER_WHEN_ROOT = "postgres"  # PostgreSQL refuses to run as root
# Root's folders (and pytest's temporary ones) are closed to the postgres user, so a stack started
# by root keeps its cluster here, in a folder named after the stack's home.
ROOT_DATA_BASE = Path("/var/lib/internet-plus-ledger")
START_TIMEOUT_SECONDS = 60
STOP_DEADLINE_SECONDS = 30
CONNECT_TIMEOUT_SECONDS = 10

# Appended to postgresql.conf by the first `up`. The port is given at each start instead, so
# that it can change between runs.
_SERVER_SETTINGS = """
# --- internet-plus-ledger: local stack settings ---
listen_addresses = '127.0.0.1'
unix_socket_directories = ''
max_connections = 100
shared_buffers = 256MB
# Fail fast instead of hanging: a batch that waits this long on a lock is retried by its writer.
lock_timeout = '10s'
idle_in_transaction_session_timeout = '60s'
log_min_duration_statement = 1000
"""


def find_bindir() -> Path | None:
    """The newest server installed under /usr/lib/postgresql (Debian's layout), else pg_ctl on
    the PATH."""
    candidates = sorted(
        Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
        key=lambda path: int(path.parts[-3]) if path.parts[-3].isdigit() else 0,
    )
    if candidates:
        return candidates[-1].parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).resolve().parent if on_path else None


def ensure_installed() -> Path:
    bindir = find_bindir()
    if bindir is not None:
        return bindir
    apt.install("postgresql", "the PostgreSQL server")
    bindir = find_bindir()
    if bindir is None:
        raise StackError(
            "apt-get installed postgresql but no pg_ctl was found under /usr/lib/postgresql"
        )
    return bindir


class _Layout:
    """Where the cluster lives and as whom it runs."""

    def __init__(self, settings: StackSettings) -> None:
        self.running_as_root = os.geteuid() == 0
        if self.running_as_root:
            key = hashlib.sha256(str(settings.home).encode()).hexdigest()[:12]
            self.base = ROOT_DATA_BASE / key
            self.os_user: str | None = OS_USER_WHEN_ROOT
        else:
            self.base = settings.home / "postgres"
            self.os_user = None
        self.data_dir = self.base / "data"
        self.log_file = self.base / "postgres.log"
        # Beside the data, so that the two never part: a fresh checkout whose home is new still
        # finds the password of a cluster it reuses. Root-owned 0600 in the root layout.
        self.password_file = self.base / "password"

    def run(self, command: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        full = ["runuser", "-u", self.os_user, "--", *command] if self.os_user else command
        return subprocess.run(
            full, capture_output=True, text=True, timeout=timeout, cwd=self.base, check=False
        )

    def prepare(self) -> None:
        self.base.mkdir(parents=True, exist_ok=True)
        if self.os_user:
            try:
                entry = pwd.getpwnam(self.os_user)
            except KeyError:
                raise StackError(
                    "PostgreSQL refuses to run as root and there is no 'postgres' user: "
                    "apt-get install postgresql creates it"
                ) from None
            os.chown(self.base, entry.pw_uid, entry.pw_gid)
            self.base.chmod(0o700)


def _password(layout: _Layout) -> str:
    if layout.password_file.exists():
        return layout.password_file.read_text().strip()
    if (layout.data_dir / "PG_VERSION").exists():
        raise StackError(
            f"the cluster in {layout.data_dir} exists but its password file "
            f"{layout.password_file} is gone: run `ledger stack down --purge` and `up` again"
        )
    password = secrets.token_urlsafe(24)
    fd = os.open(layout.password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    return password


def _initdb(layout: _Layout, bindir: Path, password: str) -> None:
    pwfile = layout.base / ".initdb-password"
    fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(password + "\n")
    if layout.os_user:
        entry = pwd.getpwnam(layout.os_user)
        os.chown(pwfile, entry.pw_uid, entry.pw_gid)
    try:
        result = layout.run(
            [
                str(bindir / "initdb"),
                "-D",
                str(layout.data_dir),
                "-U",
                SUPERUSER,
                f"--pwfile={pwfile}",
                "--auth-host=scram-sha-256",
                "--auth-local=peer",
                "-E",
                "UTF8",
                "--no-locale",
            ],
            timeout=START_TIMEOUT_SECONDS,
        )
    finally:
        pwfile.unlink(missing_ok=True)
    if result.returncode != 0:
        shutil.rmtree(layout.data_dir, ignore_errors=True)  # never leave half a cluster
        raise StackError(f"initdb failed: {result.stderr.strip()[-300:]}")
    with (layout.data_dir / "postgresql.conf").open("a") as conf:
        conf.write(_SERVER_SETTINGS)


def _clear_stale_lock(data_dir: Path) -> None:
    """A cluster killed with -9 leaves postmaster.pid behind; if its pid now belongs to another
    process, PostgreSQL refuses to start. Remove it when no postgres runs under that pid."""
    lock = data_dir / "postmaster.pid"
    if not lock.exists():
        return
    try:
        pid = int(lock.read_text().splitlines()[0])
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ValueError, IndexError, FileNotFoundError):
        cmdline = b""
    if b"postgres" not in cmdline:
        lock.unlink(missing_ok=True)


def _postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def start(settings: StackSettings) -> PostgresState:
    bindir = ensure_installed()
    layout = _Layout(settings)
    layout.prepare()
    password = _password(layout)
    if not (layout.data_dir / "PG_VERSION").exists():
        _initdb(layout, bindir, password)
    if not proc.port_is_free(settings.postgres_port):
        raise StackError(
            f"port {settings.postgres_port} is already in use: stop what listens there or choose "
            "another port (LEDGER_POSTGRES_PORT or --postgres-port)"
        )
    _clear_stale_lock(layout.data_dir)
    result = layout.run(
        [
            str(bindir / "pg_ctl"),
            "-D",
            str(layout.data_dir),
            "-l",
            str(layout.log_file),
            "-w",
            "-t",
            str(START_TIMEOUT_SECONDS),
            "-o",
            f"-p {settings.postgres_port}",
            "start",
        ],
        timeout=START_TIMEOUT_SECONDS + 10,
    )
    if result.returncode != 0:
        raise StackError(
            f"PostgreSQL did not start ({result.stderr.strip()[-200:] or 'no message'}); "
            f"see {layout.log_file}"
        )
    dsn = f"postgresql://{SUPERUSER}:{password}@127.0.0.1:{settings.postgres_port}/{DATABASE}"
    return PostgresState(
        process=proc.record(_postmaster_pid(layout.data_dir)),
        port=settings.postgres_port,
        data_dir=str(layout.data_dir),
        log_file=str(layout.log_file),
        os_user=layout.os_user,
        dsn=dsn,
    )


def ensure_database(state: PostgresState) -> list[str]:
    """Create the database if missing and apply the migrations. Returns the migrations applied."""
    import psycopg

    from projections.migrate import apply_migrations

    admin_dsn = re.sub(r"/[^/]*$", "/postgres", state.dsn)
    with psycopg.connect(admin_dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT_SECONDS) as db:
        exists = db.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE,)).fetchone()
        if exists is None:
            db.execute(f'CREATE DATABASE "{DATABASE}"')
    return apply_migrations(state.dsn)


def stop(state: PostgresState) -> bool:
    # SIGINT is PostgreSQL's fast shutdown: open transactions roll back, the cluster stays clean.
    return proc.stop(state.process, signal.SIGINT, STOP_DEADLINE_SECONDS)


def purge(settings: StackSettings) -> None:
    layout = _Layout(settings)
    shutil.rmtree(layout.base, ignore_errors=True)
