"""The README's client recipes, run verbatim (base URL substituted) against a live server."""

from __future__ import annotations

import base64
import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image
from skimage import data as skdata

from tests.support.js import JS_DIR, requires_js_client
from tests.support.live_server import LiveServer

REPO = Path(__file__).resolve().parents[1]
README_BASE = "http://127.0.0.1:8000"


def readme_block(name: str) -> str:
    text = (REPO / "README.md").read_text()
    match = re.search(rf"<!-- README-TEST:{re.escape(name)} -->\s*```\w+\n(.*?)```", text, re.S)
    assert match, f"README block {name} not found"
    return match.group(1)


@pytest.fixture(scope="module")
def dwpose_server(tmp_path_factory: pytest.TempPathFactory):
    server = LiveServer(tmp_path_factory.mktemp("readme"), wait_for=("fal-ai/dwpose",))
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def person_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def test_python_recipe_p2(dwpose_server: LiveServer, person_jpeg: bytes, tmp_path: Path) -> None:
    (tmp_path / "person.jpg").write_bytes(person_jpeg)
    code = readme_block("python-p2").replace(README_BASE, dwpose_server.url)
    proc = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        env={**os.environ, "FAL_KEY": "local-dummy"},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert proc.returncode == 0, proc.stderr
    last = proc.stdout.strip().splitlines()[-1].split()
    assert last[0].startswith(f"{dwpose_server.url}/files/")
    assert (int(last[1]), int(last[2])) == (512, 512)  # astronaut is square: short side 512
    assert "InProgress" in proc.stdout or "Completed" in proc.stdout


@requires_js_client
@pytest.mark.parametrize("name", ["js-j1", "js-j2"])
def test_js_recipes(name: str, dwpose_server: LiveServer, person_jpeg: bytes) -> None:
    script = JS_DIR / f"_readme_{name}.mjs"
    script.write_text(readme_block(name).replace(README_BASE, dwpose_server.url))
    try:
        proc = subprocess.run(
            ["node", script.name],
            cwd=JS_DIR,
            env={**os.environ, "IMAGE_URL": "data:image/jpeg;base64," + base64.b64encode(person_jpeg).decode()},
            capture_output=True,
            text=True,
            timeout=180,
        )
    finally:
        script.unlink(missing_ok=True)
    assert proc.returncode == 0, proc.stderr
    assert f"{dwpose_server.url}/files/" in proc.stdout.strip().splitlines()[-1]
