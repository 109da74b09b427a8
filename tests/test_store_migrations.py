"""PostgreSQL schema migrations: applied once, in order, also when several processes start together."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

from server.store.migrations import MIGRATIONS, current_version, upgrade
from tests.support.live_server import REPO


def test_concurrent_upgrades_apply_each_migration_once(postgres_url: str) -> None:
    with ThreadPoolExecutor(4) as pool:
        applied = list(pool.map(lambda _: upgrade(postgres_url), range(4)))
    latest = MIGRATIONS[-1][0]
    assert sorted(v for run in applied for v in run) == [m[0] for m in MIGRATIONS]
    assert current_version(postgres_url) == latest
    assert upgrade(postgres_url) == []


def test_db_upgrade_command(postgres_url: str) -> None:
    run = [sys.executable, "-m", "server.cli", "db", "upgrade", "--store-url", postgres_url]
    first = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert f"schema version {MIGRATIONS[-1][0]}" in first.stdout and "applied now: [1" in first.stdout
    again = subprocess.run(run, cwd=REPO, capture_output=True, text=True, timeout=60, check=True)
    assert "applied now: none" in again.stdout
