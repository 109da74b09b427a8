"""Real weights absent: the pipeline is reported failed with the pull command, and submits get 503."""

from __future__ import annotations

from pathlib import Path

import httpx

from tests.support.live_server import LiveServer
from tests.support.server_fixtures import png_data_uri


def test_missing_weights_answer_503_with_the_pull_command(tmp_path: Path) -> None:
    weights = tmp_path / "weights"
    weights.mkdir()
    server = LiveServer(
        tmp_path,
        tiny=False,
        extra_args=["--weights-dir", str(weights)],
        env={"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")},
        wait_for=("fal-ai/dwpose", "test/echo"),
    )
    server.start()
    try:
        ready = httpx.get(f"{server.url}/readyz").json()["pipelines"]
        assert ready["fal-ai/dwpose"]["state"] == "failed"
        assert "fal-onprem weights pull" in ready["fal-ai/dwpose"]["reason"]
        assert ready["test/echo"]["state"] == "ready"  # the others keep serving
        r = httpx.post(f"{server.url}/queue/fal-ai/dwpose", json={"image_url": png_data_uri()})
        assert r.status_code == 503
        body = r.json()
        assert body["error_type"] == "pipeline_unavailable"
        assert "fal-onprem weights pull" in body["detail"] and "dwpose" in body["detail"]
    finally:
        server.stop()
