"""Decode and body limits: every bad input is a 4xx with a fal-style detail, never a 5xx."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import httpx
import pytest
from PIL import Image

from pipelines.common.image_io import DecodeLimits, ImageDecodeError, decode_image
from tests.support.live_server import LiveServer
from tests.support.server_fixtures import wait_completed


def png_header_only(width: int, height: int) -> bytes:
    """A valid PNG signature + IHDR announcing width x height, with one tiny IDAT (no full image)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" + b"\x00" * 3 * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def encoded(fmt: str, size: tuple[int, int] = (64, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, (10, 120, 200)).save(buf, format=fmt)
    return buf.getvalue()


def data_uri(data: bytes, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


BAD_IMAGES = {
    "huge_png_20000x20000": (png_header_only(20000, 20000), "image/png", "image_too_large"),
    "truncated_jpeg": (encoded("JPEG")[:200], "image/jpeg", "image_load_error"),
    "gif": (encoded("GIF"), "image/gif", "unsupported_image_format"),
    "not_an_image": (b"hello world", "text/plain", "image_load_error"),
}


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_decode_refuses(name: str) -> None:
    data, _, error_type = BAD_IMAGES[name]
    with pytest.raises(ImageDecodeError) as err:
        decode_image(data, DecodeLimits(max_bytes=10_000_000, max_pixels=40_000_000))
    assert err.value.error_type == error_type


def test_decode_byte_cap_and_exif_orientation() -> None:
    with pytest.raises(ImageDecodeError) as err:
        decode_image(encoded("PNG"), DecodeLimits(max_bytes=10))
    assert err.value.error_type == "file_too_large"
    # EXIF orientation 6 (rotate 90 CW) turns a 64x48 image into 48x64.
    img = Image.new("RGB", (64, 48), (1, 2, 3))
    exif = img.getexif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    assert decode_image(buf.getvalue()).size == (48, 64)
    assert decode_image(encoded("WEBP")).size == (64, 48)


@pytest.mark.parametrize("name", sorted(BAD_IMAGES))
def test_bad_image_fails_the_job_with_a_4xx(name: str, live_server: LiveServer) -> None:
    data, mime, error_type = BAD_IMAGES[name]
    sub = httpx.post(f"{live_server.url}/queue/test/echo", json={"image_url": data_uri(data, mime)}).json()
    status = wait_completed(sub["status_url"])
    assert status["error_type"] == "validation_error"
    r = httpx.get(sub["response_url"])
    assert r.status_code == 422
    (detail,) = r.json()["detail"]
    assert detail["loc"] == ["body", "image_url"] and detail["type"] == error_type


def test_200mb_body_is_refused_with_413(live_server: LiveServer) -> None:
    chunk = b"x" * (1 << 20)

    def body():  # streamed: the client never holds 200 MB either
        yield b'{"image_url": "data:image/png;base64,'
        for _ in range(200):
            yield chunk
        yield b'"}'

    try:
        r = httpx.post(
            f"{live_server.url}/queue/test/echo",
            content=body(),
            headers={"content-type": "application/json"},
            timeout=60,
        )
    except httpx.HTTPError as exc:  # the server may close the connection before the upload ends
        pytest.fail(f"expected a 413 answer, got {exc!r}")
    assert r.status_code == 413
    assert r.json()["error_type"] == "request_too_large"


def test_unreachable_or_blocked_url_is_a_4xx(live_server: LiveServer) -> None:
    sub = httpx.post(f"{live_server.url}/queue/test/echo", json={"image_url": "http://127.0.0.1:9/x.png"}).json()
    wait_completed(sub["status_url"])
    r = httpx.get(sub["response_url"])
    assert r.status_code == 422
    assert r.json()["detail"][0]["type"] == "url_not_allowed"
    sub = httpx.post(f"{live_server.url}/queue/test/echo", json={"image_url": "ftp://example.com/x.png"}).json()
    wait_completed(sub["status_url"])
    assert httpx.get(sub["response_url"]).status_code == 422
