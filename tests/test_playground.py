"""The playground's static files and routes (no browser: see test_playground_browser.py for the page)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from server.app import create_app
from server.config import Settings
from server.routes.playground import ASSETS_PREFIX, STATIC_DIR
from tests.support import browser

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted(p for p in STATIC_DIR.rglob("*") if p.is_file())
TEXT = [p for p in SHIPPED if p.suffix in (".html", ".js", ".css")]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path_factory.mktemp("data"))))


@pytest.mark.parametrize(
    "path", ["/", "/playground", "/playground/fal-ai/dwpose", "/playground/fal-ai/leffa/pose-transfer"]
)
def test_page_is_served_at_root_and_per_endpoint(client: TestClient, path: str) -> None:
    r = client.get(path)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    assert f'<script type="module" src="{ASSETS_PREFIX}/app.js">' in r.text
    assert client.head(path).status_code == 200


@pytest.mark.parametrize(
    ("name", "content_type"),
    [("app.js", "text/javascript"), ("style.css", "text/css"), ("samples/person.png", "image/png")],
)
def test_assets_are_served_with_their_types(client: TestClient, name: str, content_type: str) -> None:
    r = client.get(f"{ASSETS_PREFIX}/{name}")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith(content_type)
    assert r.content == (STATIC_DIR / name).read_bytes()


@pytest.mark.parametrize("name", ["nope.js", "..%2Fapp.py", "%2e%2e/routes/playground.py", "samples"])
def test_assets_outside_the_folder_or_missing_are_404(client: TestClient, name: str) -> None:
    r = client.get(f"{ASSETS_PREFIX}/{name}")
    assert r.status_code == 404
    assert r.json()["error_type"] == "not_found"


def test_every_local_reference_resolves_to_a_shipped_file() -> None:
    """ES module imports and /playground-assets/... URLs (scripts, styles, samples) all exist."""
    seen = 0
    for path in TEXT:
        text = path.read_text()
        for target in re.findall(r'from "(\./[^"]+)"', text):
            assert (path.parent / target).is_file(), f"{path.name} imports missing {target}"
            seen += 1
        for target in re.findall(rf"{ASSETS_PREFIX}/([\w./-]+\.\w+)", text):
            assert (STATIC_DIR / target).is_file(), f"{path.name} references missing {target}"
            seen += 1
    sample_files = re.search(r"const SAMPLE_FILES = \{(.*?)\};", (STATIC_DIR / "form.js").read_text())
    assert sample_files
    for name in re.findall(r'"([\w.-]+)"', sample_files.group(1)):
        assert (STATIC_DIR / "samples" / name).is_file(), name
        seen += 1
    assert seen >= 6


def test_no_external_resources() -> None:
    """Air-gapped: no CDN script, stylesheet, font, image or tracker is loaded from another host."""
    external = re.compile(
        r"""(src|href)\s*=\s*["']?(https?:)?//|@import|url\(\s*["']?(https?:)?//|from\s+["']https?:|fonts\."""
    )
    for path in TEXT:
        assert not external.search(path.read_text()), f"{path.name} loads something from another host"


def test_wheel_ships_every_playground_file() -> None:
    globs = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]["package-data"]["server"]
    packaged = {path for pattern in globs for path in STATIC_DIR.parent.glob(pattern)}
    missing = [str(path.relative_to(REPO)) for path in SHIPPED if path not in packaged]
    assert missing == [], "missing from the wheel's package-data"


def test_sample_images_are_small() -> None:
    samples = [p for p in SHIPPED if p.parent.name == "samples"]
    assert samples and all(p.stat().st_size < 48_000 for p in samples)


@pytest.mark.parametrize(("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)])
def test_missing_chromium_skips_but_fails_in_ci(monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setenv(browser.CHROMIUM_ENV, "/nonexistent/chromium")
    with pytest.raises(outcome, match=r"Chromium|Playwright"), browser.chromium_context():
        pass
