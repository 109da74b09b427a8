"""fal-ai/cat-vton through a live ``serve --tiny`` server with the real Python and JS clients.

Tiny networks, but the whole path runs: fetch, resize, AutoMasker (tiny DensePose and SCHP), VAE, DDIM
steps with CFG, decode, PNG. One server for the module; few, small requests (the CPU is shared).
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

fal_client = pytest.importorskip("fal_client")

from tests.support.js import requires_js_client, run_node_report  # noqa: E402
from tests.support.live_server import LiveServer  # noqa: E402
from tests.support.server_fixtures import fetch_bytes, serve_endpoint  # noqa: E402

APP = "fal-ai/cat-vton"
CUSTOM = {"width": 100, "height": 130}  # -> 96 x 128


def data_uri(array: np.ndarray, fmt: str = "JPEG") -> str:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt)
    return f"data:image/{fmt.lower()};base64," + base64.b64encode(buf.getvalue()).decode()


# With random weights the tiny parsers find "clothes" in a flat green image for lower and overall (7 % and 9 % of
# the 96 x 128 output after the blur), not in a photo: this keeps the denoised region non-empty.
PERSON = data_uri(np.full((256, 192, 3), (0, 255, 0), np.uint8), "PNG")
GARMENT = data_uri(
    np.kron(np.array([[[220, 40, 40]], [[250, 250, 250]]] * 5, np.uint8), np.ones((12, 90, 1), np.uint8)), "PNG"
)


def arguments(**overrides: object) -> dict:
    base = {"human_image_url": PERSON, "garment_image_url": GARMENT, "cloth_type": "overall", "image_size": CUSTOM}
    return base | {"num_inference_steps": 3, "seed": 1} | overrides


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from serve_endpoint(tmp_path_factory, APP)


def pixels(image: dict) -> np.ndarray:
    png = Image.open(io.BytesIO(fetch_bytes(image["url"])))
    assert png.format == "PNG" and png.size == (image["width"], image["height"])
    return np.asarray(png.convert("RGB"))


def test_seed_gives_the_same_bytes_and_a_preset_size(client: fal_client.SyncClient) -> None:
    updates: list[object] = []
    first = client.subscribe(APP, arguments=arguments(seed=7), with_logs=True, on_queue_update=updates.append)
    again = client.run(APP, arguments=arguments(seed=7))
    assert fetch_bytes(first["image"]["url"]) == fetch_bytes(again["image"]["url"])
    logs = [log["message"] for u in updates if isinstance(u, fal_client.InProgress) for log in u.logs or []]
    assert any(m.startswith("AutoMasker: overall mask covers") for m in logs)
    square = client.run(APP, arguments=arguments(image_size="square", num_inference_steps=1))
    assert (square["image"]["width"], square["image"]["height"]) == (512, 512)
    assert square["image"]["content_type"] == "image/png"


def test_every_cloth_type_batched_equals_single(client: fal_client.SyncClient) -> None:
    types = ["upper", "lower", "overall", "inner", "outer"]
    with ThreadPoolExecutor(len(types)) as pool:  # submitted together: the worker batches them
        batched = list(pool.map(lambda t: client.run(APP, arguments=arguments(cloth_type=t, seed=3)), types))
    for result in batched:
        assert (result["image"]["width"], result["image"]["height"]) == (96, 128)
    overall = pixels(client.run(APP, arguments=arguments(cloth_type="overall", seed=3))["image"])
    diff = np.abs(pixels(batched[2]["image"]).astype(int) - overall.astype(int))
    assert diff.max() <= 1 and (diff > 0).mean() < 1e-3  # float noise of batched kernels at most
    assert not np.array_equal(pixels(batched[1]["image"]), pixels(batched[2]["image"]))


def test_out_of_range_size_is_a_422_naming_the_field(client: fal_client.SyncClient) -> None:
    with pytest.raises(fal_client.client.FalClientHTTPError) as err:
        client.run(APP, arguments=arguments(image_size={"width": 4096, "height": 512}))
    assert err.value.status_code == 422
    assert err.value.message[0]["loc"] == ["body", "image_size", "width"]


@requires_js_client
def test_js_client_subscribe(server: LiveServer, tmp_path: Path) -> None:
    inputs = tmp_path / "inputs.json"
    inputs.write_text(json.dumps([arguments(seed=7)]))
    (result,) = run_node_report("subscribe.mjs", [server.url, APP, str(inputs)], {})["results"]
    assert result["ok"], result
    image = result["data"]["image"]
    assert (image["width"], image["height"], image["content_type"]) == (96, 128, "image/png")
    assert fetch_bytes(image["url"]).startswith(b"\x89PNG")
