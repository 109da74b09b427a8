"""Running the node scripts in tests/js that drive the official ``@fal-ai/client``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

JS_DIR = Path(__file__).resolve().parents[1] / "js"
MISSING = "node or tests/js/node_modules missing: run `npm ci --prefix tests/js` (scripts/test.sh does)"


def js_client_available() -> bool:
    installed = (JS_DIR / "node_modules" / "@fal-ai" / "client" / "package.json").is_file()
    return shutil.which("node") is not None and installed


requires_js_client = pytest.mark.skipif(not js_client_available(), reason=MISSING)


def run_node_report(script: str, args: list[str], env: dict[str, str], timeout: float = 300) -> dict:
    """Run ``node <script> <args>`` in tests/js; the script prints one JSON report as its last line."""
    proc = subprocess.run(
        ["node", script, *args],
        cwd=JS_DIR,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr + proc.stdout
    return json.loads(proc.stdout.strip().splitlines()[-1])


def ok(report: dict, name: str) -> dict:
    """One scenario's entry, failing the test with the scenario's own error when it did not pass."""
    entry = report[name]
    assert entry["ok"], entry.get("error")
    return entry
