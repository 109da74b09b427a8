"""The venv holds the reviewed set of libraries: one OpenCV, one onnxruntime, OpenCV at the goldens' pin.

Two distributions that ship the same top-level module (opencv-python + opencv-python-headless, onnxruntime +
onnxruntime-gpu) overwrite each other's files, so which one `import` gets depends on install order.
"""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest

from tests.support.reference import REQUIRE_ENV, missing_reference

ROOT = Path(__file__).resolve().parents[1]


def distributions_of(module: str) -> list[str]:
    return sorted(set(metadata.packages_distributions().get(module, [])))


@pytest.mark.parametrize("module", ["cv2", "onnxruntime"])
def test_one_distribution_per_module(module):
    owners = distributions_of(module)
    assert len(owners) == 1, f"{module} is provided by {owners}: keep exactly one (see pyproject.toml)"


def test_opencv_is_the_version_the_goldens_were_made_with():
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["uv"]["constraint-dependencies"]
    pin = next(p for p in pins if p.startswith("opencv-python=="))
    (owner,) = distributions_of("cv2")
    assert f"{owner}=={metadata.version(owner)}" == pin


def test_missing_reference_skips_for_users_and_fails_in_ci(monkeypatch):
    monkeypatch.delenv(REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="golden gone"):
        missing_reference("golden gone")
    monkeypatch.setenv(REQUIRE_ENV, "1")
    with pytest.raises(pytest.fail.Exception, match="golden gone"):
        missing_reference("golden gone")
