"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.support.reference import missing_reference

pytest_plugins = ["tests.support.server_fixtures", "tests.support.postgres", "tests.support.s3"]


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """../shared/reference (override with FAL_ONPREM_REFERENCE_DIR); skips the test when absent (fails in CI)."""
    default = Path(__file__).resolve().parents[1].parent / "shared" / "reference"
    path = Path(os.environ.get("FAL_ONPREM_REFERENCE_DIR") or default)
    if not path.is_dir():
        missing_reference(f"reference data not found at {path} (set FAL_ONPREM_REFERENCE_DIR)")
    return path
