"""Headless Chromium for the playground tests: Playwright's Python package driving the system Chromium.

``playwright install`` (a browser download) is never needed: the Debian ``chromium`` package is used
(``.ci/run`` installs the Debian package). Without it the tests skip with the reason; in CI
(``CI=true``) a missing browser fails them instead, so a broken install step cannot pass unnoticed.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "test-artifacts" / "playground"  # git-ignored: screenshots of each run
CHROMIUM_ENV = "FAL_ONPREM_CHROMIUM"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def chromium_path() -> str | None:
    """$FAL_ONPREM_CHROMIUM, else the system Chromium on PATH."""
    explicit = os.environ.get(CHROMIUM_ENV)
    if explicit:
        return explicit if Path(explicit).is_file() else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return None


def unavailable(reason: str) -> NoReturn:
    """Skip on a user's machine; fail in CI, where .ci/run must have installed it."""
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run)", pytrace=False)
    pytest.skip(reason)


@contextmanager
def chromium_context() -> Iterator[Any]:
    """A Playwright browser context on a fresh Chromium profile (own user-data dir); its pages share
    local storage. Skips (fails in CI) when Playwright or Chromium is missing."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        unavailable("Playwright's Python package is not installed (pip install -e '.[dev]')")
    executable = chromium_path()
    if executable is None:
        unavailable(f"no system Chromium (apt-get install chromium, or set {CHROMIUM_ENV})")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as pw:
        context = pw.chromium.launch_persistent_context(
            profile,
            executable_path=executable,
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1440, "height": 900},
        )
        context.set_default_timeout(30_000)
        try:
            yield context
        finally:
            context.close()


def screenshot(page: Any, name: str) -> Path:
    path = ARTIFACTS / f"{name.replace('/', '_')}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
