"""What a test does when the golden fixtures (../shared/reference) are missing.

A user's clone without ../shared skips those tests with the reason; CI sets FAL_ONPREM_REQUIRE_REFERENCE=1
(.ci/run) so that a missing or moved fixture fails the run instead of silently shrinking it.
"""

from __future__ import annotations

import os

import pytest

REQUIRE_ENV = "FAL_ONPREM_REQUIRE_REFERENCE"


def missing_reference(message: str) -> None:
    """Skip (default) or fail (``FAL_ONPREM_REQUIRE_REFERENCE=1``) the calling test."""
    if os.environ.get(REQUIRE_ENV) == "1":
        pytest.fail(f"{message} ({REQUIRE_ENV}=1: reference data is required here)", pytrace=False)
    pytest.skip(message)
