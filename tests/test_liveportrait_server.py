"""fal-ai/live-portrait/image through a live ``serve --tiny`` server and the real Python ``fal-client``.

Tiny networks, but the real insightface-compatible face plumbing (tiny ONNX stand-ins with the real
signatures) runs: detection, 106/203-point landmarks, crop, and paste-back.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import fal_client
import pytest
from PIL import Image
from skimage import data as skdata

from tests.support.live_server import LiveServer
from tests.support.server_fixtures import fetch_bytes, python_client

APP = "fal-ai/live-portrait/image"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fal_client.SyncClient]:
    server = LiveServer(tmp_path_factory.mktemp("liveportrait-server"), wait_for=(APP,))
    server.start()
    try:
        with python_client(server.url) as c:
            yield c
    finally:
        server.stop()


def photo_uri() -> str:
    buf = io.BytesIO()
    Image.fromarray(skdata.astronaut()[:, 64:448]).save(buf, format="JPEG", quality=92)  # 384 wide, 512 high
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


@pytest.mark.parametrize(
    ("knobs", "size"),
    [
        ({"flag_pasteback": True, "smile": 0.8, "rotate_yaw": 10}, (384, 512)),  # pasted back: input size
        ({"flag_pasteback": False, "blink": -10, "dsize": 256}, (256, 256)),  # the crop at dsize
    ],
)
def test_liveportrait_through_the_queue(client: fal_client.SyncClient, knobs: dict, size: tuple[int, int]) -> None:
    updates: list[object] = []
    result = client.subscribe(
        APP, arguments={"image_url": photo_uri(), **knobs}, with_logs=True, on_queue_update=updates.append
    )
    image = result["image"]
    assert image["content_type"] == "image/jpeg"  # fal's default output_format
    assert (image["width"], image["height"]) == size
    decoded = Image.open(io.BytesIO(fetch_bytes(image["url"])))
    assert decoded.format == "JPEG" and decoded.size == size
    assert any(isinstance(u, fal_client.Completed) for u in updates)
