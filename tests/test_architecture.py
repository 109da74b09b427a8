"""The boundaries of ARCHITECTURE.md: the API process imports no model library, pipelines no server."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MODEL_LIBRARIES = ("torch", "torchvision", "onnxruntime", "cv2", "diffusers", "transformers", "insightface", "timm")


def test_api_process_imports_no_model_library() -> None:
    code = (
        "import sys, tempfile\n"
        "from server.app import create_app\n"
        "from server.config import Settings\n"
        "app = create_app(Settings(data_dir=tempfile.mkdtemp()))\n"
        "app.openapi()\n"
        f"print(','.join(m for m in {MODEL_LIBRARIES!r} if m in sys.modules))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == ""


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def test_pipelines_and_weights_never_import_the_server() -> None:
    offenders = [
        str(path.relative_to(REPO))
        for folder in ("pipelines", "weights")
        for path in (REPO / folder).rglob("*.py")
        if any(name == "server" or name.startswith("server.") for name in imported_modules(path))
    ]
    assert offenders == []
