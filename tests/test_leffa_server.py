"""fal-ai/leffa/pose-transfer through a live ``serve --tiny`` server with the real Python ``fal-client`` and the
real npm ``@fal-ai/client``: tiny UNets/VAE, tiny DensePose and a tiny safety checker, the whole request path."""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import fal_client
import numpy as np
import pytest
from PIL import Image
from skimage import data as skdata

from tests.support.js import requires_js_client, run_node_report
from tests.support.live_server import LiveServer
from tests.support.server_fixtures import fetch_bytes, jpeg_data_uri, serve_endpoint

APP = "fal-ai/leffa/pose-transfer"
STEPS = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from serve_endpoint(tmp_path_factory, APP)


PHOTO = skdata.astronaut()
ARGS = {"pose_image_url": jpeg_data_uri(PHOTO[:, 96:416]), "person_image_url": jpeg_data_uri(PHOTO),
        "num_inference_steps": STEPS}  # fmt: skip


def pixels(image: dict) -> np.ndarray:
    url = image["url"]
    data = base64.b64decode(url.split(",", 1)[1]) if url.startswith("data:") else fetch_bytes(url)
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def same_image(a: np.ndarray, b: np.ndarray) -> None:
    """Equal up to float rounding of another batch composition (see tests/test_leffa_pipeline.py)."""
    diff = np.abs(a.astype(int) - b.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() <= 1e-3


def test_pose_transfer_through_the_queue(client: fal_client.SyncClient) -> None:
    requests = [{**ARGS, "seed": 11}, {**ARGS, "seed": 12}, {**ARGS, "seed": 11, "output_format": "jpeg"},
                {**ARGS, "seed": 11, "sync_mode": True}, {k: v for k, v in ARGS.items()}]  # fmt: skip
    with ThreadPoolExecutor(len(requests)) as pool:  # concurrent: they share batches
        results = list(pool.map(lambda args: client.run(APP, arguments=args), requests))
    for result in results:
        assert (result["image"]["width"], result["image"]["height"]) == (192, 256)
        assert result["has_nsfw_concepts"] is False
    assert [r["seed"] for r in results[:4]] == [11, 12, 11, 11]
    assert isinstance(results[4]["seed"], int)  # no seed given: a random one, echoed
    assert results[0]["image"]["content_type"] == "image/png"
    assert results[2]["image"]["content_type"] == "image/jpeg"
    assert results[3]["image"]["url"].startswith("data:image/png;base64,")
    images = [pixels(r["image"]) for r in results]
    same_image(images[0], images[3])  # same seed, same image
    assert np.abs(images[0].astype(int) - images[1]).mean() > 5  # another seed, another image
    rerun = client.run(APP, arguments={**ARGS, "seed": 12})  # alone this time
    same_image(pixels(rerun["image"]), images[1])


@requires_js_client
def test_npm_client_gets_the_same_image(client: fal_client.SyncClient, server: LiveServer, tmp_path) -> None:
    request = tmp_path / "input.json"
    request.write_text(json.dumps({**ARGS, "seed": 21}))
    report = run_node_report("run_app.mjs", [server.url, APP, str(request)], {})
    assert report["data"]["seed"] == 21 and report["data"]["has_nsfw_concepts"] is False
    expected = client.run(APP, arguments={**ARGS, "seed": 21})
    same_image(pixels(report["data"]["image"]), pixels(expected["image"]))


def test_validation_errors_name_the_field(client: fal_client.SyncClient) -> None:
    with pytest.raises(fal_client.client.FalClientError) as err:
        client.run(APP, arguments={"pose_image_url": ARGS["pose_image_url"]})
    assert err.value.message[0]["loc"] == ["body", "person_image_url"]
    with pytest.raises(fal_client.client.FalClientError) as err:
        client.run(APP, arguments={**ARGS, "num_inference_steps": 51})
    assert err.value.message[0]["loc"] == ["body", "num_inference_steps"]
