"""A throw-away PostgreSQL server for tests: initdb in a temp dir, a free loopback port, trust auth.

Uses the system's PostgreSQL binaries (Debian's ``postgresql`` package; ``.ci/run`` installs it when
absent). As root (CI, containers) the server runs as the ``postgres`` system user, since PostgreSQL
refuses to run as root. Without the binaries the tests that need it skip with the reason, except in CI
(``CI=true``), where a missing server is a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.live_server import free_port


def pg_bin(name: str) -> str | None:
    """Path of a PostgreSQL server binary (Debian keeps them out of PATH, under /usr/lib/postgresql/N/bin)."""
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)
    return candidates[0] if candidates else shutil.which(name)


def unavailable_reason() -> str | None:
    missing = [b for b in ("initdb", "pg_ctl", "postgres") if pg_bin(b) is None]
    if not missing:
        return None
    return f"PostgreSQL server binaries not found ({', '.join(missing)}): apt-get install postgresql"


class PostgresServer:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.data = root / "pgdata"
        self.port = free_port()
        self.as_root = os.geteuid() == 0

    def _run(self, *argv: str) -> None:
        cmd = list(argv)
        if self.as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, timeout=120)

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if self.as_root:
            shutil.chown(self.root, "postgres", "postgres")
        if not self.data.exists():
            self._run(pg_bin("initdb") or "initdb", "-D", str(self.data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        opts = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={self.root} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(pg_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-o", opts, "-l", str(self.root / "pg.log"),
                  "-w", "-t", "60", "start")  # fmt: skip

    def stop(self, mode: str = "fast") -> None:
        self._run(pg_bin("pg_ctl") or "pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def create_database(self) -> str:
        """A fresh, empty database; returns its URL."""
        import psycopg

        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url.rsplit("/", 1)[0] + f"/{name}"

    def wait_accepting(self, timeout: float = 30.0) -> None:
        import psycopg

        deadline = time.monotonic() + timeout
        while True:
            try:
                psycopg.connect(self.url, connect_timeout=2).close()
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server for the test session (each test takes a fresh database from it).

    Its folder is made directly under the system temp dir: pytest's own temp dirs are private to root,
    and the server may run as the ``postgres`` user."""
    reason = unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must test the PostgreSQL store)")
        pytest.skip(reason)
    server = PostgresServer(Path(tempfile.mkdtemp(prefix="fal-onprem-pg-")))
    server.start()
    yield server
    server.stop("immediate")
    shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    return postgres_server.create_database()
