"""fal-ai/dwpose through a live ``serve --tiny`` server and the real Python ``fal-client``."""

from __future__ import annotations

import io
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

fal_client = pytest.importorskip("fal_client")
skdata = pytest.importorskip("skimage.data")


from tests.support.live_server import LiveServer  # noqa: E402
from tests.support.server_fixtures import fetch_bytes, jpeg_data_uri, serve_endpoint  # noqa: E402

APP = "fal-ai/dwpose"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    yield from serve_endpoint(tmp_path_factory, APP)


def test_dwpose_requests_through_the_queue(client: fal_client.SyncClient) -> None:
    photo = skdata.astronaut()[:400, 56:356]  # 400x300 -> 683x512
    arguments = [{"image_url": jpeg_data_uri(photo, 90), "draw_mode": mode} for mode in ("body-pose", "full-pose")] * 3
    with ThreadPoolExecutor(len(arguments)) as pool:
        results = list(pool.map(lambda args: client.run(APP, arguments=args), arguments))
    images = []
    for result in results:
        image = result["image"]
        assert (image["width"], image["height"]) == (512, 683)
        assert image["content_type"] == "image/png"
        png = Image.open(io.BytesIO(fetch_bytes(image["url"])))
        assert png.size == (512, 683)
        images.append(np.asarray(png.convert("RGB")))
    assert all(img.any() for img in images)
    # same input and mode -> same image, whichever batch each request landed in
    for i in range(2, len(images)):
        np.testing.assert_array_equal(images[i], images[i % 2])
    assert not np.array_equal(images[0], images[1])


def test_dwpose_validation_error(client: fal_client.SyncClient) -> None:
    with pytest.raises(fal_client.client.FalClientError) as err:
        client.run(APP, arguments={"image_url": jpeg_data_uri(skdata.coffee(), 90), "draw_mode": "skeleton"})
    assert err.value.message[0]["loc"] == ["body", "draw_mode"]
