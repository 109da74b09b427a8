"""Server-side caps on num_inference_steps and image area: a 422 naming the field at submit (API only)."""

from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from server.app import create_app
from server.config import PipelineSettings, Settings

PULID = "fal-ai/pulid"
BODY = {"reference_images": [{"image_url": "data:image/png;base64,AA=="}], "prompt": "a portrait"}


def client(tmp_path: Path, **overrides: object) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path, **overrides)))


def test_defaults_refuse_too_many_steps_and_too_many_pixels(tmp_path: Path) -> None:
    c = client(tmp_path)
    for route in ("/queue/", "/run/"):
        r = c.post(f"{route}{PULID}", json={**BODY, "num_inference_steps": 101})
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["loc"] == ["body", "num_inference_steps"]
        assert "at most 100" in r.json()["detail"][0]["msg"]
    r = c.post(f"/queue/{PULID}", json={**BODY, "image_size": {"width": 14142, "height": 14142}})
    assert r.status_code == 422
    assert [d["loc"] for d in r.json()["detail"]] == [["body", "image_size"]]
    huge = {"width": 4096, "height": 4096}
    both = c.post(f"/queue/{PULID}", json={**BODY, "num_inference_steps": 500, "image_size": huge})
    assert [d["loc"][1] for d in both.json()["detail"]] == ["num_inference_steps", "image_size"]
    # within the caps the request gets past them (PuLID has no pipeline yet here: 503, not 422)
    ok = c.post(f"/queue/{PULID}", json={**BODY, "num_inference_steps": 100, "image_size": "square_hd"})
    assert ok.status_code != 422, ok.text


def test_caps_are_configurable_per_endpoint(tmp_path: Path) -> None:
    cfg = PipelineSettings(max_inference_steps=8, max_image_area=512 * 512)
    c = client(tmp_path, pipelines={PULID: cfg}, max_inference_steps=1000)
    r = c.post(f"/queue/{PULID}", json={**BODY, "num_inference_steps": 9})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "num_inference_steps"]
    r = c.post(f"/queue/{PULID}", json={**BODY, "num_inference_steps": 8, "image_size": "square_hd"})
    assert r.status_code == 422 and r.json()["detail"][0]["loc"] == ["body", "image_size"]
    r = c.post(f"/queue/{PULID}", json={**BODY, "num_inference_steps": 8, "image_size": "square"})
    assert r.status_code != 422
